"""Test helpers: check callables, an HTTP client, and real server processes serving test apps."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import json
import os
import signal
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from flask import abort, request
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

TESTS_DIR = Path(__file__).resolve().parent

#: Upper bound for one HTTP exchange with a test server: a hung server fails the test, not CI.
REQUEST_TIMEOUT = 10.0


class CallCounter:
    """A sync check that counts its calls and returns the count so far."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self.calls += 1
            return self.calls


def sleeping(seconds: float, value: Any = "ok") -> Callable[[], Any]:
    """A sync check that takes ``seconds`` and returns ``value``."""

    def check() -> Any:
        time.sleep(seconds)
        return value

    return check


def sleeping_async(seconds: float, value: Any = "ok") -> Callable[[], Any]:
    """An async check that takes ``seconds`` and returns ``value``."""

    async def check() -> Any:
        await asyncio.sleep(seconds)
        return value

    return check


def raising(exc: BaseException) -> Callable[[], Any]:
    """A sync check that raises ``exc``."""

    def check() -> Any:
        raise exc

    return check


@dataclass(frozen=True)
class Reply:
    """An HTTP answer, the same shape whether it came from the test client or a server."""

    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return strict_json(self.body)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(body: bytes | str) -> Any:
    """Parse ``body`` as RFC 8259 JSON: unlike ``json.loads``, reject NaN and Infinity."""
    return json.loads(body, parse_constant=_reject_constant)


def reply_from(response: TestResponse) -> Reply:
    return Reply(
        response.status_code,
        {name.lower(): value for name, value in response.headers.items()},
        response.get_data(),
    )


#: ``fetch(path, *, method="GET", headers=None, cookies=None) -> Reply``
Fetch = Callable[..., Reply]


def client_fetch(
    client: FlaskClient,
    path: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    cookies: Mapping[str, str] | None = None,
) -> Reply:
    """Request ``path`` through a Flask test client (the WSGI path)."""
    for name, value in (cookies or {}).items():
        client.set_cookie(name, value)
    try:
        return reply_from(client.open(path, method=method, headers=dict(headers or {})))
    finally:
        for name in cookies or {}:
            client.delete_cookie(name)


def http_fetch(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    cookies: Mapping[str, str] | None = None,
    on_sent: Callable[[], object] | None = None,
) -> Reply:
    """Request ``path`` from a server on 127.0.0.1:``port`` over a fresh connection.

    ``on_sent`` is called once the request is written, before the answer is read.
    """
    all_headers = dict(headers or {})
    if cookies:
        all_headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in cookies.items())
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        connection.request(method, path, headers=all_headers)
        if on_sent is not None:
            on_sent()
        response = connection.getresponse()
        body = response.read()
        return Reply(
            response.status, {name.lower(): value for name, value in response.getheaders()}, body
        )
    finally:
        connection.close()


