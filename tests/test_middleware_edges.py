"""What StatusMiddleware serves itself, what it passes on, and through which stack."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from typing import Any

import anyio
import anyio.to_thread
import pytest
from asgiref.wsgi import WsgiToAsgi
from clients import REQUEST_LIMIT, LoopThread, asgi_get
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


def test_a_request_cancelled_in_a_hook_is_torn_down(loop: LoopThread) -> None:
    """As when the server cancels it at shutdown: the teardowns run, off the loop."""
    app = Flask(__name__)
    in_hook = threading.Event()
    release = threading.Event()
    torn_down: list[tuple[str | None, bool]] = []  # the error each saw, and whether on the loop
    done = threading.Event()

    @app.before_request
    def slow_session_lookup() -> None:
        in_hook.set()
        release.wait(REQUEST_LIMIT)

    @app.teardown_request
    def close(error: BaseException | None) -> None:
        on_loop = threading.current_thread() is loop.thread
        torn_down.append((None if error is None else type(error).__name__, on_loop))
        done.set()

    FlaskStatus(app).add_field("db", lambda: "up")
    request_in_flight = loop.start(asgi_get(StatusMiddleware(WsgiToAsgi(app), app), URL))
    assert in_hook.wait(REQUEST_LIMIT)

    request_in_flight.cancel()
    release.set()

    assert done.wait(REQUEST_LIMIT)
    assert torn_down == [("CancelledError", False)]
