"""What StatusMiddleware serves itself, what it passes on, and through which stack."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable
from typing import Any

import anyio
import anyio.to_thread
import pytest
from asgiref.wsgi import WsgiToAsgi
from blinker import ANY
from clients import REQUEST_LIMIT, LoopThread, asgi_get, middleware
from flask import (
    Flask,
    Request,
    Response,
    abort,
    appcontext_popped,
    appcontext_pushed,
    appcontext_tearing_down,
    g,
    got_request_exception,
    request,
    request_finished,
    request_started,
    request_tearing_down,
)
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_status import FlaskStatus
from flask_status.asgi import StatusMiddleware

URL = "/api/status"


class Recording:
    """An ASGI app that records the paths it is given and passes them to ``inner``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(scope.get("path", ""))
        await self.inner(scope, receive, send)


@pytest.fixture
def loop() -> Any:
    loop = LoopThread()
    yield loop
    loop.close()


def get(loop: LoopThread, asgi_app: Any, url: str, **headers: str) -> Any:
    return loop.run(asgi_get(asgi_app, url, headers))


def test_only_status_urls_and_existing_fields_are_served_natively(loop: LoopThread) -> None:
    app = Flask(__name__)
    FlaskStatus(app).add_field("db", lambda: "up")

    @app.get(f"{URL}/report")
    def report() -> str:
        return "the app's own report"

    inner = Recording(WsgiToAsgi(app))
    asgi_app = StatusMiddleware(inner, app)

    assert get(loop, asgi_app, URL).json() == {"db": "up", "status": "OK"}
    assert get(loop, asgi_app, f"{URL}/db").json() == {"db": "up", "status": "OK"}
    assert inner.paths == []
    answer = get(loop, asgi_app, f"{URL}/report")
    assert (answer.status, answer.body) == (200, b"the app's own report")
    assert get(loop, asgi_app, f"{URL}/nothing").status == 404
    assert inner.paths == [f"{URL}/report", f"{URL}/nothing"]


