"""The app of the combination matrix (``test_matrix.py``) and the field sets it is built with.

A field set is a few status routes, each a list of fields with what every answer must show of
them: a healthy field its value, a failing one its error. :func:`create_app` builds the app for
one field set, with a Flask-SQLAlchemy database on SQLite, a request hook and a teardown, app
routes of its own, ``/matrix/stats`` (the process's threads, memory, the database's
checked-out connections and scoped sessions, and the check runs' spans finished since the last
read) and, when given one, a Redis store. The app configures the OpenTelemetry SDK
(:func:`configure_telemetry`) and traces its requests, as an operator's would.
``matrix_app.py`` builds it from the environment the matrix sets for each server it starts
(:func:`create_app_from_env`).
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from flask import Flask, Request, Response, g, jsonify, request
from flask_sqlalchemy import SQLAlchemy
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind
from sqlalchemy import text

from flask_status import ChangeEvent, Degraded, FlaskStatus, checks
from flask_status.fields import Kind
from flask_status.store import RedisStore

#: The header and value that let a caller read the details (``is_authorized``).
TOKEN = {"X-Token": "matrix"}
#: ``max_workers`` of every status route: the thread bound of the matrix is counted from it.
MAX_WORKERS = 4
#: How long the hung check blocks: past every phase and the exit of its server.
HUNG_SECONDS = 60.0
#: What ``/items`` and the ``session`` field read from the database.
SERVICE = "sqlite"
#: The reason the degraded fields give.
LAGGING = "replica lag 12s"
#: The environment the matrix gives each server: the field set, the SQLite file, the Redis URL
#: (empty: no store) and the store's key prefix.
FIELD_SET_ENV = "MATRIX_FIELD_SET"
DATABASE_ENV = "MATRIX_DATABASE"
STORE_ENV = "MATRIX_STORE"
PREFIX_ENV = "MATRIX_PREFIX"
#: The local TLS server the ``tls`` field checks (the matrix starts it): its port, and the PEM
#: file of the CA that issued its certificate.
TLS_PORT_ENV = "MATRIX_TLS_PORT"
TLS_CA_ENV = "MATRIX_TLS_CA"
#: Whole days that certificate has left.
TLS_DAYS_LEFT = 90


@dataclass(frozen=True)
class MatrixField:
    """One field: how to make its value, its ``add_field`` options, what it must read.

    A healthy field reads ``value`` (or, when ``value`` is callable, a value it accepts), with
    the reason ``degraded`` when it is degraded; a failing field reads an error starting with
    ``error``. A field that is no ``constant`` has one change event per process: its first
    state, which it keeps.
    """

    key: str
    make: Callable[[SQLAlchemy], Any]
    options: Mapping[str, Any] = field(default_factory=dict)
    value: Any = None
    error: str | None = None
    constant: bool = False
    degraded: str | None = None

    @property
    def healthy(self) -> bool:
        """Working: no error (degraded included)."""
        return self.error is None

    @property
    def critical(self) -> bool:
        return bool(self.options.get("critical", True))

    @property
    def state(self) -> str:
        """The state every format shows for it (``Outcome.state``)."""
        if self.degraded is not None:
            return "degraded"
        if self.error is not None and self.error.startswith("skipped"):
            return "skipped"
        return "ok" if self.healthy else "failing"

    @property
    def hangs(self) -> bool:
        return self.error is not None and self.error.startswith("timed out")

    def reads_value(self, value: Any) -> bool:
        return bool(self.value(value)) if callable(self.value) else value == self.value


@dataclass(frozen=True)
class MatrixRoute:
    """A status route of a field set, with the HTTP status and ``status`` of every answer."""

    url: str
    fields: tuple[MatrixField, ...]
    code: int
    status: str


# -- checks -------------------------------------------------------------------------------


def ok() -> str:
    return "ok"


async def ok_async() -> str:
    await anyio.sleep(0.005)
    return "ok"


def refused() -> None:
    raise ConnectionRefusedError("connection refused")


async def refused_async() -> None:
    await anyio.sleep(0.005)
    raise ConnectionRefusedError("connection refused")


def blocking_sleep(seconds: float) -> None:
    """Sleep holding the OS thread, under gevent's patching too."""
    if "gevent.monkey" in sys.modules:
        from gevent.monkey import get_original

        get_original("time", "sleep")(seconds)
    else:
        time.sleep(seconds)