def free_port() -> int:
    """A port that was free a moment ago; the server start retries if someone took it since."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServerProcess:
    """A real server in a child process, listening on a free port of 127.0.0.1.

    ``argv`` is its command line, with ``{port}`` where the port goes (``"127.0.0.1:{port}"``).
    It runs in ``app_dir``, which also leads its ``PYTHONPATH``, with ``env`` added to this
    process's environment, and writes its output to ``log_path``. :meth:`start` returns once
    ``ready_path`` answers 200; if the process exits first (someone took the port between
    :func:`free_port` and the bind), it tries again on another port.

    The server leads a process group of its own, so :meth:`stop` leaves none of its worker
    processes behind, even when it has to kill them.
    """

    STARTUP_SECONDS = 30.0
    ATTEMPTS = 3

    def __init__(
        self,
        argv: Sequence[str],
        app_dir: Path,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        *,
        ready_path: str = "/hello",
    ) -> None:
        self.argv = list(argv)
        self.app_dir = app_dir
        self.log_path = log_path
        python_path = os.pathsep.join(filter(None, [str(app_dir), os.environ.get("PYTHONPATH")]))
        self.env = {**os.environ, "PYTHONPATH": python_path, **(env or {})}
        self.ready_path = ready_path
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The process id of the server (of the master, for gunicorn)."""
        assert self._process is not None, "the server is not running"
        return self._process.pid

    def start(self) -> None:
        for _ in range(self.ATTEMPTS):
            self.port = free_port()
            if self._launch():
                return
        raise RuntimeError(f"{self.argv[:3]} did not start; see {self.log_path}:\n{self.log()}")

    def _launch(self) -> bool:
        command = [arg.replace("{port}", str(self.port)) for arg in self.argv]
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(command)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                command,
                cwd=self.app_dir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            ready = self._wait_until_ready(self._process)
        except BaseException:
            self.stop()
            raise
        if not ready:
            self.stop()
        return ready

    def _wait_until_ready(self, process: subprocess.Popen[bytes]) -> bool:
        deadline = time.monotonic() + self.STARTUP_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False  # e.g. the port was taken between free_port() and bind
            try:
                if self.fetch(self.ready_path).status == 200:
                    return process.poll() is None
            except (OSError, http.client.HTTPException):
                pass  # not listening yet
            time.sleep(0.05)
        return False

    def fetch(self, path: str, **options: Any) -> Reply:
        """Request ``path`` over a fresh connection (see :func:`http_fetch`)."""
        return http_fetch(self.port, path, **options)

    def log(self) -> str:
        """Everything the server has written so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int | None = signal.SIGTERM) -> int | None:
        """Send ``sig``, wait for the exit and return the exit code (None if not running)."""
        if self._process is None:
            return None
        process, self._process = self._process, None
        return stop_process(process, sig, group=True)

    def signal(self, sig: int) -> None:
        """Send ``sig`` and go on: :meth:`wait` collects the exit."""
        assert self._process is not None
        self._process.send_signal(sig)

    def wait(self) -> int | None:
        """Wait for the process to exit (killing it after 10 s); its exit code."""
        return self.stop(None)

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class UvicornServer(ServerProcess):
    """``python -m uvicorn status_app:<factory> --factory`` on a free port of 127.0.0.1."""

    def __init__(self, factory: str, env: Mapping[str, str], log_path: Path) -> None:
        argv = [
            sys.executable, "-m", "uvicorn", f"status_app:{factory}", "--factory",
            "--host", "127.0.0.1", "--port", "{port}",
            "--lifespan", "off",
            "--no-access-log",
        ]  # fmt: skip
        super().__init__(argv, TESTS_DIR, log_path, env)


#: Seconds a process may take to exit after its signal before it is killed.
EXIT_SECONDS = 10.0


def stop_process(
    process: subprocess.Popen[bytes], sig: int | None = signal.SIGTERM, *, group: bool = False
) -> int:
    """Send ``sig`` (if any) to a child process and return its exit code, killing it after 10 s.

    With ``group``, the process leads a process group (``start_new_session``): whatever of
    the group is left once it has exited (a server's orphaned workers) is killed too.
    """
    if sig is not None:
        process.send_signal(sig)
    try:
        code = process.wait(timeout=EXIT_SECONDS)
    except subprocess.TimeoutExpired:
        if group:
            _kill_group(process.pid)
        process.kill()
        code = process.wait(timeout=EXIT_SECONDS)
    if group:
        _kill_group(process.pid)
    return code


def _kill_group(pgid: int) -> None:
    # A group id is not reused as a process id while a member lives, so this hits only ours.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@contextlib.contextmanager
def serving_in_thread(server: socketserver.TCPServer) -> Iterator[int]:
    """Serve ``server`` (bound on 127.0.0.1) from a thread; yields its port; then shuts it
    down, waits for the thread and closes it."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


class Certificate(Protocol):
    """A certificate with its chain and key, as a server presents it: a ``trustme.LeafCert``."""

    def configure_cert(self, context: ssl.SSLContext) -> None: ...


class TlsServer(socketserver.ThreadingTCPServer):
    """A TLS server on 127.0.0.1 presenting ``certificate``: it completes the handshake with
    each client, then waits for the client to close. Serve it with :func:`serving_in_thread`."""

    daemon_threads = False
    block_on_close = True  # server_close() joins the connections' threads

    def __init__(self, certificate: Certificate) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        certificate.configure_cert(self.context)
        super().__init__(("127.0.0.1", 0), _TlsHandshake)


class _TlsHandshake(socketserver.BaseRequestHandler):
    server: TlsServer

    def handle(self) -> None:
        self.request.settimeout(REQUEST_TIMEOUT)
        try:
            with self.server.context.wrap_socket(self.request, server_side=True) as tls:
                tls.recv(1)  # until the client closes: it may still send its last records
        except OSError:  # ssl.SSLError too: the client refused the certificate, or left
            pass


#: The header :func:`token_required` asks for, with its value.
TOKEN = {"X-Token": "t"}


def token_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """A sync authenticator: 401 without :data:`TOKEN`, else the view's answer."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if request.headers.get("X-Token") != TOKEN["X-Token"]:
            abort(401)
        return view(*args, **kwargs)

    return wrapper


def token_required_async(view: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`token_required` for async views: it awaits the view."""

    @functools.wraps(view)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if request.headers.get("X-Token") != TOKEN["X-Token"]:
            abort(401)
        return await view(*args, **kwargs)

    return wrapper