def guard(wsgi_app: Any) -> Any:
    """WSGI middleware around ``app.wsgi_app``: 401 without the right header."""

    def guarded(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("HTTP_X_API_KEY") != "let-me-in":
            start_response("401 UNAUTHORIZED", [("Content-Type", "text/plain")])
            return [b"no key"]
        return wsgi_app(environ, start_response)  # type: ignore[no-any-return]

    return guarded


def test_a_guard_around_wsgi_app_is_never_skipped(loop: LoopThread) -> None:
    app = Flask(__name__)
    FlaskStatus(app).add_field("secret", lambda: "only for key holders")
    app.wsgi_app = guard(app.wsgi_app)  # type: ignore[method-assign]
    asgi_app = StatusMiddleware(WsgiToAsgi(app), app)

    for url in (URL, f"{URL}/secret"):
        denied = get(loop, asgi_app, url)
        assert (denied.status, denied.body) == (401, b"no key")
        allowed = get(loop, asgi_app, url, **{"X-Api-Key": "let-me-in"})
        assert allowed.status == 200
        assert allowed.json() == {"secret": "only for key holders", "status": "OK"}


def test_proxy_fix_applies_to_status_requests(loop: LoopThread) -> None:
    app = Flask(__name__)

    async def client_address() -> str | None:
        return request.remote_addr

    FlaskStatus(app).add_field("client", client_address)
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    asgi_app = StatusMiddleware(WsgiToAsgi(app), app)

    answer = get(loop, asgi_app, URL, **{"X-Forwarded-For": "203.0.113.7"})

    assert answer.json() == {"client": "203.0.113.7", "status": "OK"}


def threads_held(middleware: StatusMiddleware) -> dict[str, float]:
    """Worker thread tokens held right now: anyio's default ones, and the middleware's own."""
    return {
        "default": anyio.to_thread.current_default_thread_limiter().borrowed_tokens,
        "middleware": middleware._limiter.borrowed_tokens,
    }


def login_required(view: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return view(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize(
    ("hook", "authenticator", "held"),
    [
        (True, None, {"default": 0, "middleware": 0}),
        # A sync authenticator wraps the view and must see the finished answer: the one case
        # that waits in a thread, one of the middleware's own.
        (False, login_required, {"default": 0, "middleware": 1}),
    ],
    ids=["before_request hook", "sync authenticator"],
)
def test_no_worker_thread_is_held_while_checks_run(
    loop: LoopThread, hook: bool, authenticator: Any, held: dict[str, int]
) -> None:
    app = Flask(__name__)
    if hook:
        app.before_request(lambda: None)
    status = FlaskStatus(app, authenticator=authenticator)
    middleware = StatusMiddleware(WsgiToAsgi(app), app)

    async def count_threads() -> dict[str, float]:
        await anyio.sleep(0)
        return threads_held(middleware)

    status.add_field("held", count_threads)

    assert get(loop, middleware, URL).json() == {"held": held, "status": "OK"}


def test_status_is_served_natively_under_trio() -> None:
    """asgiref's WsgiToAsgi needs asyncio; status routes do not."""
    app = Flask(__name__)
    status = FlaskStatus(app, timeout=5)

    async def on_trio() -> str:
        import sniffio

        await anyio.sleep(0.01)
        return sniffio.current_async_library()

    status.add_field("loop", on_trio)
    status.add_field("thread", lambda: threading.current_thread() is not threading.main_thread())
    asgi_app = StatusMiddleware(WsgiToAsgi(app), app)

    answer = anyio.run(asgi_get, asgi_app, URL, None, backend="trio")

    assert (answer.status, answer.json()) == (200, {"loop": "trio", "thread": True, "status": "OK"})


def test_an_app_set_up_on_a_trio_loop_runs_its_sync_work_in_threads() -> None:
    """An app made on the trio server's loop (a factory called there, an async test's
    fixture) runs its sync checks, and an async check's teardown, in worker threads: they
    are taken on the process's own loop whichever kind of loop the app was set up on."""
    torn_down: list[bool] = []

    async def serve() -> Any:
        app = Flask(__name__)
        status = FlaskStatus(app, timeout=5)
        app.teardown_appcontext(lambda exc: torn_down.append(True))

        async def on_trio() -> str:
            await anyio.sleep(0)
            return "up"

        status.add_field("sync", lambda: "up")
        status.add_field("async", on_trio)
        return await asgi_get(StatusMiddleware(WsgiToAsgi(app), app), URL)

    answer = anyio.run(serve, backend="trio")

    assert (answer.status, answer.json()) == (200, {"sync": "up", "async": "up", "status": "OK"})
    assert torn_down  # the async check's app context was popped


#: Flask's signals sent while a request is served.
REQUEST_SIGNALS = (
    appcontext_pushed,
    request_started,
    request_finished,
    got_request_exception,
    request_tearing_down,
    appcontext_tearing_down,
    appcontext_popped,
)


def test_the_apps_own_code_never_runs_on_the_event_loop(loop: LoopThread) -> None:
    app = Flask(__name__)
    ran: dict[str, bool] = {}  # what ran, and whether on the server's event loop

    def record(name: str) -> None:
        on_loop = threading.current_thread() is loop.thread
        ran[name] = ran.get(name, False) or on_loop

    app.url_value_preprocessor(lambda endpoint, values: record("url_value_preprocessor"))

    @app.before_request
    def throttle() -> None:
        record("before_request")
        if "X-Throttle" in request.headers:
            abort(429)

    @app.after_request
    def after(response: Response) -> Response:
        record("after_request")
        if "X-Fail" in request.headers:
            raise RuntimeError("after_request failed")
        return response

    app.teardown_request(lambda error: record("teardown_request"))
    app.teardown_appcontext(lambda error: record("teardown_appcontext"))

    @app.errorhandler(429)
    def throttled(error: Exception) -> tuple[str, int]:
        record("errorhandler")
        return "slow down", 429

    def authenticator(view: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            record("authenticator")
            return view(*args, **kwargs)

        return wrapper

    FlaskStatus(app).add_field("db", lambda: "up")
    FlaskStatus(app, url="/private", authenticator=authenticator).add_field("db", lambda: "up")
    asgi_app = StatusMiddleware(WsgiToAsgi(app), app)

    def receiver(signal: Any) -> Any:
        return lambda sender, **extra: record(signal.name)

    with contextlib.ExitStack() as connected:
        for signal in REQUEST_SIGNALS:
            connected.enter_context(signal.connected_to(receiver(signal), app))
        answers = [
            get(loop, asgi_app, URL).status,
            get(loop, asgi_app, URL, **{"X-Throttle": "1"}).status,
            get(loop, asgi_app, URL, **{"X-Fail": "1"}).status,
            get(loop, asgi_app, "/private").status,
        ]

    assert answers == [200, 429, 500, 200]
    assert set(ran) == {
        "url_value_preprocessor",
        "before_request",
        "after_request",
        "teardown_request",
        "teardown_appcontext",
        "errorhandler",
        "authenticator",
        *(signal.name for signal in REQUEST_SIGNALS),
    }
    assert [name for name, on_loop in ran.items() if on_loop] == []


@pytest.mark.parametrize("signal", [appcontext_pushed, appcontext_tearing_down, appcontext_popped])
@pytest.mark.parametrize("sender", ["app", "any"])
def test_an_async_checks_app_context_signals_run_off_the_event_loop(
    loop: LoopThread, signal: Any, sender: str
) -> None:
    """The app's only code is one receiver of an app context signal: the async check's own
    app context is pushed and popped in a worker thread all the same."""
    app = Flask(__name__)
    on_loop: list[bool] = []

    async def check() -> str:
        await anyio.sleep(0)
        return "up"

    FlaskStatus(app).add_field("async", check)
    asgi_app = StatusMiddleware(WsgiToAsgi(app), app)

    def receiver(sent_by: Any, **extra: Any) -> None:
        on_loop.append(threading.current_thread() is loop.thread)

    with signal.connected_to(receiver, app if sender == "app" else ANY):
        answer = get(loop, asgi_app, URL)

    assert (answer.status, answer.json()) == (200, {"async": "up", "status": "OK"})
    assert len(on_loop) == 2  # the request's app context and the check's
    assert not any(on_loop)


def test_a_blocking_teardown_does_not_stall_the_event_loop(loop: LoopThread) -> None:
    """An app whose only code is a teardown (as a Flask-SQLAlchemy app's is)."""
    app = Flask(__name__)
    FlaskStatus(app).add_field("version", "1.0")  # no check: the only teardown is the request's
    blocking = threading.Event()
    release = threading.Event()

    @app.teardown_appcontext
    def close_connection(error: BaseException | None) -> None:
        if not blocking.is_set():  # the first request's: a connection slow to close
            blocking.set()
            release.wait(REQUEST_LIMIT)

    asgi_app = StatusMiddleware(WsgiToAsgi(app), app)
    first = loop.start(asgi_get(asgi_app, URL))
    try:
        assert blocking.wait(REQUEST_LIMIT)
        # Generous: an in-process request takes milliseconds; a stalled loop, until release.
        second = loop.run(asgi_get(asgi_app, URL), timeout=10)
        assert not first.done()
    finally:
        release.set()
    assert second.status == 200
    assert first.result(REQUEST_LIMIT).status == 200


def test_hooks_and_checks_share_the_request_under_trio() -> None:
    app = Flask(__name__)
    loop = threading.current_thread()  # anyio.run runs trio's loop in the calling thread
    teardowns: list[bool] = []  # whether each ran on the event loop's thread

    @app.before_request
    def load_user() -> None:
        g.user = "alice"

    app.teardown_appcontext(lambda error: teardowns.append(threading.current_thread() is loop))
    status = FlaskStatus(app, timeout=5)

    async def user_on_trio() -> list[str]:
        import sniffio

        await anyio.sleep(0)
        return [g.user, request.path, sniffio.current_async_library()]

    status.add_field("async", user_on_trio)
    status.add_field("sync", lambda: g.user)
    asgi_app = StatusMiddleware(WsgiToAsgi(app), app)

    answer = anyio.run(asgi_get, asgi_app, URL, None, backend="trio")

    assert (answer.status, answer.json()) == (
        200,
        {"async": ["alice", URL, "trio"], "sync": "alice", "status": "OK"},
    )
    assert teardowns  # the request's, and those of the checks' own app contexts, if any
    assert not any(teardowns)


class RecordingSessions(SecureCookieSessionInterface):
    """A session interface of the app's own: it may reach a session store."""

    def __init__(self, ran: list[str]) -> None:
        self.ran = ran

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        self.ran.append(threading.current_thread().name)
        return super().open_session(app, request)


class RecordingFlask(Flask):
    """A subclass of Flask: any step may be overridden."""

    ran: list[str]

    def process_response(self, response: Response) -> Response:
        self.ran.append(threading.current_thread().name)
        return super().process_response(response)


@pytest.mark.parametrize("kind", ["session interface", "Flask subclass"])
def test_an_apps_own_session_interface_or_flask_subclass_runs_off_the_loop(
    loop: LoopThread, kind: str
) -> None:
    ran: list[str] = []
    if kind == "session interface":
        app = Flask(__name__)
        app.session_interface = RecordingSessions(ran)
    else:
        app = RecordingFlask(__name__)
        app.ran = ran
    FlaskStatus(app).add_field("db", lambda: "up")

    assert get(loop, StatusMiddleware(WsgiToAsgi(app), app), URL).status == 200
    assert ran and loop.thread.name not in ran


class InFlight:
    """A status request served on the loop, that the test cancels as a server does at
    shutdown (asyncio's own ``task.cancel()``); ``ran`` gets how its task ended."""

    def __init__(self, loop: LoopThread, app: Flask, ran: list[str]) -> None:
        self.loop = loop
        self.ended = threading.Event()

        def record_end(task: asyncio.Task[Any]) -> None:
            ending = "cancelled" if task.cancelled() else repr(task.exception())
            ran.append(f"request {ending}")
            self.ended.set()

        async def start() -> asyncio.Task[Any]:
            task = asyncio.ensure_future(asgi_get(middleware(app), URL))
            task.add_done_callback(record_end)
            return task

        self.task: asyncio.Task[Any] = loop.run(start())

    def cancel(self, times: int) -> None:
        """Cancel the request; returns once its task has taken each cancellation in."""

        async def cancel() -> None:
            for _ in range(times):
                self.task.cancel()
                await asyncio.sleep(0)  # the task's wake-up was queued before this one's

        self.loop.run(cancel())

    def cancel_as_it_returns(self, release: threading.Event, returned: threading.Event) -> None:
        """Let the hook return while the loop is busy, and cancel before the loop sees that."""

        def busy_loop() -> None:
            release.set()
            returned.wait(REQUEST_LIMIT)
            self.task.cancel()

        self.loop.loop.call_soon_threadsafe(busy_loop)


class SlowHook:
    """A before_request or after_request hook that waits for ``release`` (a slow session
    store), in the thread it was called in."""

    def __init__(self, ran: list[str]) -> None:
        self.ran = ran
        self.started, self.release, self.returned = (threading.Event() for _ in range(3))

    def __call__(self, response: Response | None = None) -> Response | None:
        self.started.set()
        self.release.wait(REQUEST_LIMIT)
        self.ran.append("hook returned")
        self.returned.set()
        return response


def cancel_while_checking(loop: LoopThread, app: Flask, ran: list[str]) -> None:
    """Request ``app``'s status with a check that waits (a slow database), cancel the request
    once while it waits, then let the check return; return once the request has ended."""
    checking, release = threading.Event(), threading.Event()

    def slow_database() -> str:
        checking.set()
        release.wait(REQUEST_LIMIT)
        return "up"

    FlaskStatus(app, timeout=2 * REQUEST_LIMIT).add_field("db", slow_database)
    request_in_flight = InFlight(loop, app, ran)
    assert checking.wait(REQUEST_LIMIT)
    request_in_flight.cancel(times=1)
    release.set()
    assert request_in_flight.ended.wait(REQUEST_LIMIT)


def record_signal(app: Flask, signal: Any, ran: list[str], name: str) -> None:
    signal.connect(lambda sender, **extra: ran.append(name), app, weak=False)


@pytest.mark.parametrize("hook", ["before_request", "after_request"])
@pytest.mark.parametrize(
    "cancelled", ["while the hook runs", "twice while the hook runs", "as the hook returns"]
)
def test_a_request_cancelled_in_a_hook_is_torn_down(
    loop: LoopThread, hook: str, cancelled: str
) -> None:
    """As when the server cancels it at shutdown, once or more: the teardowns run once the
    hook has returned (never beside it), once, off the loop, and the request's task ends after
    them."""
    app = Flask(__name__)
    ran: list[str] = []
    slow_hook = SlowHook(ran)
    getattr(app, hook)(slow_hook)

    @app.teardown_request
    def close(error: BaseException | None) -> None:
        on_loop = threading.current_thread() is loop.thread
        ran.append(f"teardown saw {type(error).__name__}, on the loop: {on_loop}")

    record_signal(app, appcontext_popped, ran, "contexts popped")
    FlaskStatus(app).add_field("db", "up")  # no check: its own app context would signal too
    request_in_flight = InFlight(loop, app, ran)
    assert slow_hook.started.wait(REQUEST_LIMIT)

    if cancelled == "as the hook returns":
        request_in_flight.cancel_as_it_returns(slow_hook.release, slow_hook.returned)
    else:
        request_in_flight.cancel(times=2 if cancelled.startswith("twice") else 1)
        slow_hook.release.set()

    assert request_in_flight.ended.wait(REQUEST_LIMIT)
    # After its view, a request's own steps went on to their end: nothing failed in Flask.
    error = "CancelledError" if hook == "before_request" else "NoneType"
    assert ran == [
        "hook returned",
        f"teardown saw {error}, on the loop: False",
        "contexts popped",
        "request cancelled",
    ]


def test_a_request_cancelled_before_its_hook_starts_runs_no_code_of_the_app(
    loop: LoopThread,
) -> None:
    """Flask never saw it: no context pushed, so no teardown either."""
    app = Flask(__name__)
    ran: list[str] = []
    app.before_request(lambda: ran.append("hook"))
    app.teardown_request(lambda error: ran.append("teardown"))
    record_signal(app, appcontext_pushed, ran, "contexts pushed")
    FlaskStatus(app).add_field("db", "up")
    asgi_app = middleware(app)

    async def cancel_at_its_first_wait() -> str:
        task = asyncio.ensure_future(asgi_get(asgi_app, URL))
        await asyncio.sleep(0)  # the request runs up to its first wait: its hook's thread
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "answered"

    assert loop.run(cancel_at_its_first_wait()) == "cancelled"
    assert ran == []
    assert get(loop, asgi_app, URL).status == 200
    assert ran == ["contexts pushed", "hook", "teardown"]


def test_a_teardown_that_raises_in_a_cancelled_request_is_logged(
    loop: LoopThread, caplog: pytest.LogCaptureFixture
) -> None:
    """The server hears the cancellation; the app's log gets the teardown's error."""
    app = Flask(__name__)
    ran: list[str] = []
    slow_hook = SlowHook(ran)
    app.before_request(slow_hook)

    @app.teardown_request
    def close(error: BaseException | None) -> None:
        raise ConnectionError("the session store went away")

    FlaskStatus(app).add_field("db", "up")
    request_in_flight = InFlight(loop, app, ran)
    assert slow_hook.started.wait(REQUEST_LIMIT)
    request_in_flight.cancel(times=1)
    slow_hook.release.set()

    assert request_in_flight.ended.wait(REQUEST_LIMIT)
    assert ran == ["hook returned", "request cancelled"]
    (logged,) = [record for record in caplog.records if record.exc_info]
    assert logged.name == app.logger.name
    assert "the session store went away" in str(logged.exc_info[1])  # type: ignore[index]


def test_a_request_cancelled_while_its_checks_run_is_torn_down(loop: LoopThread) -> None:
    """No code of the app's runs then (its checks' runs are the engine's, which other
    requests may share): the teardowns run once, off the loop, before the task ends."""
    app = Flask(__name__)
    ran: list[str] = []

    @app.teardown_request
    def close(error: BaseException | None) -> None:
        on_loop = threading.current_thread() is loop.thread
        ran.append(f"teardown saw {type(error).__name__}, on the loop: {on_loop}")

    cancel_while_checking(loop, app, ran)

    assert ran == ["teardown saw CancelledError, on the loop: False", "request cancelled"]


def test_a_request_cancelled_while_its_checks_run_without_app_code_ends_quietly(
    loop: LoopThread, caplog: pytest.LogCaptureFixture
) -> None:
    """Without hooks or receivers, Flask's own steps run in the request's task, and so does
    its teardown: nothing to log (a server's shutdown cancels every probe in flight)."""
    app = Flask(__name__)
    ran: list[str] = []
    cancel_while_checking(loop, app, ran)

    assert ran == ["request cancelled"]
    assert [record.getMessage() for record in caplog.records if record.exc_info] == []


# And a cancellation of its own (it awaited something cancelled elsewhere).
@pytest.mark.parametrize("raised", [SystemExit, KeyboardInterrupt, asyncio.CancelledError])
def test_an_async_authenticator_raising_what_no_handler_takes_fails_only_its_request(
    loop: LoopThread, raised: type[BaseException]
) -> None:
    """The server hears it from the app, as from any app (uvicorn answers 500), and the
    teardowns see it; out of a task of its own it would have stopped the server's loop (or,
    a cancellation, ended that task as if the authenticator had returned)."""
    app = Flask(__name__)
    torn_down: list[str] = []

    def exits(view: Any) -> Any:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if request.headers.get("X-Exit"):
                raise raised("from the authenticator")
            return await view(*args, **kwargs)

        return wrapper

    @app.teardown_request
    def close(error: BaseException | None) -> None:
        torn_down.append(type(error).__name__)

    FlaskStatus(app, authenticator=exits).add_field("db", "up")
    asgi_app = middleware(app)

    async def exiting() -> str:
        try:
            await asgi_get(asgi_app, URL, {"X-Exit": "yes"})
        except raised as exc:
            return str(exc)
        return "answered"

    assert loop.run(exiting()) == "from the authenticator"
    assert torn_down == [raised.__name__]
    assert get(loop, asgi_app, URL).status == 200  # the loop serves the next request


def test_a_request_cancelled_while_is_authorized_waits_ends_cancelled(loop: LoopThread) -> None:
    """A cancellation an authorizer raises of its own is its failure (no details); the
    request's own still ends the request."""
    app = Flask(__name__)
    ran: list[str] = []
    asking = threading.Event()

    async def is_authorized(req: Request) -> bool:
        asking.set()
        await anyio.sleep(REQUEST_LIMIT)  # a session store that does not answer
        return True

    FlaskStatus(app, is_authorized=is_authorized, timeout=2 * REQUEST_LIMIT).add_field("db", "up")
    request_in_flight = InFlight(loop, app, ran)
    assert asking.wait(REQUEST_LIMIT)
    request_in_flight.cancel(times=1)

    assert request_in_flight.ended.wait(REQUEST_LIMIT)
    assert ran == ["request cancelled"]