def lagging() -> Any:
    raise Degraded(LAGGING, value=12)


async def lagging_async() -> Any:
    await anyio.sleep(0.005)
    return Degraded(LAGGING, value=12)


def hung() -> str:
    blocking_sleep(HUNG_SECONDS)
    return "too late"


def flaky() -> Callable[[], str]:
    """A check whose 2nd, 6th, 10th, ... run fails: never two failed runs in a row."""
    runs = itertools.count(1)
    lock = threading.Lock()

    def check() -> str:
        with lock:
            run = next(runs)
        if run % 4 == 2:
            raise ConnectionError(f"run {run} failed")
        return "ok"

    return check


def session_query(db: SQLAlchemy) -> Callable[[], str]:
    """A ``db.session`` query that takes long enough for probes to share its runs."""

    def check() -> str:
        name = db.session.execute(text("SELECT name FROM services")).scalar_one()
        time.sleep(0.02)
        return str(name)

    return check


def local_tls_certificate(db: SQLAlchemy) -> Callable[[], Any]:
    """``checks.tls_certificate`` of the local TLS server named by the environment."""
    port = int(os.environ[TLS_PORT_ENV])
    return checks.tls_certificate("127.0.0.1", port, ca_file=os.environ[TLS_CA_ENV])


def has_days_left(value: Any) -> bool:
    return isinstance(value, dict) and value.get("days_left") == TLS_DAYS_LEFT


def as_is(value: Any) -> Callable[[SQLAlchemy], Any]:
    """A field value (a constant or a check) that does not need the app's database."""
    return lambda db: value


def has_latency(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("latency_ms"), (int, float))


# -- field sets -----------------------------------------------------------------------------

