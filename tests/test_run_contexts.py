"""The Flask contexts a check runs in: an app context of its own for its whole run, the
request's only when a request started the run (issue: runs that no request started used a
request already torn down, and shared its app context)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from clients import Gate, MakeClient, WsgiClient, in_threads
from flask import Flask, current_app, g, has_request_context, request
from flask.globals import app_ctx

from flask_status import FlaskStatus

pytest_plugins = ["reliability_fixtures"]

URL = "/api/status"


class ContextLog:
    """What each check call saw, and how many app contexts were torn down."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []
        self.teardowns = 0
        self.request_contexts: set[int] = set()  # the requests' own app contexts
        self.requests = 0

    def record(self) -> str:
        seen = {
            "request": has_request_context(),
            "path": request.path if has_request_context() else None,
            "user": g.get("user"),
            "app_context": id(app_ctx._get_current_object()),  # type: ignore[attr-defined]
            "app": current_app.name,
        }
        with self.lock:
            self.calls.append(seen)
        return "ok"

    def count_teardown(self, error: BaseException | None) -> None:
        with self.lock:
            self.teardowns += 1


def logged_app(log: ContextLog) -> Flask:
    app = Flask("run_contexts")

    @app.before_request
    def who() -> None:
        g.user = request.headers.get("X-User", "anonymous")
        with log.lock:
            log.request_contexts.add(id(app_ctx._get_current_object()))  # type: ignore[attr-defined]
            log.requests += 1

    app.teardown_appcontext(log.count_teardown)
    return app


def recording(log: ContextLog, kind: str) -> Callable[[], Any]:
    """A check of ``kind`` (``"sync"`` or ``"async"``) that records what it sees in ``log``."""
    if kind == "sync":
        return log.record

    async def check_async() -> str:
        return log.record()

    return check_async


