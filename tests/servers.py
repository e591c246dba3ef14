"""Real local services for tests: a TCP dependency that can go down and come back, and uvicorn."""

from __future__ import annotations

import re
import socket
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

from helpers import stop_process

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


class UvicornProcess:
    """``python -m uvicorn <app>`` in a child process on a free port of 127.0.0.1."""

    STARTED = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")

    def __init__(self, app: str, app_dir: Path, log_path: Path, *options: str) -> None:
        self.app = app
        self.app_dir = app_dir
        self.log_path = log_path
        self.options = options
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self, timeout: float = 20.0) -> None:
        command = [
            sys.executable, "-m", "uvicorn", self.app,
            "--app-dir", str(self.app_dir),
            "--host", "127.0.0.1", "--port", "0",  # the kernel picks a free port: no race
            "--no-access-log",
            "--timeout-keep-alive", "60",
            *self.options,
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = self.STARTED.search(self.log_path.read_text(errors="replace"))
            if match:
                self.port = int(match.group(1))
                return
            if self._process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"uvicorn did not start:\n{self.log_path.read_text(errors='replace')}")

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)
            self._process = None

    def rss_kib(self) -> int:
        """Resident memory of the server process (VmRSS), in KiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match, status
        return int(match.group(1))