#: A field set with a field of every kind: constant, sync, async, hung, failing, degraded
#: (critical: the route stays DEGRADED), background (``interval``, ``wait_first``), thresholds,
#: ``cache_ttl``, ``cache_ttl_failure``, ``depends_on``, the database through Flask-SQLAlchemy,
#: and a TLS handshake with a local server; the history and ``show_details`` of the route apply
#: to them all.
EVERY_KIND = (
    MatrixRoute(
        "/healthz",
        (
            MatrixField("version", as_is("2.0.0"), value="2.0.0", constant=True),
            MatrixField("sync", as_is(ok), value="ok"),
            MatrixField("async", as_is(ok_async), value="ok"),
            MatrixField("lookup", as_is(ok), {"cache_ttl": 1}, value="ok"),
            # An interval longer than the timeout, as operators set it.
            MatrixField(
                "background",
                as_is(ok),
                {"interval": 1, "timeout": 0.5, "wait_first": True},
                value="ok",
            ),
            MatrixField(
                "background_async", as_is(ok_async), {"interval": 1, "timeout": 0.5}, value="ok"
            ),
            MatrixField(
                "flaky",
                lambda db: flaky(),
                {"interval": 0.5, "timeout": 0.5, "failure_threshold": 2},
                value="ok",
            ),
            MatrixField("database", checks.sqlalchemy, {"interval": 1}, value=has_latency),
            MatrixField("session", session_query, value=SERVICE),
            # A network check on the event loop, run at most once a second per route.
            MatrixField(
                "tls", local_tls_certificate, {"cache_ttl": 1, "timeout": 3}, value=has_days_left
            ),
            MatrixField(
                "hung",
                as_is(hung),
                {"timeout": 0.3, "critical": False},
                error="timed out after 0.3s",
            ),
            MatrixField(
                "failing", as_is(refused), {"critical": False}, error="ConnectionRefusedError"
            ),
            MatrixField(
                "failing_async",
                as_is(refused_async),
                {"critical": False},
                error="ConnectionRefusedError",
            ),
            # depends_on: on a background parent (read from the store in the store cells), a
            # chain two deep, and a failing parent whose dependent is skipped, not run.
            MatrixField("after_background", as_is(ok), {"depends_on": "background"}, value="ok"),
            MatrixField("chained", as_is(ok), {"depends_on": "sync"}, value="ok"),
            MatrixField("chained_twice", as_is(ok_async), {"depends_on": ["chained"]}, value="ok"),
            # A degraded parent has succeeded: its dependent runs.
            MatrixField("after_replica", as_is(ok_async), {"depends_on": "replica"}, value="ok"),
            MatrixField(
                "after_failing",
                as_is(ok),
                {"depends_on": "failing", "critical": False},
                error="skipped: failing is failing",
            ),
            # No cache_ttl but a cache_ttl_failure: shared through a store for its failures.
            MatrixField(
                "retried",
                as_is(refused),
                {"critical": False, "cache_ttl_failure": 1},
                error="ConnectionRefusedError",
            ),
            MatrixField("replica", as_is(lagging), value=12, degraded=LAGGING),
            MatrixField("replica_async", as_is(lagging_async), value=12, degraded=LAGGING),
            MatrixField(
                "replica_background",
                as_is(lagging),
                {"interval": 1, "timeout": 0.5},
                value=12,
                degraded=LAGGING,
            ),
        ),
        200,
        "DEGRADED",
    ),
    MatrixRoute(
        "/downz",
        (
            MatrixField("version", as_is("2.0.0"), value="2.0.0", constant=True),
            MatrixField("database", as_is(refused), error="ConnectionRefusedError"),
        ),
        503,
        "DOWN",
    ),
)

#: Every field set by name: a new feature adds its fields here, or a set of its own.
FIELD_SETS: dict[str, tuple[MatrixRoute, ...]] = {"every kind": EVERY_KIND}


# -- telemetry ------------------------------------------------------------------------------


class RunSpans(SpanExporter):
    """Keeps what the matrix reads of each check run's span, and which spans were requests',
    until ``/matrix/stats`` takes them (a phase's thousands of spans are not kept whole)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: list[dict[str, Any]] = []
        self._requests: set[int] = set()
        self._open: set[int] = set()  # requests started and not ended yet

    def export(self, spans: Any) -> SpanExportResult:
        with self._lock:
            for span in spans:
                self._keep(span)
        return SpanExportResult.SUCCESS

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        """A request's span as it starts: a live stream's request is still open while the
        runs of its first document end."""
        if span.kind is SpanKind.SERVER:
            with self._lock:
                self._open.add(span.context.span_id)

    def _keep(self, span: ReadableSpan) -> None:
        assert span.context is not None
        if span.kind is SpanKind.SERVER:
            self._requests.add(span.context.span_id)
            self._open.discard(span.context.span_id)
        elif span.name.startswith("status check "):
            self._runs.append(
                {
                    "name": span.name,
                    "parent": None if span.parent is None else span.parent.span_id,
                    "attributes": dict(span.attributes or {}),
                    "status": span.status.status_code.name,
                }
            )

    def take(self) -> list[dict[str, Any]]:
        """The runs' spans since the last call, each with ``parent``: ``"request"`` (a span of
        a request to this process), ``"none"`` (a root) or ``"other"``."""
        with self._lock:
            runs, requests = self._runs, self._requests | self._open
            self._runs, self._requests = [], set()
        for run in runs:
            parent = run["parent"]
            run["parent"] = (
                "none" if parent is None else "request" if parent in requests else "other"
            )
        return runs


run_spans = RunSpans()


class RequestStarts(SpanProcessor):
    """Tells :data:`run_spans` of each span as it starts (an exporter hears only of ends)."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        run_spans.on_start(span, parent_context)


