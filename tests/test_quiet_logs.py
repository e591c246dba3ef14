"""quiet_access_logs(): successful probes stay out of the servers' real access logs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import served_app
from helpers import ServerProcess, http_fetch, serving_in_thread
from servers import gunicorn, uvicorn
from werkzeug.serving import make_server

#: Requests every test makes: one probe that succeeds, one that fails, one ordinary request.
REQUESTS = {"/api/status": 200, "/api/status?fail=1": 503, "/hello": 200}


def make_requests(port: int) -> None:
    for path, status in REQUESTS.items():
        assert http_fetch(port, path).status == status


def assert_quiet(lines: list[str]) -> None:
    assert not any("GET /api/status HTTP" in line for line in lines), lines  # the good probe
    assert any("GET /api/status?fail=1 HTTP" in line for line in lines), lines
    assert any("GET /hello HTTP" in line for line in lines), lines


def test_werkzeug_dev_server(caplog: pytest.LogCaptureFixture) -> None:
    server = make_server("127.0.0.1", 0, served_app.create_quiet_app(), threaded=True)
    with serving_in_thread(server) as port, caplog.at_level(logging.INFO, logger="werkzeug"):
        make_requests(port)
    assert_quiet([r.getMessage() for r in caplog.records if r.name == "werkzeug"])


def launch_gunicorn(log: Path) -> ServerProcess:
    return gunicorn("served_app:create_quiet_app()", log, "--access-logfile", "-")


def launch_uvicorn(log: Path) -> ServerProcess:
    return uvicorn("served_app:create_quiet_asgi_app", log, "--factory", "--access-log")


@pytest.mark.parametrize("launch", [launch_gunicorn, launch_uvicorn], ids=["gunicorn", "uvicorn"])
def test_real_servers(tmp_path: Path, launch: Callable[[Path], ServerProcess]) -> None:
    log = tmp_path / "server.log"
    with launch(log) as server:
        make_requests(server.port)
    assert_quiet(log.read_text().splitlines())
