"""``python -m flask_status probe`` run as a process against real local servers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import HttpServer
from flask import Flask
from werkzeug.serving import make_server

from flask_status import FlaskStatus


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
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.port}/api/status", status
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


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