def configure_telemetry() -> None:
    """The OpenTelemetry SDK of the matrix's server process: spans to :data:`run_spans`."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(run_spans))
    provider.add_span_processor(RequestStarts())
    trace.set_tracer_provider(provider)


# -- the app --------------------------------------------------------------------------------


def has_token(request: Request) -> bool:
    return request.headers.get("X-Token") == TOKEN["X-Token"]


def proc_status(name: str) -> int:
    """A number from this process's ``/proc/self/status`` (``Threads``, ``VmRSS`` in KiB)."""
    match = re.search(rf"^{name}:\s+(\d+)", Path("/proc/self/status").read_text(), re.MULTILINE)
    assert match, name
    return int(match.group(1))


def create_app(field_set: str, database: str, store: str | None, prefix: str) -> Flask:
    """The app of ``field_set``, its database in the SQLite file ``database``, sharing results
    through the Redis server at ``store`` (under ``prefix``) when given one."""
    app = Flask("matrix_app")
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{database}"
    # An exhausted pool shows as an error within the phase, not as a request hung for 30 s.
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_timeout": 2}
    app.config["STATUS_MAX_WORKERS"] = MAX_WORKERS
    if store:
        app.config["STATUS_STORE"] = RedisStore(store, prefix=prefix)
    db = SQLAlchemy(app)
    with app.app_context():
        db.session.execute(text("CREATE TABLE IF NOT EXISTS services (name TEXT)"))
        db.session.execute(text("DELETE FROM services"))
        db.session.execute(text("INSERT INTO services VALUES (:name)"), {"name": SERVICE})
        db.session.commit()

    torn_down = itertools.count()

    @app.before_request
    def load_user() -> None:
        g.user = request.headers.get("X-User", "anonymous")

    @app.teardown_request
    def count_teardown(_: BaseException | None) -> None:
        next(torn_down)

    @app.get("/hello")
    def hello() -> str:
        return "hello"

    @app.get("/whoami")
    def whoami() -> str:
        return str(g.user)

    @app.get("/items")
    def items() -> str:
        return str(db.session.execute(text("SELECT name FROM services")).scalar_one())

    # Every change event of the process, as [route, key, old, new]: recorded by a sync listener
    # on one route and an async one on the other.
    events: list[list[str | None]] = []

    def record(event: ChangeEvent) -> None:
        events.append([event.route, event.key, event.old, event.new])

    async def record_async(event: ChangeEvent) -> None:
        await anyio.sleep(0)
        record(event)

    @app.get("/matrix/stats")
    def stats() -> Response:
        return jsonify(
            pid=os.getpid(),
            events=events,
            threads=proc_status("Threads"),
            # Each async check's own app context is pushed and popped in a thread (the app has
            # a teardown): one thread per async run in flight, at most one run per field.
            async_fields=sum(
                item.kind is Kind.ASYNC for status in statuses for item in status.fields.values()
            ),
            rss_kib=proc_status("VmRSS"),
            checked_out=db.engine.pool.checkedout(),  # type: ignore[attr-defined]
            sessions=len(db.session.registry.registry),  # type: ignore[attr-defined]
            spans=run_spans.take(),
        )

    statuses = []
    for number, route in enumerate(FIELD_SETS[field_set]):
        status = FlaskStatus(app, url=route.url, is_authorized=has_token)
        statuses.append(status)
        status.on_change(record_async if number % 2 else record)
        for item in route.fields:
            status.add_field(item.key, item.make(db), **item.options)
    return app


def create_app_from_env() -> Flask:
    """:func:`create_app` as the environment the matrix sets says."""
    return create_app(
        os.environ[FIELD_SET_ENV],
        os.environ[DATABASE_ENV],
        os.environ.get(STORE_ENV) or None,
        os.environ[PREFIX_ENV],
    )