def settle(log: ContextLog, calls: int) -> None:
    """Wait until ``calls`` check calls and every app context's teardown happened."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with log.lock:
            if len(log.calls) >= calls and log.teardowns >= len(log.calls):
                return
        time.sleep(0.01)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_run_a_request_started_sees_it_in_an_app_context_of_its_own(
    make_client: MakeClient, kind: str
) -> None:
    log = ContextLog()
    app = logged_app(log)
    FlaskStatus(app).add_field("seen", recording(log, kind))
    client = make_client(app)

    answer = client.get(URL + "?q=1", {"X-User": "alice"})

    assert answer.status == 200, answer.json()
    settle(log, 1)
    [seen] = log.calls
    assert seen["request"] and seen["path"] == URL
    assert seen["user"] == "alice"  # what a request hook put on the request's g is readable
    assert seen["app"] == "run_contexts"
    assert seen["app_context"] not in log.request_contexts  # its own, not the request's
    # One teardown for the request's app context, one for the check's.
    assert log.teardowns == 2


def test_g_set_by_a_check_stays_the_checks(make_client: MakeClient) -> None:
    app = Flask("run_contexts")
    seen_after: list[object] = []

    @app.before_request
    def mark() -> None:
        g.marker = "request"

    @app.after_request
    def read_marker(response: Any) -> Any:
        seen_after.append(g.get("marker"))
        return response

    def check() -> str:
        g.marker = "check"
        return "ok"

    FlaskStatus(app).add_field("check", check)

    assert make_client(app).get(URL).status == 200
    assert seen_after == ["request"]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_background_run_sees_no_request_and_tears_its_app_context_down(
    make_client: MakeClient, kind: str
) -> None:
    log = ContextLog()
    app = logged_app(log)
    FlaskStatus(app).add_field("seen", recording(log, kind), interval=0.05, wait_first=True)
    client = make_client(app)
    for index in range(5):
        assert client.get(f"{URL}?probe={index}").status == 200
        time.sleep(0.06)

    settle(log, 4)
    with log.lock:
        calls = list(log.calls)
        requests = log.requests
        teardowns = log.teardowns
    assert len(calls) >= 4
    for seen in calls:
        assert seen == {**seen, "request": False, "path": None, "user": None}
        assert seen["app"] == "run_contexts"  # an app context all the same
    # Every background run's app context was torn down, besides each request's own (the
    # last run may still be returning).
    assert teardowns >= len(calls) - 1 + requests


def test_a_run_started_ahead_sees_no_request() -> None:
    """Requests that joined a run are followed by a run no request started: it must not see
    the request that happened to end the run before it. (Runs start ahead on the process's
    own loop, and under an ASGI server in its lifespan: see test_flask_sqlalchemy.py.)"""
    log = ContextLog()
    app = logged_app(log)

    def slow() -> str:
        time.sleep(0.05)
        return log.record()

    FlaskStatus(app).add_field("seen", slow)
    client = WsgiClient(app)

    def probe(index: int) -> None:
        for _ in range(5):
            assert client.get(URL, {"X-User": f"user{index}"}).status == 200

    in_threads(6, probe)
    time.sleep(0.2)  # the last run ahead finishes
    settle(log, 1)
    with log.lock:
        calls = list(log.calls)
        teardowns = log.teardowns
        requests = log.requests
    ahead = [seen for seen in calls if not seen["request"]]
    assert ahead, "no run was started ahead: the test does not exercise its case"
    assert all(seen["user"] is None and seen["path"] is None for seen in ahead)
    assert teardowns == len(calls) + requests


def test_a_hung_checks_app_context_is_torn_down_when_it_returns(
    make_client: MakeClient, gate: Gate
) -> None:
    log = ContextLog()
    app = logged_app(log)

    def hangs() -> str:
        gate.wait()
        return log.record()

    FlaskStatus(app).add_field("hangs", hangs, timeout=0.2, critical=False)
    client = make_client(app)

    answer = client.get(URL)

    assert answer.status == 200
    assert "timed out" in answer.json()["hangs"]["error"]
    assert log.teardowns == 1  # the request's; the check still runs, in its own context
    gate.release()
    settle(log, 1)
    [seen] = log.calls
    assert seen["request"] and seen["path"] == URL  # the request it started with, still readable
    assert log.teardowns == 2


def test_a_key_added_again_is_a_new_field_for_waiting_first(make_client: MakeClient) -> None:
    app = Flask("run_contexts")
    status = FlaskStatus(app)
    status.add_field("first", lambda: "old", interval=0.05, wait_first=True)
    client = make_client(app)
    assert client.get(URL).json()["first"] == "old"

    def slow_first() -> str:
        time.sleep(0.3)
        return "new"

    status.add_field("first", slow_first, interval=5, wait_first=True, timeout=2)
    answer = client.get(URL)

    assert answer.status == 200, answer.json()
    assert answer.json()["first"] == "new"  # waited for the new field's first result


def test_a_key_added_again_starts_a_fresh_streak(make_client: MakeClient) -> None:
    app = Flask("run_contexts")
    status = FlaskStatus(app)
    status.add_field("db", lambda: "up", failure_threshold=3)
    client = make_client(app)
    assert client.get(URL).status == 200

    def down() -> str:
        raise ConnectionError("refused")

    status.add_field("db", down, failure_threshold=3)
    answer = client.get(URL)

    # A new field has nothing to damp against: its first run shows what it found.
    assert answer.status == 503, answer.json()
    assert "refused" in answer.json()["db"]["error"]


def test_a_background_key_added_again_on_request_stops_the_old_task(
    make_client: MakeClient, gate: Gate
) -> None:
    app = Flask("run_contexts")
    status = FlaskStatus(app)
    old_runs = [0]
    calls = [0]
    lock = threading.Lock()

    def old() -> str:
        old_runs[0] += 1
        return "old"

    status.add_field("dep", old, interval=0.02)
    client = make_client(app)
    client.get(URL)
    time.sleep(0.1)

    def hung() -> str:
        with lock:
            calls[0] += 1
        gate.wait()
        return "late"

    status.add_field("dep", hung, timeout=0.1, critical=False)
    in_threads(15, lambda _: client.get(URL))
    runs_then = old_runs[0]
    time.sleep(0.2)

    assert old_runs[0] <= runs_then + 1  # the old background task stopped
    assert calls[0] == 1  # single-flight holds: one thread for the hung check


def test_a_checks_teardown_frees_only_what_the_check_opened(make_client: MakeClient) -> None:
    """Flask's documented pattern: a connection on ``g``, closed by a teardown. The request's
    connection must outlive its checks' teardowns."""
    app = Flask("run_contexts")
    opened: list[Connection] = []

    def get_db() -> Connection:
        if "db" not in g:
            g.db = Connection()
            opened.append(g.db)
        return g.db  # type: ignore[no-any-return]

    @app.teardown_appcontext
    def close_db(error: BaseException | None) -> None:
        db = g.pop("db", None)
        if db is not None:
            db.close()

    @app.before_request
    def open_db() -> None:
        get_db()

    @app.after_request
    def use_db(response: Any) -> Any:
        get_db().query()  # the request's own, still open after the checks
        return response

    async def check_async() -> str:
        return get_db().query()

    status = FlaskStatus(app)
    status.add_field("sync", lambda: get_db().query())
    status.add_field("async", check_async)

    answer = make_client(app).get(URL)

    assert answer.status == 200, answer.json()
    assert answer.json() == {"status": "OK", "sync": "ok", "async": "ok"}
    assert len(opened) == 3  # the request's and each check's own
    settle_closed(opened)


@pytest.mark.parametrize(
    "raised_type", [ConnectionError, SystemExit, KeyboardInterrupt, asyncio.CancelledError]
)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_teardown_that_raises_fails_only_its_checks_field(
    make_client: MakeClient, kind: str, raised_type: type[BaseException]
) -> None:
    """Whatever it raises: ``SystemExit`` out of a task would stop the event loop, and every
    later request with it; a cancellation of its own (an async teardown that awaited something
    cancelled elsewhere) is no deadline's."""
    app = Flask("run_contexts")
    raised = [False]

    @app.teardown_appcontext
    def flaky(error: BaseException | None) -> None:
        if g.get("check") and not raised[0]:
            raised[0] = True
            raise raised_type("teardown failed")

    def mark() -> str:
        g.check = True
        return "ok"

    async def mark_async() -> str:
        return mark()

    FlaskStatus(app).add_field("dep", mark if kind == "sync" else mark_async, critical=False)
    client = make_client(app)

    first = client.get(URL)
    second = client.get(URL)

    assert first.status == 200
    assert first.json()["dep"] == {"error": f"{raised_type.__name__}: teardown failed"}
    assert second.status == 200 and second.json() == {"status": "OK", "dep": "ok"}


class Connection:
    """A stand-in for a database connection that knows whether it was closed."""

    def __init__(self) -> None:
        self.closed = False

    def query(self) -> str:
        if self.closed:
            raise RuntimeError("connection already closed")
        return "ok"

    def close(self) -> None:
        self.closed = True


def settle_closed(connections: list[Connection]) -> None:
    """Every connection is closed once its app context was torn down."""
    deadline = time.monotonic() + 5
    while not all(connection.closed for connection in connections):
        assert time.monotonic() < deadline, "a connection was never closed"
        time.sleep(0.01)
