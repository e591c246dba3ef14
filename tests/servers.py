"""Real local services for tests: a TCP dependency that can go down and come back, and real
server processes (uvicorn, gunicorn with each kind of worker, hypercorn) serving test apps."""

from __future__ import annotations

import re
import socket
import socketserver
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from helpers import TESTS_DIR, ServerProcess

PING = b"PING\n"
PONG = b"PONG\n"


class _PongHandler(socketserver.StreamRequestHandler):
    timeout = 2.0  # a client that never sends its line cannot hold a handler thread for long

    def handle(self) -> None:
        if self.rfile.readline() == PING:
            self.wfile.write(PONG)


class TcpService:
    """A dependency on 127.0.0.1 answering ``PONG`` to ``PING``; restarts keep its port."""

    def __init__(self) -> None:
        self.port = 0
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        server = socketserver.ThreadingTCPServer(
            ("127.0.0.1", self.port), _PongHandler, bind_and_activate=False
        )
        # Rebinding the port of the previous run while its closed connections sit in TIME_WAIT.
        server.allow_reuse_address = True
        server.server_bind()
        server.server_activate()
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the listening socket; server_close() also joins every connection's thread."""
        if self._server is None or self._thread is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None


def ping(port: int, timeout: float = 0.5) -> str:
    """A health check against :class:`TcpService`: ``"PONG"``, or the connection error."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(PING)
        with connection.makefile("rb") as reader:
            reply = reader.readline()
    if reply != PONG:
        raise ConnectionError(f"unexpected reply {reply!r}")
    return "PONG"


#: Seconds a server gives requests in flight to finish once told to stop: a hung check must
#: not hold a test's teardown for a server's default (30 s for gunicorn).
GRACEFUL_SECONDS = 3


class UvicornProcess(ServerProcess):
    """``python -m uvicorn <app>`` in a child process on a free port of 127.0.0.1."""

    def __init__(self, app: str, app_dir: Path, log_path: Path, *options: str) -> None:
        super().__init__(
            uvicorn_argv(app, "--timeout-keep-alive", "60", *options), app_dir, log_path
        )

    def rss_kib(self) -> int:
        """Resident memory of the server process (VmRSS), in KiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match, status
        return int(match.group(1))


def uvicorn_argv(app: str, *options: str) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", app,
        "--host", "127.0.0.1", "--port", "{port}",
        "--no-access-log",
        "--timeout-graceful-shutdown", str(GRACEFUL_SECONDS),
        *options,
    ]  # fmt: skip


def uvicorn(
    app: str, log_path: Path, *options: str, env: Mapping[str, str] | None = None
) -> ServerProcess:
    """uvicorn serving ``app`` (``module:attribute``; add ``--factory`` for a factory)."""
    return ServerProcess(uvicorn_argv(app, *options), TESTS_DIR, log_path, env)


def gunicorn(
    app: str,
    log_path: Path,
    *options: str,
    worker_class: str = "sync",
    workers: int = 1,
    threads: int | None = None,
    preload: bool = False,
    env: Mapping[str, str] | None = None,
) -> ServerProcess:
    """gunicorn serving ``app`` (``module:attribute`` or ``module:factory()``).

    ``worker_class`` is ``sync``, ``gthread``, ``gevent`` or a worker class's dotted path such
    as ``uvicorn_worker.UvicornWorker``.
    """
    argv = [
        sys.executable, "-m", "gunicorn",
        "--bind", "127.0.0.1:{port}",
        "--worker-class", worker_class,
        "--workers", str(workers),
        "--graceful-timeout", str(GRACEFUL_SECONDS),
        *_no_control_socket(),
    ]  # fmt: skip
    if threads is not None:
        argv += ["--threads", str(threads)]
    if preload:
        argv.append("--preload")
    return ServerProcess([*argv, *options, app], TESTS_DIR, log_path, env)


def _no_control_socket() -> list[str]:
    """gunicorn 25.1 added a control socket, by default one path shared by every gunicorn of the
    user: servers of concurrent tests would fight over it."""
    from gunicorn.config import KNOWN_SETTINGS

    if any(setting.name == "control_socket" for setting in KNOWN_SETTINGS):
        return ["--no-control-socket"]
    return []


def hypercorn(
    app: str,
    log_path: Path,
    *options: str,
    worker_class: str = "asyncio",
    env: Mapping[str, str] | None = None,
) -> ServerProcess:
    """hypercorn serving ``app``; ``worker_class`` is ``asyncio`` or ``trio`` (needs trio)."""
    argv = [
        sys.executable, "-m", "hypercorn",
        "--bind", "127.0.0.1:{port}",
        "--worker-class", worker_class,
        "--graceful-timeout", str(GRACEFUL_SECONDS),
        *options, app,
    ]  # fmt: skip
    return ServerProcess(argv, TESTS_DIR, log_path, env)
