"""Timeouts: the instance default, per-field overrides, and what happens to a hung check."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from helpers import sleeping, sleeping_async

from flask_status import FlaskStatus

#: How long a hung check would block if nothing stopped it.
HANG_SECONDS = 10.0


def hung_sync(release: threading.Event) -> Callable[[], str]:
    def check() -> str:
        release.wait(HANG_SECONDS)
        return "finished"

    return check


def timed_get(client: FlaskClient, url: str = "/api/status") -> tuple[Any, float]:
    started = time.perf_counter()
    response = client.get(url)
    return response, time.perf_counter() - started


def test_default_timeout_is_0_8_seconds(
    app: Flask, client: FlaskClient, release: threading.Event
) -> None:
    FlaskStatus(app).add_field("database", hung_sync(release))

    response, elapsed = timed_get(client)

    assert response.status_code == 503
    assert response.get_json()["database"] == {"error": "timed out after 0.8s"}
    assert 0.75 <= elapsed < 2.5


def test_hung_sync_check_is_abandoned_at_its_timeout(
    app: Flask, client: FlaskClient, release: threading.Event
) -> None:
    status = FlaskStatus(app, timeout=0.2)
    status.add_field("database", hung_sync(release))
    status.add_field("cache", lambda: "warm")

    response, elapsed = timed_get(client)

    assert response.status_code == 503
    assert response.get_json() == {
        "status": "DOWN",
        "database": {"error": "timed out after 0.2s"},
        "cache": "warm",
    }
    # Near the timeout, nowhere near the 10 s the check would block.
    assert 0.19 <= elapsed < 1.5


def test_hung_async_check_is_cancelled_at_its_timeout(app: Flask, client: FlaskClient) -> None:
    cancelled = threading.Event()

    async def hung() -> str:
        try:
            await asyncio.sleep(HANG_SECONDS)
        finally:
            cancelled.set()
        return "finished"

    FlaskStatus(app, timeout=0.2).add_field("database", hung)

    response, elapsed = timed_get(client)

    assert response.get_json()["database"] == {"error": "timed out after 0.2s"}
    assert 0.19 <= elapsed < 1.5
    assert cancelled.wait(2), "the hung coroutine was not cancelled"


@pytest.mark.parametrize("slow", [sleeping, sleeping_async], ids=["sync", "async"])
def test_field_timeout_overrides_a_longer_instance_default(
    app: Flask, client: FlaskClient, slow: Callable[..., Any]
) -> None:
    status = FlaskStatus(app, timeout=5)
    status.add_field("strict", slow(0.6), timeout=0.2)
    status.add_field("default", slow(0.6))

    response, elapsed = timed_get(client)

    assert response.get_json() == {
        "status": "DOWN",
        "strict": {"error": "timed out after 0.2s"},
        "default": "ok",
    }
    assert elapsed < 2.5


@pytest.mark.parametrize("slow", [sleeping, sleeping_async], ids=["sync", "async"])
def test_field_timeout_overrides_a_shorter_instance_default(
    app: Flask, client: FlaskClient, slow: Callable[..., Any]
) -> None:
    status = FlaskStatus(app, timeout=0.2)
    status.add_field("patient", slow(0.5), timeout=5)
    status.add_field("default", slow(0.5))

    response = client.get("/api/status")

    assert response.get_json() == {
        "status": "DOWN",
        "patient": "ok",
        "default": {"error": "timed out after 0.2s"},
    }


def test_timeout_is_logged(
    app: Flask, client: FlaskClient, release: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    FlaskStatus(app, timeout=0.2).add_field("database", hung_sync(release))

    with caplog.at_level(logging.WARNING, logger=app.logger.name):
        client.get("/api/status")

    messages = [r.getMessage() for r in caplog.records if r.name == app.logger.name]
    assert any("database" in m and "timed out after 0.2s" in m for m in messages), messages
