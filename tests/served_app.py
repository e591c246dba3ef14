"""Flask apps that ``test_servers.py`` serves with real servers, one factory per setup.

gunicorn and hypercorn call the factory named in the app string (``served_app:create_app()``);
uvicorn does with ``--factory``. Every answer carries the ``X-Pid`` of the worker process that
served it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.from_thread
from asgiref.wsgi import WsgiToAsgi
from flask import (
    Flask,
    Response,
    abort,
    g,
    got_request_exception,
    jsonify,
    request,
    request_finished,
    request_started,
    request_tearing_down,
)
from flask.globals import app_ctx

from flask_status import FlaskStatus
from flask_status.asgi import StatusMiddleware

#: ``/api/status`` of every app answers this (200).
STATUS_BODY = {"status": "OK", "version": "1.0", "sync_check": "ok", "async_check": "ok"}

#: Timeout of ``/api/hung``'s hung check, and how long that check blocks.
HUNG_TIMEOUT = 0.2
HUNG_SECONDS = 2.0
#: ``/api/hung`` answers this (200: the hung field is not critical).
HUNG_BODY = {
    "status": "DEGRADED",
    "hung": {"error": f"timed out after {HUNG_TIMEOUT:g}s"},
    "async_check": "ok",
}

#: Workers of the ``--preload`` server; the import-time evaluation lasts until all are forked.
PRELOAD_WORKERS = 2
#: Timeout of the fields evaluated at import time, and the longest they wait for the forks.
WARM_UP_TIMEOUT = 3.0


def sync_check() -> str:
    return "ok"


async def async_check() -> str:
    await asyncio.sleep(0.01)
    return "ok"


async def _answer() -> str:
    await anyio.sleep(0)
    return "ok"


def calls_async_from_thread() -> str:
    """A sync check that runs a coroutine function on the event loop that started its thread."""
    return anyio.from_thread.run(_answer)


def base_app(name: str = __name__) -> Flask:
    """An app with ``/hello`` (the servers' readiness path), tagging answers with ``X-Pid``."""
    app = Flask(name)

    @app.after_request
    def worker_pid(response: Response) -> Response:
        response.headers["X-Pid"] = str(os.getpid())
        return response

    @app.get("/hello")
    def hello() -> str:
        return "hello"

    return app


def create_app(blocking_sleep: Callable[[float], None] = time.sleep) -> Flask:
    """Plain and async views, and status routes with sync and async checks.

    ``/api/hung`` has a non-critical sync check that blocks in ``blocking_sleep`` for
    :data:`HUNG_SECONDS`, past its timeout, and a healthy critical async check.
    """
    app = base_app("served_app")

    @app.get("/async-view")
    async def async_view() -> str:
        await asyncio.sleep(0)
        return "async view"

    status = FlaskStatus(app, timeout=2.0)
    status.add_field("version", STATUS_BODY["version"])
    status.add_field("sync_check", sync_check)
    status.add_field("async_check", async_check)

    def hung() -> str:
        blocking_sleep(HUNG_SECONDS)
        return "too late"

    hung_status = FlaskStatus(app, url="/api/hung", timeout=2.0)
    hung_status.add_field("hung", hung, timeout=HUNG_TIMEOUT, critical=False)
    hung_status.add_field("async_check", async_check)

    FlaskStatus(app, url="/api/from-thread", timeout=2.0).add_field(
        "from_thread", calls_async_from_thread
    )
    return app


def create_gevent_app() -> Flask:
    """:func:`create_app` for a gevent worker: the hung check blocks below gevent's patching,
    holding its OS thread (and the whole process, if that is the thread of gevent's hub)."""
    from gevent.monkey import get_original

    return create_app(get_original("time", "sleep"))


def create_asgi_app() -> StatusMiddleware:
    """:func:`create_app` for ASGI servers: status routes on the server's event loop."""
    app = create_app()
    return StatusMiddleware(WsgiToAsgi(app), app)  # type: ignore[no-untyped-call]


#: How long ``/api/stuck``'s check blocks: past its timeout, and past any wait for an exit.
STUCK_SECONDS = 60.0
#: ``/api/stuck`` answers this (200: the stuck field is not critical).
STUCK_BODY = {"status": "DEGRADED", "stuck": {"error": f"timed out after {HUNG_TIMEOUT:g}s"}}


def sleep_below_gevent(seconds: float) -> None:
    """``time.sleep``; under gevent, its original, which blocks its OS thread as C code does."""
    if "gevent.monkey" in sys.modules:
        from gevent.monkey import get_original

        get_original("time", "sleep")(seconds)
    else:
        time.sleep(seconds)


def create_stuck_app() -> Flask:
    """``/api/stuck``: a non-critical sync check that blocks for :data:`STUCK_SECONDS`, far
    past its timeout of :data:`HUNG_TIMEOUT`."""
    app = base_app()

    def stuck() -> str:
        sleep_below_gevent(STUCK_SECONDS)
        return "too late"

    stuck_status = FlaskStatus(app, url="/api/stuck")
    stuck_status.add_field("stuck", stuck, timeout=HUNG_TIMEOUT, critical=False)
    return app


def create_stuck_asgi_app() -> StatusMiddleware:
    app = create_stuck_app()
    return StatusMiddleware(WsgiToAsgi(app), app)  # type: ignore[no-untyped-call]


# -- evaluated at import: the run is in flight when gunicorn --preload forks the workers ----

#: The process that builds the app: the gunicorn master under ``--preload``.
_builder_pid = 0
_forks = threading.Condition()
_fork_count = 0
#: In the builder: whether the import-time evaluation is in flight now.
_warm_up_in_flight = False
#: In a worker: whether that evaluation was in flight when the worker was forked.
_in_flight_at_fork = False


def _before_fork() -> None:
    global _in_flight_at_fork
    _in_flight_at_fork = _warm_up_in_flight


def _after_fork_in_parent() -> None:
    global _fork_count
    with _forks:
        _fork_count += 1
        _forks.notify_all()


def _forked_enough() -> bool:
    return _fork_count >= PRELOAD_WORKERS


#: Set as the import-time evaluation starts each check.
_sync_started = threading.Event()
_async_started = threading.Event()


def until_forked() -> str:
    """In the builder, returns once every worker is forked; in a worker, at once."""
    _sync_started.set()
    if os.getpid() == _builder_pid:
        with _forks:
            _forks.wait_for(_forked_enough, timeout=WARM_UP_TIMEOUT)
    return "ok"


async def until_forked_async() -> str:
    """:func:`until_forked` as a coroutine function, polling on the event loop."""
    _async_started.set()
    deadline = time.monotonic() + WARM_UP_TIMEOUT
    while os.getpid() == _builder_pid and not _forked_enough() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return "ok"


def create_preload_app() -> Flask:
    """:func:`create_app`, plus ``/api/warm`` whose checks are evaluated as the app is built
    and finish only once :data:`PRELOAD_WORKERS` processes have been forked from the builder.

    ``/warm-up`` tells whether that evaluation was in flight when the worker was forked.
    """
    global _builder_pid, _warm_up_in_flight
    app = create_app()
    warm = FlaskStatus(app, url="/api/warm", timeout=WARM_UP_TIMEOUT)
    warm.add_field("sync_check", until_forked)
    warm.add_field("async_check", until_forked_async)

    @app.get("/warm-up")
    def warm_up_state() -> Response:
        return jsonify(in_flight_at_fork=_in_flight_at_fork, builder_pid=_builder_pid)

    _builder_pid = os.getpid()
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent)

    def warm_up() -> None:
        global _warm_up_in_flight
        try:
            app.test_client().get("/api/warm")
        finally:
            _warm_up_in_flight = False

    _warm_up_in_flight = True
    threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
    # Both checks are running before the server can fork.
    if not (_sync_started.wait(WARM_UP_TIMEOUT) and _async_started.wait(WARM_UP_TIMEOUT)):
        raise RuntimeError("the import-time evaluation did not start its checks")
    return app


