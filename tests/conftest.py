"""Shared fixtures: apps, clients, uvicorn processes, one request API for WSGI and ASGI, and
real local servers (HTTP, redis) and ports that refuse connections."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import status_app
from flask import Flask
from flask.testing import FlaskClient
from helpers import Fetch, UvicornServer, client_fetch, free_port, serving_in_thread

from flask_status import FlaskStatus


@pytest.fixture
def app() -> Flask:
    return Flask("status_tests")


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event hung checks wait on; set at teardown so no check outlives its test."""
    event = threading.Event()
    yield event
    event.set()


def _serve(factory: str, directory: Path) -> Iterator[UvicornServer]:
    server = UvicornServer(
        factory,
        {status_app.DATABASE_ENV: str(directory / "status.db")},
        directory / "uvicorn.log",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def asgi_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UvicornServer]:
    """``status_app`` behind StatusMiddleware, in a uvicorn process."""
    yield from _serve("create_asgi_app", tmp_path_factory.mktemp("asgi"))


@pytest.fixture(scope="session")
def plain_asgi_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UvicornServer]:
    """``status_app`` behind WsgiToAsgi alone, in a uvicorn process."""
    yield from _serve("create_plain_asgi_app", tmp_path_factory.mktemp("plain-asgi"))


@pytest.fixture
def wsgi_fetch(tmp_path: Path) -> Fetch:
    """Requests to ``status_app`` through the Flask test client."""
    client = status_app.create_app(tmp_path / "status.db").test_client()
    return partial(client_fetch, client)


@pytest.fixture(params=["wsgi", "asgi"])
def fetch(request: pytest.FixtureRequest) -> Fetch:
    """Requests to ``status_app``, once through WSGI and once through StatusMiddleware."""
    if request.param == "wsgi":
        wsgi_fetch: Fetch = request.getfixturevalue("wsgi_fetch")
        return wsgi_fetch
    server: UvicornServer = request.getfixturevalue("asgi_server")
    return server.fetch


#: Generous: the test machine is shared and slow at times; failures here come from errors.
FIELD_TIMEOUT = 5.0


@dataclass
class StatusApp:
    """A Flask app with a FlaskStatus on it, and a way to read its status route."""

    app: Flask
    status: FlaskStatus

    def get(self) -> tuple[int, Any]:
        """Request the status route: its HTTP status and JSON body."""
        response = self.app.test_client().get(self.status.url)
        assert response.headers["Cache-Control"] == "no-store"
        return response.status_code, response.get_json()


@pytest.fixture
def checked_app() -> StatusApp:
    app = Flask(__name__)
    return StatusApp(app, FlaskStatus(app, timeout=FIELD_TIMEOUT))


# -- ports -------------------------------------------------------------------------------


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections.

    The socket stays bound without listening, so no other process can take the port while
    the test runs, and a connection to it is refused at once.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- HTTP server -------------------------------------------------------------------------


@dataclass
class HttpServer:
    """A real HTTP server on 127.0.0.1: ``/status/<code>`` answers ``<code>``, ``/hang`` never."""

    port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]  # a query string (a token, say) changes nothing
            if path == "/hang":
                release.wait(30)  # holds the connection open until the test ends
                return
            code = int(path.rsplit("/", 1)[-1]) if path.startswith("/status/") else 404
            body = f'{{"code": {code}}}\n'.encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output quiet

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.block_on_close = True  # server_close() joins the request threads
    server.daemon_threads = False
    with serving_in_thread(server) as port:
        try:
            yield HttpServer(port)
        finally:
            release.set()  # before the server closes: it joins the hung request's thread


# -- redis -------------------------------------------------------------------------------


class RedisServer:
    """A real ``redis-server`` on 127.0.0.1 without persistence; restarts keep its port."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        for _ in range(3):  # another process may take a free port before redis binds it
            port = self.port or free_port()
            self._process = _start_redis(self.binary, port, self.workdir)
            if self._process is not None:
                self.port = port
                return
        pytest.fail("redis-server did not start")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None


def _redis(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real ``redis-server`` for the whole session."""
    for server in _redis(tmp_path_factory.mktemp("redis")):
        yield server.port


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real ``redis-server`` of this test's own, which it may stop and restart."""
    yield from _redis(tmp_path)


#: No persistence; ``DEBUG SLEEP`` (from 127.0.0.1 only) lets a test stall the server.
_REDIS_OPTIONS = (
    *("--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
    *("--enable-debug-command", "local"),
)


def _start_redis(binary: str, port: int, workdir: Path) -> subprocess.Popen[bytes] | None:
    process = subprocess.Popen(
        [binary, "--port", str(port), *_REDIS_OPTIONS],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process.poll() is None:
        if _answers_ping(port) and process.poll() is None:
            return process
        time.sleep(0.05)
    process.kill()
    process.wait(10)
    return None


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


# -- CI: nothing skipped -----------------------------------------------------------------

#: Set by ``.ci/run``, which installs everything the suite needs: a skip there is a failure.
REQUIRE_ALL = "FLASK_STATUS_REQUIRE_ALL"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get(REQUIRE_ALL):
        report.outcome = "failed"
        report.longrepr = f"skipped, but {REQUIRE_ALL} is set: {report.longrepr}"
