"""The benchmarked apps: one status route per contender, built from a description of its fields.

Imported by workers in every virtualenv, so it needs only Flask at import time: each contender's
own library is imported where its app is built.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, jsonify

URL = "/api/status"
BARE_URL = "/bare"  # the bare route beside the status route, in the ASGI scenario

#: How long a hung check would run: far longer than any timeout, released at teardown.
HANG_SECONDS = 60.0


@dataclass(frozen=True)
class Fields:
    """What a status route checks: counts of each kind of field."""

    sync: int = 0
    async_: int = 0
    constant: int = 0
    hung_sync: int = 0
    hung_async: int = 0
    seconds: float = 0.0  # how long each sync/async check runs; 0 returns at once
    timeout: float = 0.8  # per-field timeout, where the contender has one

    def total(self) -> int:
        return self.sync + self.async_ + self.constant + self.hung_sync + self.hung_async


#: The fields of the overhead scenarios, also served by the ASGI throughput app.
TRIVIAL_MIXED = Fields(sync=5, async_=5)


class Checks:
    """The check callables of one app, and the event that releases its hung sync checks."""

    def __init__(self, fields: Fields) -> None:
        self.fields = fields
        self.release = threading.Event()

    def sync(self) -> bool:
        if self.fields.seconds:
            time.sleep(self.fields.seconds)
        return True

    async def async_(self) -> bool:
        if self.fields.seconds:
            await asyncio.sleep(self.fields.seconds)
        return True

    def hung_sync(self) -> bool:
        self.release.wait(HANG_SECONDS)
        return True

    async def hung_async(self) -> bool:
        await asyncio.sleep(HANG_SECONDS)
        return True

    def named(self) -> list[tuple[str, Any]]:
        """``(key, callable or constant)`` for every field."""
        counts = [
            ("sync", self.fields.sync, self.sync),
            ("async", self.fields.async_, self.async_),
            ("hung_sync", self.fields.hung_sync, self.hung_sync),
            ("hung_async", self.fields.hung_async, self.hung_async),
        ]
        named = [(f"{kind}{i}", check) for kind, count, check in counts for i in range(count)]
        return named + [(f"constant{i}", i) for i in range(self.fields.constant)]


def bare(app: Flask, checks: Checks) -> None:
    """The floor: a plain Flask route returning the default payload, checking nothing."""

    @app.get(URL)
    def status() -> Any:
        return jsonify({"status": "OK"})


def flask_status(app: Flask, checks: Checks) -> None:
    """This project (or Flask-Status 1.0.1, which has the same import name, in its own venv)."""
    from flask_status import FlaskStatus

    status = FlaskStatus(app, timeout=checks.fields.timeout)
    for key, value in checks.named():
        status.add_field(key, value)


def flask_status_101(app: Flask, checks: Checks) -> None:
    """Flask-Status 1.0.1: ``add_field`` calls a function once, at setup, and keeps its value."""
    from flask_status import FlaskStatus

    # A fresh dict: 1.0.1 mutates the message it is given, and its default is shared.
    status = FlaskStatus(app, message={"status": "OK"})
    for key, value in checks.named():
        # It calls only plain functions (``types.FunctionType``), not bound methods.
        status.add_field(key, (lambda check=value: check()) if callable(value) else value)


def py_healthcheck(app: Flask, checks: Checks) -> None:
    """py-healthcheck: checks run one after another; caching off, so every request runs them."""
    from healthcheck import HealthCheck

    health = HealthCheck(app, URL, success_ttl=0, failed_ttl=0)
    for key, check in checks.named():
        health.add_check(_as_healthcheck(key, check))


def _as_healthcheck(key: str, check: Callable[[], Any]) -> Callable[[], tuple[bool, Any]]:
    def checker() -> tuple[bool, Any]:
        return True, check()

    checker.__name__ = key  # py-healthcheck reports each check by its function's name
    return checker


def obvious_design(app: Flask, checks: Checks) -> None:
    """What one would write by hand: an async view gathering the fields in an anyio task group.

    Sync fields go to ``anyio.to_thread.run_sync``; each field is under ``move_on_after``, and a
    sync field that times out is abandoned so that a hung one cannot hold the answer.
    """
    import anyio
    import anyio.to_thread

    timeout = checks.fields.timeout

    async def run(results: dict[str, Any], key: str, check: Any) -> None:
        with anyio.move_on_after(timeout) as scope:
            try:
                if asyncio.iscoroutinefunction(check):
                    results[key] = await check()
                else:
                    results[key] = await anyio.to_thread.run_sync(check, abandon_on_cancel=True)
            except Exception as exc:
                results[key] = {"error": repr(exc)}
        if scope.cancelled_caught:
            results[key] = {"error": f"timed out after {timeout}s"}

    @app.get(URL)
    async def status() -> Any:
        results: dict[str, Any] = {}
        async with anyio.create_task_group() as task_group:
            for key, value in checks.named():
                if callable(value):
                    task_group.start_soon(run, results, key, value)
                else:
                    results[key] = value
        failed = any(isinstance(value, dict) and "error" in value for value in results.values())
        return jsonify({"status": "DOWN" if failed else "OK", **results}), 503 if failed else 200


BUILDERS: dict[str, Callable[[Flask, Checks], None]] = {
    "bare": bare,
    "flask-status": flask_status,
    "flask-status-1.0.1": flask_status_101,
    "py-healthcheck": py_healthcheck,
    "obvious": obvious_design,
}


def build(builder: str, fields: Fields) -> tuple[Flask, Checks]:
    """A fresh app whose status route is made by ``builder``, checking ``fields``."""
    app = Flask(f"bench_{builder}")
    checks = Checks(fields)
    BUILDERS[builder](app, checks)
    return app, checks
