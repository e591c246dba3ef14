"""The benchmarked apps: one status route per contender, built from a description of its fields.

Imported by workers in every virtualenv, so it needs only Flask at import time: each contender's
own library is imported where its app is built.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, jsonify

URL = "/api/status"
#: The ASGI scope of a GET of the status route, for the scenarios that call an ASGI app in
#: process (copy it per call: an app may write into it).
STATUS_GET_SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": URL,
    "raw_path": URL.encode(),
    "root_path": "",
    "query_string": b"",
    "headers": [(b"host", b"127.0.0.1")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}
BARE_URL = "/bare"  # a bare route beside the status route, on the real servers
RUNS_URL = "/runs"  # how many times each check ran, where the app counts them

#: How long a hung check would run: far longer than any timeout, released at teardown.
HANG_SECONDS = 60.0

#: The gevent scenario's sync check blocks for this long, under this timeout (``gevent_app``).
BLOCK_SECONDS = 2.0
BLOCK_TIMEOUT = 0.2


@dataclass(frozen=True)
class Fields:
    """What a status route checks: counts of each kind of field."""

    sync: int = 0
    async_: int = 0
    constant: int = 0
    hung_sync: int = 0
    hung_async: int = 0
    slow_async: int = 0
    seconds: float = 0.0  # how long each sync/async check runs; 0 returns at once
    slow_seconds: float = 0.0  # how long each slow async check runs
    #: flask-status only: async checks of ``seconds`` each, each depending on the one before
    chain: int = 0
    timeout: float = 0.8  # per-field timeout, where the contender has one
    #: flask-status only: its callable fields run in the background every this many seconds
    interval: float | None = None


#: The fields of the overhead scenarios, also served in the scenarios on real servers.
TRIVIAL_MIXED = Fields(sync=5, async_=5)
#: One slow async check among trivial ones, served in the load scenario.
SLOW_MIXED = Fields(sync=2, async_=2, slow_async=1, slow_seconds=0.05)
#: Checks of 300 ms run in the background every second; probes only read their last results.
BACKGROUND = Fields(sync=10, async_=10, seconds=0.3, interval=1.0)
#: One async check of 300 ms, which a burst of concurrent probes shares.
ONE_SLOW = Fields(slow_async=1, slow_seconds=0.3)


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

    async def slow_async(self) -> bool:
        await asyncio.sleep(self.fields.slow_seconds)
        return True

    def named(self) -> list[tuple[str, Any]]:
        """``(key, callable or constant)`` for every field."""
        counts = [
            ("sync", self.fields.sync, self.sync),
            ("async", self.fields.async_, self.async_),
            ("hung_sync", self.fields.hung_sync, self.hung_sync),
            ("hung_async", self.fields.hung_async, self.hung_async),
            ("slow_async", self.fields.slow_async, self.slow_async),
            ("chain", self.fields.chain, self.async_),
        ]
        named = [(f"{kind}{i}", check) for kind, count, check in counts for i in range(count)]
        return named + [(f"constant{i}", i) for i in range(self.fields.constant)]


def bare(app: Flask, checks: Checks) -> None:
    """The floor: a plain Flask route returning the default payload, checking nothing."""

    @app.get(URL)
    def status() -> Any:
        return jsonify({"status": "OK"})


def flask_status(app: Flask, checks: Checks, **options: Any) -> None:
    """This project (or Flask-Status 1.0.1, which has the same import name, in its own venv)."""
    from flask_status import FlaskStatus

    status = FlaskStatus(app, timeout=checks.fields.timeout, **options)
    interval = checks.fields.interval
    for key, value in checks.named():
        status.add_field(
            key, value, interval=interval if callable(value) else None, **_chain_link(key)
        )


def _chain_link(key: str) -> dict[str, str]:
    """``chain<n>`` depends on ``chain<n-1>``; other fields on nothing (they are added as
    ever, so that an older flask-status builds them too)."""
    if not key.startswith("chain") or key == "chain0":
        return {}
    return {"depends_on": f"chain{int(key[len('chain') :]) - 1}"}


#: Finished spans an in-memory exporter keeps before it drops them: an exporter that sends its
#: spans keeps none, while thousands kept would make every full garbage collection of the
#: worker longer, round after round.
KEPT_SPANS = 1_000


def flask_status_with_sdk(app: Flask, checks: Checks) -> None:
    """This project in an app that configured the OpenTelemetry SDK as production apps do
    (a batch span processor, which exports off the request path), exporting spans to memory,
    and metrics to an in-memory reader. The global providers are set once per process:
    this contender has a worker process of its own."""
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    class BoundedExporter(InMemorySpanExporter):
        kept = 0

        def export(self, spans: Any) -> SpanExportResult:
            self.kept += len(spans)
            if self.kept > KEPT_SPANS:
                self.clear()
                self.kept = len(spans)
            return super().export(spans)

    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(BoundedExporter()))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    flask_status(app, checks)


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
    """What one would write by hand: an async view gathering the fields in an anyio task group."""

    @app.get(URL)
    async def status() -> Any:
        document, code = answer(await gather_with_anyio(checks))
        return jsonify(document), code


def asyncio_view(app: Flask, checks: Checks) -> None:
    """The other obvious view: ``asyncio.gather``, each field under ``asyncio.wait_for``.

    Sync fields go to ``asyncio.to_thread``; a sync field that times out is left running in
    its thread, and the answer does not wait for it.
    """
    timeout = checks.fields.timeout

    async def run(check: Any) -> Any:
        call = check() if asyncio.iscoroutinefunction(check) else asyncio.to_thread(check)
        try:
            return await asyncio.wait_for(call, timeout)
        except asyncio.TimeoutError:
            return {"error": f"timed out after {timeout}s"}
        except Exception as exc:
            return {"error": repr(exc)}

    @app.get(URL)
    async def status() -> Any:
        named = checks.named()
        called = [(key, value) for key, value in named if callable(value)]
        values = await asyncio.gather(*(run(check) for _, check in called))
        results = {key: value for key, value in named if not callable(value)}
        results.update(zip((key for key, _ in called), values, strict=True))
        document, code = answer(results)
        return jsonify(document), code


async def gather_with_anyio(checks: Checks) -> dict[str, Any]:
    """Every field at once in an anyio task group; a failed field's result is ``{"error": ...}``.

    Sync fields go to ``anyio.to_thread.run_sync``; each field is under ``move_on_after``, and a
    sync field that times out is abandoned so that a hung one cannot hold the answer.
    """
    import anyio
    import anyio.to_thread

    timeout = checks.fields.timeout
    results: dict[str, Any] = {}

    async def run(key: str, check: Any) -> None:
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

    async with anyio.create_task_group() as task_group:
        for key, value in checks.named():
            if callable(value):
                task_group.start_soon(run, key, value)
            else:
                results[key] = value
    return results


def answer(results: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The JSON document and status code of the hand-written designs."""
    failed = any(isinstance(value, dict) and "error" in value for value in results.values())
    return {"status": "DOWN" if failed else "OK", **results}, 503 if failed else 200


BUILDERS: dict[str, Callable[[Flask, Checks], None]] = {
    "bare": bare,
    "flask-status": flask_status,
    "flask-status-telemetry-off": functools.partial(flask_status, telemetry=False),
    "flask-status-otel-sdk": flask_status_with_sdk,
    "flask-status-1.0.1": flask_status_101,
    "py-healthcheck": py_healthcheck,
    "obvious": obvious_design,
    "asyncio-view": asyncio_view,
}


def build(builder: str, fields: Fields, checks: Checks | None = None) -> tuple[Flask, Checks]:
    """A fresh app whose status route is made by ``builder``, checking ``fields`` (with
    ``checks``, when given)."""
    app = Flask(f"bench_{builder}")
    checks = checks or Checks(fields)
    BUILDERS[builder](app, checks)
    return app, checks
