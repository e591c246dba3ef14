"""Test helpers: check callables, an HTTP client, and a uvicorn process running a test app."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class UvicornServer:
    """``python -m uvicorn status_app:<factory> --factory`` on a free port of 127.0.0.1."""

    STARTUP_SECONDS = 30.0
    ATTEMPTS = 3

    def __init__(self, factory: str, env: Mapping[str, str], log_path: Path) -> None:
        self.factory = factory
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for _ in range(self.ATTEMPTS):
            self.port = free_port()
            if self._launch():
                return
        raise RuntimeError(f"uvicorn did not start; see {self.log_path}:\n{self._log()}")

    def _launch(self) -> bool:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            f"status_app:{self.factory}",
            "--factory",
            "--app-dir",
            str(TESTS_DIR),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--lifespan",
            "off",
            "--no-access-log",
        ]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT
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
                if self.fetch("/hello").status == 200:
                    return True
            except (OSError, http.client.HTTPException):
                pass  # not listening yet
            time.sleep(0.05)
        return False

    def fetch(self, path: str, **options: Any) -> Reply:
        return http_fetch(self.port, path, **options)

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)
            self._process = None

    def _log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate a child process, killing it if it does not exit within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
