"""Checks on Flask-SQLAlchemy's ``db.session`` give their pooled connection back, whichever
run they are (on request, joined, run ahead, in the background, hung then returned), on the
WSGI path and under a real uvicorn; and the app's own routes keep answering meanwhile."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy_app
from clients import in_threads
from helpers import Reply, client_fetch
from servers import uvicorn

PROBERS = 8
PROBES = 30
HEALTHY = ("database", "background", "ready_made")


def storm(fetch: Callable[..., Reply]) -> list[Reply]:
    """``PROBERS`` clients probing the status route, each also calling an app route."""
    replies: list[Reply] = []
    lock = threading.Lock()

    def probe(_: int) -> None:
        for _ in range(PROBES):
            got = [fetch("/api/status"), fetch("/hello")]
            with lock:
                replies.extend(got)

    in_threads(PROBERS, probe)
    return replies


def assert_truthful(replies: list[Reply]) -> None:
    statuses = [reply.status for reply in replies]
    assert 500 not in statuses, statuses
    for reply in replies:
        body: Any = reply.json()
        if isinstance(body, dict):  # a status answer
            failing = {key: body[key] for key in HEALTHY if "error" in _entry(body, key)}
            assert not failing, f"a healthy dependency read failing: {failing}"
            assert reply.status == 200, body
            assert "timed out" in body["hangs"]["error"]
        else:  # /hello
            assert reply.status == 200 and body == 1


def _entry(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body[key]
    return value if isinstance(value, dict) else {}


def assert_connections_returned(fetch: Callable[..., Reply]) -> None:
    """Once the hung check returned, no connection stays checked out, no session kept."""
    assert fetch("/release", method="POST").status == 200
    deadline = time.monotonic() + 10
    while True:
        pool = fetch("/pool").json()
        if pool["hung_returned"] and pool["checked_out"] == 0 and pool["sessions"] == 0:
            return
        # Background runs check a connection out for a moment: wait for a quiet instant.
        assert time.monotonic() < deadline, f"connections or sessions left behind: {pool}"
        time.sleep(0.02)


def test_wsgi_checks_give_their_connections_back(tmp_path: Path) -> None:
    app = sqlalchemy_app.create_app(str(tmp_path / "app.db"))

    def fetch(path: str, **options: Any) -> Reply:
        return client_fetch(app.test_client(), path, **options)

    assert_truthful(storm(fetch))
    assert_connections_returned(fetch)


@pytest.fixture
def served(tmp_path: Path) -> Any:
    server = uvicorn(
        "sqlalchemy_app:create_asgi_app",
        tmp_path / "uvicorn.log",
        "--factory",
        env={sqlalchemy_app.DATABASE_ENV: str(tmp_path / "app.db")},
    )
    with server:
        yield server
    log = server.log()
    assert "Traceback" not in log, log


def test_uvicorn_checks_give_their_connections_back(served: Any) -> None:
    """Under StatusMiddleware, background checks start at lifespan startup: they need an app
    context of their own (the ready-made check once answered "Working outside of application
    context" forever there)."""
    assert_truthful(storm(served.fetch))
    assert_connections_returned(served.fetch)