#: Environment variable naming the drain file of :func:`create_lifecycle_app`.
DRAIN_FILE_ENV = "SERVED_APP_DRAIN_FILE"
#: How long ``/slow`` of :func:`create_lifecycle_app` takes.
SLOW_SECONDS = 1.0


def create_lifecycle_app() -> Flask:
    """Liveness at ``/livez``; readiness at ``/readyz``, draining with a shared drain file."""
    app = base_app()

    @app.get("/slow")
    def slow() -> str:
        time.sleep(SLOW_SECONDS)
        return "slow"

    FlaskStatus(app, url="/livez")
    ready = FlaskStatus(
        app, url="/readyz", readiness=True, drain_file=os.environ.get(DRAIN_FILE_ENV)
    )
    ready.add_field("database", sync_check)
    return app


def create_lifecycle_asgi_app() -> StatusMiddleware:
    """:func:`create_lifecycle_app` for ASGI workers."""
    app = create_lifecycle_app()
    return StatusMiddleware(WsgiToAsgi(app), app)  # type: ignore[no-untyped-call]


#: Seconds between the runs of the background check of :func:`create_background_asgi_app`.
BACKGROUND_INTERVAL = 0.2


def create_background_asgi_app() -> StatusMiddleware:
    """A background check behind StatusMiddleware: started at lifespan startup."""
    app = base_app()

    runs = iter(range(1, 1_000_000))
    FlaskStatus(app).add_field("runs", lambda: next(runs), interval=BACKGROUND_INTERVAL)
    return StatusMiddleware(WsgiToAsgi(app), app)  # type: ignore[no-untyped-call]


