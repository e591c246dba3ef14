"""Callable fields: every kind of callable works, and sync and async checks run concurrently."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from helpers import sleeping, sleeping_async

from flask_status import FlaskStatus

CHECKS_PER_KIND = 4
CHECK_SECONDS = 0.3


def test_sync_and_async_checks_run_concurrently(app: Flask, client: FlaskClient) -> None:
    # A generous timeout: this test is about concurrency, a slow machine must not time it out.
    status = FlaskStatus(app, timeout=10)
    for number in range(CHECKS_PER_KIND):
        status.add_field(f"sync_{number}", sleeping(CHECK_SECONDS, number))
        status.add_field(f"async_{number}", sleeping_async(CHECK_SECONDS, number))

    started = time.perf_counter()
    response = client.get("/api/status")
    elapsed = time.perf_counter() - started

    assert response.status_code == 200
    assert response.get_json() == {
        "status": "OK",
        **{f"sync_{number}": number for number in range(CHECKS_PER_KIND)},
        **{f"async_{number}": number for number in range(CHECKS_PER_KIND)},
    }
    # One after another the eight checks would take 2.4 s.
    assert elapsed < 1.5


class AsyncCallable:
    """An object whose ``__call__`` is a coroutine function."""

    async def __call__(self) -> str:
        await asyncio.sleep(0)
        return "async __call__"


async def greet(name: str) -> str:
    await asyncio.sleep(0)
    return f"hello {name}"


class Checks:
    def __init__(self) -> None:
        self.name = "bound"

    def sync_method(self) -> str:
        return f"{self.name} sync"

    async def async_method(self) -> str:
        await asyncio.sleep(0)
        return f"{self.name} async"


CALLABLES: dict[str, tuple[Any, Any]] = {
    "async_call_object": (AsyncCallable(), "async __call__"),
    "async_partial": (functools.partial(greet, "partial"), "hello partial"),
    "lambda_returning_coroutine": (lambda: greet("lambda"), "hello lambda"),
    "sync_partial": (functools.partial(str.upper, "partial"), "PARTIAL"),
    "sync_bound_method": (Checks().sync_method, "bound sync"),
    "async_bound_method": (Checks().async_method, "bound async"),
    "builtin": (dict, {}),
}


def test_every_kind_of_callable_works(app: Flask, client: FlaskClient) -> None:
    status = FlaskStatus(app)
    for key, (check, _) in CALLABLES.items():
        status.add_field(key, check)

    response = client.get("/api/status")

    assert response.get_json() == {
        "status": "OK",
        **{key: expected for key, (_, expected) in CALLABLES.items()},
    }
    assert response.status_code == 200


def test_readding_a_key_replaces_the_field(app: Flask, client: FlaskClient) -> None:
    status = FlaskStatus(app)
    status.add_field("database", lambda: "old")
    client.get("/api/status")
    status.add_field("database", lambda: "new")

    assert client.get("/api/status").get_json() == {"status": "OK", "database": "new"}
