"""StatusMiddleware against Flask itself: one app with every kind of hook, served once as WSGI
(Flask's test client) and once through StatusMiddleware under a real uvicorn process, must give
the same answers and run the same hooks and signals in the same order.

It runs against the installed Flask: a Flask release that changes how a request is dispatched
fails here, not in a user's app.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import served_app
from clients import LoopThread, asgi_get, middleware
from flask.testing import FlaskClient
from helpers import TESTS_DIR, Reply, ServerProcess, client_fetch
from servers import uvicorn_argv

#: Headers a server sets itself: the rest of an answer must be the same byte for byte.
SERVER_HEADERS = {"date", "server", "connection", "transfer-encoding"}
STATUS_URL = "/api/status"
TOKEN = served_app.TRACE_TOKEN
BROKEN = {served_app.BREAK_HEADER: "1"}

CASES: dict[str, tuple[str, str, Mapping[str, str]]] = {
    "healthy": ("GET", STATUS_URL, {"X-User": "alice"}),
    "head": ("HEAD", STATUS_URL, {}),
    "automatic-options": ("OPTIONS", STATUS_URL, {}),
    "one-field": ("GET", f"{STATUS_URL}/version", {}),
    "excluded-field": ("GET", f"{STATUS_URL}?exclude=database", {}),
    "down": ("GET", "/api/down", {}),
    "before-request-answers": ("GET", STATUS_URL, {"X-Short": "1"}),
    "before-request-aborts-to-error-handler": ("GET", STATUS_URL, {"X-Throttle": "1"}),
    "after-request-raises": ("GET", f"{STATUS_URL}/{served_app.EXPLOSIVE_FIELD}", {}),
    "sync-authenticator-passes": ("GET", "/private", TOKEN),
    "sync-authenticator-refuses": ("GET", "/private", {}),
    "sync-authenticator-raises": ("GET", "/private", BROKEN),
    "async-authenticator-passes": ("GET", "/private-async", TOKEN),
    "async-authenticator-refuses": ("GET", "/private-async", {}),
    "async-authenticator-raises": ("GET", "/private-async", BROKEN),
    "head-behind-authenticator": ("HEAD", "/private-async", TOKEN),
    # Not the middleware's own: the wrapped app answers them (so they come last: they are the
    # app's first request under uvicorn if no status request set that first).
    "wrong-method": ("POST", STATUS_URL, {}),
    "unknown-field": ("GET", f"{STATUS_URL}/nothing", {}),
}


class Traced:
    """One way of serving the traced app, and the trace file it writes."""

    def __init__(self, trace_file: Path, client: FlaskClient | None, server: ServerProcess | None):
        self.trace_file = trace_file
        self.client = client
        self.server = server

    def exchange(self, method: str, path: str, headers: Mapping[str, str]) -> tuple[Reply, Any]:
        """Send one request; its answer, and the trace of the hooks and signals it ran."""
        self.trace_file.write_text("")
        if self.client is not None:
            reply = client_fetch(self.client, path, method=method, headers=headers)
        else:
            assert self.server is not None
            reply = self.server.fetch(path, method=method, headers=headers)
        # Flask tears a request down before its answer is sent: the trace is complete.
        lines = self.trace_file.read_text().splitlines()
        return reply, [json.loads(line) for line in lines]


def traced_wsgi(directory: Path, hooks: str) -> Traced:
    trace_file = directory / "trace"
    app = served_app.create_traced_app(str(trace_file), hooks)
    return Traced(trace_file, app.test_client(), None)


@pytest.fixture(scope="module", params=served_app.TRACED_HOOKS, ids="hooks-{}".format)
def hooks(request: pytest.FixtureRequest) -> str:
    """Which hooks the app has: the middleware runs them in worker threads only if any."""
    return str(request.param)


@pytest.fixture(scope="module")
def wsgi(tmp_path_factory: pytest.TempPathFactory, hooks: str) -> Traced:
    return traced_wsgi(tmp_path_factory.mktemp("wsgi"), hooks)


@pytest.fixture(scope="module")
def asgi(tmp_path_factory: pytest.TempPathFactory, hooks: str) -> Iterator[Traced]:
    directory = tmp_path_factory.mktemp("asgi")
    trace_file = directory / "trace"
    server = ServerProcess(
        uvicorn_argv("served_app:create_traced_asgi_app", "--factory"),
        TESTS_DIR,
        directory / "uvicorn.log",
        {served_app.TRACE_ENV: str(trace_file), served_app.TRACED_HOOKS_ENV: hooks},
        ready_path=STATUS_URL,  # a status request is the app's first request
    )
    with server:
        yield Traced(trace_file, None, server)


def comparable_headers(reply: Reply) -> dict[str, Any]:
    headers: dict[str, Any] = {
        name: value for name, value in reply.headers.items() if name not in SERVER_HEADERS
    }
    if "allow" in headers:  # Werkzeug lists methods in set order, which differs by process
        headers["allow"] = sorted(method.strip() for method in headers["allow"].split(","))
    return headers


@pytest.mark.parametrize(("method", "path", "headers"), CASES.values(), ids=CASES.keys())
def test_middleware_serves_as_flask_does(
    wsgi: Traced, asgi: Traced, method: str, path: str, headers: Mapping[str, str]
) -> None:
    expected, expected_trace = wsgi.exchange(method, path, headers)

    got, got_trace = asgi.exchange(method, path, headers)

    assert got.status == expected.status
    assert got.body == expected.body
    assert comparable_headers(got) == comparable_headers(expected)
    assert got_trace == expected_trace


def test_a_status_request_is_a_request_to_flask(tmp_path: Path) -> None:
    """Flask marks an app as serving at its first request: later setup calls are refused."""
    apps = {way: served_app.create_traced_app(str(tmp_path / way)) for way in ("wsgi", "asgi")}
    apps["wsgi"].test_client().get(STATUS_URL)
    loop = LoopThread()
    try:
        loop.run(asgi_get(middleware(apps["asgi"]), STATUS_URL))
    finally:
        loop.close()

    for app in apps.values():
        assert app._got_first_request
        with pytest.raises(AssertionError, match="already handled its first request"):
            app.before_request(lambda: None)


def test_traced_app_traces_every_kind_of_hook(tmp_path: Path) -> None:
    """The trace the comparison relies on: each kind of hook and signal shows in it."""
    wsgi = traced_wsgi(tmp_path, "all")
    kinds = set()
    for method, path, headers in CASES.values():
        kinds |= {event[0] for event in wsgi.exchange(method, path, headers)[1]}

    assert kinds == {
        "request_started",
        "url_value_preprocessor",
        "before_request",
        "before_request async",
        "authenticator",
        "authenticator async",
        "check",
        "errorhandler",
        "after_request",
        "request_finished",
        "got_request_exception",
        "teardown_request",
        "request_tearing_down",
        "teardown_appcontext",
    }