def create_quiet_app() -> Flask:
    """Successful probes of ``/api/status`` stay out of the access log; ``?fail`` fails one."""
    from flask_status import quiet_access_logs

    quiet_access_logs()
    app = base_app()

    def database() -> str:
        if "fail" in request.args:
            raise ConnectionError("refused")
        return "up"

    FlaskStatus(app).add_field("database", database, single_flight=False)
    return app


def create_quiet_asgi_app() -> StatusMiddleware:
    app = create_quiet_app()
    return StatusMiddleware(WsgiToAsgi(app), app)  # type: ignore[no-untyped-call]


def create_preload_background_app() -> Flask:
    """A background check started at import (in the gunicorn master under ``--preload``)."""
    app = base_app()
    FlaskStatus(app).add_field("pid", os.getpid, interval=BACKGROUND_INTERVAL, wait_first=True)
    assert app.test_client().get("/api/status").get_json()["pid"] == os.getpid()
    return app


#: Environment variables of :func:`create_store_app`: the store's URL, the executions file.
STORE_URL_ENV = "SERVED_APP_STORE_URL"
EXECUTIONS_ENV = "SERVED_APP_EXECUTIONS"
#: Seconds a result of :func:`create_store_app` stays fresh.
STORE_CACHE_TTL = 2.0
#: Seconds between runs of :func:`create_background_store_app`'s check.
STORE_INTERVAL = 1.0


def create_store_app() -> Flask:
    """A check that appends the time of each execution to a file, shared through Redis."""
    return _store_app(cache_ttl=STORE_CACHE_TTL)


def create_background_store_app() -> Flask:
    """:func:`create_store_app`'s check run in the background, every :data:`STORE_INTERVAL` s."""
    return _store_app(interval=STORE_INTERVAL, timeout=0.5, wait_first=True)


def _store_app(**options: Any) -> Flask:
    app = base_app("store_fleet")

    executions = os.environ[EXECUTIONS_ENV]

    def database() -> str:
        with open(executions, "a") as log:  # one short append: atomic across processes
            log.write(f"{time.time()}\n")
        return "up"

    status = FlaskStatus(app, store=os.environ[STORE_URL_ENV], timeout=1)
    status.add_field("database", database, **options)
    return app


#: Environment variables of :func:`create_traced_app`: its trace file, and its hooks.
TRACE_ENV = "SERVED_APP_TRACE"
TRACED_HOOKS_ENV = "SERVED_APP_TRACED_HOOKS"
#: Which of its hooks a traced app has: all, those that run after the view only, or none.
TRACED_HOOKS = ("all", "after", "none")
#: The header a traced app's authenticators ask for, and the header that makes them raise.
TRACE_TOKEN = {"X-Token": "t"}
BREAK_HEADER = "X-Break"
#: ``<url>/<field>`` of this field makes the traced app's ``after_request`` hook raise.
EXPLOSIVE_FIELD = "explosive"

Trace = Callable[..., None]


