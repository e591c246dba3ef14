"""``python -m flask_status probe`` run as a process against real local servers."""

from __future__ import annotations

import math
import os
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import pytest
from conftest import HttpServer
from flask import Flask
from helpers import serving_in_thread
from werkzeug.serving import make_server

from flask_status import FlaskStatus
from flask_status.probe import ProbeResult, probe


def run_probe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flask_status", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def one_line_of(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_2xx_exits_0(http_server: HttpServer) -> None:
    url = http_server.url("/status/200")
    result = run_probe("probe", url)
    assert result.returncode == 0
    assert one_line_of(result).startswith(f"HTTP 200 OK from {url} in ")
    assert result.stderr == ""


def test_503_exits_1(http_server: HttpServer) -> None:
    url = http_server.url("/status/503")
    result = run_probe("probe", url)
    assert result.returncode == 1
    assert one_line_of(result) == f'HTTP 503 Service Unavailable from {url}: {{"code": 503}}'
    assert result.stdout == ""


def test_redirect_to_a_failure_exits_1(http_server: HttpServer) -> None:
    result = run_probe("probe", http_server.url("/status/302"))
    assert result.returncode == 1  # 302 without Location: not a 2xx answer
    assert "HTTP 302" in one_line_of(result)


def test_connection_refused_exits_1(closed_port: int) -> None:
    result = run_probe("probe", f"http://127.0.0.1:{closed_port}/api/status")
    assert result.returncode == 1
    assert "Connection refused" in one_line_of(result)


def test_silent_server_times_out_quickly(http_server: HttpServer) -> None:
    url = http_server.url("/hang")
    started = time.monotonic()
    result = run_probe("probe", url, "--timeout", "0.5")
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert one_line_of(result) == f"no answer from {url} within 0.5s"
    assert elapsed < 10  # the server would hold the connection for 30 s


@pytest.mark.parametrize("url", ["notaurl", "ftp://127.0.0.1/", "http:///api/status"])
def test_bad_url_exits_1(url: str) -> None:
    result = run_probe("probe", url)
    assert result.returncode == 1
    assert one_line_of(result).startswith(f"bad URL {url!r}")


@pytest.mark.parametrize(
    "args", [(), ("probe",), ("probe", "http://127.0.0.1/", "--timeout", "0"), ("nope",)]
)
def test_bad_command_line_exits_1_not_2(args: tuple[str, ...]) -> None:
    result = run_probe(*args)
    assert result.returncode == 1  # Docker reserves 2
    assert "error:" in result.stderr


def test_environment_proxy_is_ignored(http_server: HttpServer, closed_port: int) -> None:
    proxy = f"http://127.0.0.1:{closed_port}"
    env = {**os.environ, "http_proxy": proxy, "HTTP_PROXY": proxy, "no_proxy": ""}
    result = run_probe("probe", http_server.url("/status/200"), env=env)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def flask_server() -> Iterator[tuple[str, FlaskStatus]]:
    """A real FlaskStatus app served over HTTP by werkzeug, in a thread."""
    app = Flask(__name__)
    status = FlaskStatus(app, timeout=5)
    with serving_in_thread(make_server("127.0.0.1", 0, app, threaded=True)) as port:
        yield f"http://127.0.0.1:{port}/api/status", status


def test_probe_a_flask_status_route(flask_server: tuple[str, FlaskStatus]) -> None:
    url, status = flask_server
    assert run_probe("probe", url).returncode == 0

    def database() -> None:
        raise ConnectionRefusedError("db:5432")

    status.add_field("database", database)
    result = run_probe("probe", url)
    assert result.returncode == 1
    line = one_line_of(result)
    assert line.startswith("HTTP 503 ")
    assert f" from {url}: {{" in line
    assert '"status":"DOWN"' in line.replace(" ", "")
    assert "ConnectionRefusedError: db:5432" in line


# -- the deadline ------------------------------------------------------------------------


@pytest.fixture
def dripping_server() -> Iterator[str]:
    """A server on 127.0.0.1 that sends a valid 200 answer one byte every 0.3 s (13 s)."""
    answer = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    stop = threading.Event()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.recv(65536)
            for byte in answer:
                if stop.wait(0.3):
                    return
                try:
                    self.request.sendall(bytes([byte]))
                except OSError:  # the probe gave up
                    return

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    with serving_in_thread(server) as port:
        try:
            yield f"http://127.0.0.1:{port}/api/status"
        finally:
            stop.set()


def test_timeout_bounds_the_whole_probe(dripping_server: str) -> None:
    started = time.monotonic()
    result = run_probe("probe", dripping_server, "--timeout", "1")
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert one_line_of(result) == f"no answer from {dripping_server} within 1s"
    assert elapsed < 1 + 3  # each read alone is quick: the answer would take 13 s


def test_probe_function_returns_at_its_deadline_and_frees_its_thread(
    dripping_server: str,
) -> None:
    started = time.monotonic()
    result = probe(dripping_server, timeout=0.5)
    assert time.monotonic() - started < 0.5 + 1
    assert result == ProbeResult(False, f"no answer from {dripping_server} within 0.5s")
    deadline = time.monotonic() + 5
    while any(t.name == "flask-status-probe" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the probe's connection was not cut"
        time.sleep(0.05)


@pytest.mark.parametrize("timeout", ["1e10", "nan", "inf", "-1", "0", "86401", "soon"])
def test_bad_timeout_is_one_line_naming_it(timeout: str) -> None:
    result = run_probe("probe", "http://127.0.0.1:1/api/status", "--timeout", timeout)
    assert result.returncode == 1  # a usage error, and Docker reserves 2
    assert result.stdout == ""
    line = one_line_of(result)
    assert "--timeout" in line
    assert repr(timeout) in line


def test_largest_timeout_is_accepted(closed_port: int) -> None:
    result = run_probe("probe", f"http://127.0.0.1:{closed_port}/", "--timeout", "86400")
    assert result.returncode == 1
    assert "Connection refused" in one_line_of(result)


@pytest.mark.parametrize(
    "timeout", [1e10, math.nan, 0, -1, 10**400], ids=["1e10", "nan", "0", "-1", "10**400"]
)
def test_probe_function_refuses_a_bad_timeout(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        probe("http://127.0.0.1:1/", timeout=timeout)


def test_bad_url_says_which_schemes() -> None:
    result = run_probe("probe", "ftp://127.0.0.1/")
    assert "http:// or https://" in one_line_of(result)


# -- stable output -----------------------------------------------------------------------


@pytest.fixture
def phrase_server() -> Iterator[int]:
    """Answers ``/<code>/<reason>`` with that status code and that reason phrase."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            _, code, reason = self.path.split("/", 2)
            self.send_response(int(code), unquote(reason))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving_in_thread(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as port:
        yield port


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/503/SERVICE%20UNAVAILABLE", "503 Service Unavailable"),  # as gunicorn sends it
        ("/503/", "503 Service Unavailable"),  # as hypercorn sends it
        ("/200/", "200 OK"),
        ("/299/Whatever", "299"),  # no standard phrase: the code alone
    ],
)
def test_standard_reason_phrase(phrase_server: int, path: str, status: str) -> None:
    url = f"http://127.0.0.1:{phrase_server}{path}"
    result = probe(url)
    assert result.message.startswith(f"HTTP {status} from {url}")