def create_traced_app(trace_file: str | None = None, hooks: str | None = None) -> Flask:
    """An app with every kind of request hook, error handler and signal receiver (``hooks``:
    see :data:`TRACED_HOOKS`), and status routes behind each kind of authenticator; each
    writes a line to ``trace_file`` when it runs. Left out, both come from the environment.

    Request headers steer the hooks: ``X-Short`` makes a ``before_request`` hook answer,
    ``X-Throttle`` makes it abort with 429 (which an error handler answers), ``X-Token``
    passes the authenticators and :data:`BREAK_HEADER` makes them raise; ``<url>/explosive``
    makes the ``after_request`` hook raise (which the 500 handler answers).
    """
    path = trace_file or os.environ[TRACE_ENV]
    hooks = hooks or os.environ.get(TRACED_HOOKS_ENV, "all")
    app = Flask("traced_app")

    def trace(*event: object) -> None:
        with open(path, "a") as log:
            log.write(json.dumps(event, sort_keys=True, default=repr) + "\n")

    receivers: dict[Any, Callable[..., None]] = {}
    if hooks == "all":
        receivers |= _hooks_before(app, trace)
    if hooks in ("all", "after"):
        receivers |= _hooks_after(app, trace)
    for signal, receiver in receivers.items():
        signal.connect(receiver, app)  # weakly: they live as long as the app holds them
    app.extensions["traced_receivers"] = receivers

    @app.get("/hello")
    def hello() -> str:
        return "hello"

    def traced_check(name: str) -> Callable[[], str]:
        def check() -> str:
            trace("check", name, g.get("user"))
            return "ok"

        return check

    status = FlaskStatus(app, timeout=5)
    status.add_field("version", "1.0")
    status.add_field("database", traced_check("database"))
    status.add_field("cache", async_check)
    status.add_field(EXPLOSIVE_FIELD, "armed")

    def refused() -> None:
        raise ConnectionRefusedError("connection refused")

    down = FlaskStatus(app, url="/api/down", timeout=5)
    down.add_field("database", refused)
    down.add_field("cache", "warm", critical=False)

    def guard() -> None:
        if BREAK_HEADER in request.headers:
            raise RuntimeError("authenticator failed")
        if request.headers.get("X-Token") != TRACE_TOKEN["X-Token"]:
            abort(401)

    def authenticator_async(view: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0)
            trace("authenticator async")
            guard()
            return await view(*args, **kwargs)

        return wrapper

    authenticators = {"/private-async": authenticator_async}
    if hooks == "all":  # a sync authenticator runs before the checks

        def authenticator(view: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                trace("authenticator")
                guard()
                return view(*args, **kwargs)

            return wrapper

        authenticators["/private"] = authenticator
    for url, wrapper in authenticators.items():
        FlaskStatus(app, url=url, authenticator=wrapper, timeout=5).add_field(
            "secret", traced_check(url)
        )
    return app


def _error_name(error: BaseException | None) -> str | None:
    return None if error is None else type(error).__name__


def _hooks_before(app: Flask, trace: Trace) -> dict[Any, Callable[..., None]]:
    """Hooks that run before the view; the signal receivers among them, to connect."""

    @app.url_value_preprocessor
    def url_values(endpoint: str | None, values: dict[str, object] | None) -> None:
        trace("url_value_preprocessor", endpoint, values)

    @app.before_request
    def before() -> tuple[str, int] | None:
        trace("before_request")
        if "X-Short" in request.headers:
            return "answered by before_request", 203
        if "X-Throttle" in request.headers:
            abort(429)
        g.user = request.headers.get("X-User", "anonymous")
        return None

    @app.before_request
    async def before_async() -> None:
        await asyncio.sleep(0)
        trace("before_request async")

    def on_request_started(sender: Flask, **_: object) -> None:
        trace("request_started", sender._got_first_request)

    return {request_started: on_request_started}


def _hooks_after(app: Flask, trace: Trace) -> dict[Any, Callable[..., None]]:
    """Hooks, error handlers and teardown functions that run after the view; the signal
    receivers among them, to connect."""
    # The app context of the request being torn down: a check's own app context is not traced.
    torn_down: dict[str, object] = {}

    @app.after_request
    def after(response: Response) -> Response:
        trace("after_request", response.status_code)
        if (request.view_args or {}).get("field") == EXPLOSIVE_FIELD:
            raise RuntimeError("after_request failed")
        response.headers["X-After"] = "yes"
        return response

    @app.teardown_request
    def teardown_request(error: BaseException | None) -> None:
        torn_down["app_ctx"] = app_ctx._get_current_object()
        trace("teardown_request", _error_name(error))

    @app.teardown_appcontext
    def teardown_appcontext(error: BaseException | None) -> None:
        if app_ctx._get_current_object() is torn_down.get("app_ctx"):
            trace("teardown_appcontext", _error_name(error))

    @app.errorhandler(429)
    def throttled(error: Exception) -> tuple[Response, int]:
        trace("errorhandler", 429)
        return jsonify(error="throttled"), 429

    @app.errorhandler(500)
    def failed(error: Exception) -> tuple[Response, int]:
        trace("errorhandler", 500, _error_name(getattr(error, "original_exception", None)))
        return jsonify(error="failed"), 500

    def on_request_finished(sender: Flask, response: Response, **_: object) -> None:
        trace("request_finished", response.status_code)

    def on_got_request_exception(sender: Flask, exception: Exception, **_: object) -> None:
        trace("got_request_exception", _error_name(exception))

    def on_request_tearing_down(sender: Flask, exc: BaseException | None, **_: object) -> None:
        trace("request_tearing_down", _error_name(exc))

    return {
        request_finished: on_request_finished,
        got_request_exception: on_got_request_exception,
        request_tearing_down: on_request_tearing_down,
    }


def create_traced_asgi_app() -> StatusMiddleware:
    """:func:`create_traced_app` behind StatusMiddleware."""
    app = create_traced_app()
    return StatusMiddleware(WsgiToAsgi(app), app)  # type: ignore[no-untyped-call]
