"""Change events (``status.on_change``): what is announced, in which order, off the request
path, under WSGI and StatusMiddleware; and once per fleet of real gunicorn processes sharing a
real redis-server."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio
import events_app
import pytest
import redis
from clients import MakeClient
from conftest import RedisServer
from flask import Flask
from helpers import ServerProcess, http_fetch
from servers import gunicorn

from flask_status import ChangeEvent, FlaskStatus, lifecycle
from flask_status.engine import Origin
from flask_status.events import Change, Tracker
from flask_status.outcome import Outcome
from flask_status.route import EXTENSION_KEY
from flask_status.store import RedisStore

pytest_plugins = ["reliability_fixtures"]

URL = "/api/status"


@pytest.fixture(autouse=True)
def _fresh_process_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting and draining are states of the process: each test begins with neither."""
    monkeypatch.setattr(lifecycle, "_started", False)
    monkeypatch.setattr(lifecycle, "_draining", False)


class Switch:
    """A check that is healthy while ``up``, and raises otherwise."""

    def __init__(self) -> None:
        self.up = True

    def __call__(self) -> str:
        if not self.up:
            raise ConnectionError("refused")
        return "up"


class Recorder:
    """A listener keeping every event it gets (``seen``: their ``(key, old, new)``)."""

    def __init__(self) -> None:
        self.events: list[ChangeEvent] = []

    def __call__(self, event: ChangeEvent) -> None:
        self.events.append(event)

    @property
    def seen(self) -> list[tuple[str | None, str | None, str]]:
        return [(event.key, event.old, event.new) for event in self.events]

    def wait_for(
        self, count: int, seconds: float = 10.0
    ) -> list[tuple[str | None, str | None, str]]:
        """The events once there are ``count`` (and a moment later, to see any extra one)."""
        wait_for(lambda: len(self.events) >= count, seconds)
        time.sleep(0.3)
        return self.seen


def wait_for(condition: Callable[[], object], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def flips(make_client: MakeClient, states: list[bool], **options: Any) -> Recorder:
    """An app whose critical field ``db`` is up or down per request as ``states`` say."""
    app = Flask(__name__)
    status = FlaskStatus(app)
    db = Switch()
    status.add_field("db", db, **options)
    status.add_field("version", "1.0")  # a constant: never an event
    recorder = status.on_change(Recorder())
    client = make_client(app)
    for up in states:
        db.up = up
        client.get(URL)
    return recorder


def test_each_change_once_in_order_first_result_with_no_old_state(
    make_client: MakeClient,
) -> None:
    recorder = flips(make_client, [True, True, False, False, True])

    assert recorder.wait_for(6) == [
        ("db", None, "ok"),
        (None, None, "UP"),
        ("db", "ok", "failing"),
        (None, "UP", "DOWN"),
        ("db", "failing", "ok"),
        (None, "DOWN", "UP"),
    ]
    first = recorder.events[0]
    assert first.route == URL and first.outcome is not None and first.outcome.value == "up"
    assert recorder.events[1].outcome is None
    assert recorder.events[2].outcome is not None
    assert recorder.events[2].outcome.error == "ConnectionError: refused"
    times = [event.at for event in recorder.events]
    assert times == sorted(times) and abs(times[0] - time.time()) < 30


def test_a_change_held_back_by_failure_threshold_is_no_event(make_client: MakeClient) -> None:
    # One failure between successes is held back; two in a row are a change.
    recorder = flips(make_client, [True, False, True, False, False], failure_threshold=2)

    assert recorder.wait_for(4) == [
        ("db", None, "ok"),
        (None, None, "UP"),
        ("db", "ok", "failing"),
        (None, "UP", "DOWN"),
    ]


def test_the_overall_state_is_recomputed_from_every_field(make_client: MakeClient) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    db, cache = Switch(), Switch()
    status.add_field("db", db)
    status.add_field("cache", cache, critical=False)
    recorder = status.on_change(Recorder())
    client = make_client(app)

    client.get(URL)
    cache.up = False
    client.get(URL)
    db.up = False
    client.get(URL)
    cache.up = True
    client.get(URL)  # db still down: the overall state stays DOWN

    seen = recorder.wait_for(8)
    # The two checks of the first request run at once: either may end first.
    assert sorted(seen[:2]) == [("cache", None, "ok"), ("db", None, "ok")]
    assert seen[2:] == [
        (None, None, "UP"),  # once every field has a state
        ("cache", "ok", "failing"),
        (None, "UP", "DEGRADED"),
        ("db", "ok", "failing"),
        (None, "DEGRADED", "DOWN"),
        ("cache", "failing", "ok"),
    ]


def test_sync_and_async_listeners_get_the_same_events(make_client: MakeClient) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    db = Switch()
    status.add_field("db", db)
    seen_async: list[tuple[str | None, str | None, str]] = []
    threads: set[str] = set()

    @status.on_change(timeout=2.0)
    async def record(event: ChangeEvent) -> None:
        await anyio.sleep(0)
        seen_async.append((event.key, event.old, event.new))

    def record_sync(event: ChangeEvent) -> None:
        threads.add(threading.current_thread().name)

    recorder = status.on_change(Recorder())
    status.on_change(record_sync)
    client = make_client(app)
    client.get(URL)
    db.up = False
    client.get(URL)

    assert recorder.wait_for(4) == seen_async
    assert len(seen_async) == 4
    assert threading.current_thread().name not in threads  # not called in the request's thread


def test_a_listener_that_raises_or_hangs_is_logged_once_and_others_go_on(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    db = Switch()
    status.add_field("db", db)
    release = threading.Event()

    def broken(event: ChangeEvent) -> None:
        raise RuntimeError("webhook down")

    hung_calls: list[ChangeEvent] = []

    def hung(event: ChangeEvent) -> None:
        hung_calls.append(event)
        release.wait(20)

    status.on_change(broken)
    status.on_change(hung, timeout=0.2)
    recorder = status.on_change(Recorder())
    client = make_client(app)
    try:
        with caplog.at_level(logging.DEBUG, logger=app.logger.name):
            for up in [True, False, True]:
                db.up = up
                assert client.get(URL).status == (200 if up else 503)
            assert len(recorder.wait_for(6)) == 6  # none held up by the others
            wait_for(lambda: len(listener_records(caplog, "hung")) == 6)
    finally:
        release.set()

    for name, why in [("broken", "raised"), ("hung", "did not return within 0.2s")]:
        records = listener_records(caplog, name)
        assert [r.levelno for r in records] == [logging.ERROR] + [logging.DEBUG] * 5
        assert why in records[0].getMessage()
    assert "webhook down" in caplog.text  # its traceback, in the log
    # While its first call hangs, it is not called again: one thread held, not one per event.
    assert len(hung_calls) == 1
    assert (
        "its call for an earlier event has not returned"
        in listener_records(caplog, "hung")[-1].getMessage()
    )


# A cancellation of its own: it awaited something that was cancelled elsewhere.
@pytest.mark.parametrize("raised", [SystemExit, asyncio.CancelledError])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_listener_that_exits_costs_only_its_own_events(
    make_client: MakeClient,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    raised: type[BaseException],
) -> None:
    """``SystemExit`` (or any BaseException) from a listener is its failure, like any other: it
    stops neither the other listeners nor the process's event loop, where background checks
    run."""
    app = Flask(__name__)
    status = FlaskStatus(app)
    db = Switch()
    status.add_field("db", db)
    status.add_field("cron", lambda: "ran", interval=0.1)

    def exits(event: ChangeEvent) -> None:
        raise raised(3)

    async def exits_async(event: ChangeEvent) -> None:
        raise raised(3)

    status.on_change(exits if kind == "sync" else exits_async)
    recorder = status.on_change(Recorder())
    client = make_client(app)
    with caplog.at_level(logging.DEBUG, logger=app.logger.name):
        for up in [True, False, True]:
            db.up = up
            client.get(URL)
            time.sleep(0.2)
        seen = recorder.wait_for(7)
    assert [change for change in seen if change[0] == "db"] == [
        ("db", None, "ok"),
        ("db", "ok", "failing"),
        ("db", "failing", "ok"),
    ]
    assert ("cron", None, "ok") in seen
    records = listener_records(caplog, "exits")
    assert records and records[0].levelno == logging.ERROR
    assert "raised" in records[0].getMessage()
    # The loop still runs the background check: its result is fresh, never stale.
    runs = status_route(app).evaluator._state(status.fields["cron"]).last_background
    time.sleep(0.5)
    assert runs is not status_route(app).evaluator._state(status.fields["cron"]).last_background


def status_route(app: Flask) -> Any:
    return app.extensions[EXTENSION_KEY][0]


def listener_records(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "change listener" in r.msg and name in r.getMessage()]


def test_a_slow_listener_adds_no_latency_to_answers(make_client: MakeClient) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    db = Switch()
    status.add_field("db", db)
    release = threading.Event()
    status.on_change(lambda event: release.wait(10), timeout=20)  # 10 s per event

    @status.on_change
    async def slow(event: ChangeEvent) -> None:
        await anyio.sleep(10)

    recorder = status.on_change(Recorder())
    client = make_client(app)
    try:
        started = time.monotonic()
        for up in [True, False, True, False]:
            db.up = up
            client.get(URL)
        took = time.monotonic() - started
        assert len(recorder.wait_for(8)) == 8
    finally:
        release.set()
    assert took < 5.0  # each listener call alone would take 10 s


def test_a_background_result_gone_stale_is_announced_with_no_request(
    make_client: MakeClient,
) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    status.add_field("queue", lambda: "ok", interval=0.2, timeout=0.2)
    recorder = status.on_change(Recorder())
    client = make_client(app)
    client.get(URL)
    wait_for(lambda: (None, None, "UP") in recorder.seen)
    [route] = app.extensions[EXTENSION_KEY]
    route.background.stop()  # its runner is gone: in a moment, its last result is stale

    assert recorder.wait_for(4) == [
        ("queue", None, "ok"),
        (None, None, "UP"),
        ("queue", "ok", "stale"),
        (None, "UP", "DOWN"),
    ]


def test_draining_is_announced(make_client: MakeClient, tmp_path: Path) -> None:
    app = Flask(__name__)
    drain_file = tmp_path / "drain"
    status = FlaskStatus(app, readiness=True, drain_file=str(drain_file))
    status.add_field("db", Switch())
    recorder = status.on_change(Recorder())
    client = make_client(app)
    client.get(URL)
    drain_file.touch()  # another process of the pod drains
    assert client.get(URL).status == 503

    assert recorder.wait_for(3) == [
        ("db", None, "ok"),
        (None, None, "UP"),
        (None, "UP", "DRAINING"),
    ]


def test_a_route_waiting_for_the_app_to_start_is_starting_first(
    make_client: MakeClient,
) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app, readiness=True, started_by="app")
    status.add_field("db", Switch())
    recorder = status.on_change(Recorder())
    client = make_client(app)
    client.get(URL)
    lifecycle.mark_started()
    client.get(URL)

    assert recorder.wait_for(3) == [
        (None, None, "STARTING"),
        ("db", None, "ok"),
        (None, "STARTING", "UP"),
    ]


@pytest.mark.parametrize(
    ("listener", "options", "error", "message"),
    [
        ("not callable", {}, TypeError, "on_change: listener must be callable, got str"),
        (print, {"timeout": 0}, ValueError, "on_change: timeout must be a number of seconds > 0"),
        (print, {"timeout": "5"}, TypeError, "on_change: timeout must be a number of seconds"),
        (None, {"timeout": -1.0}, ValueError, "on_change: timeout must be"),
    ],
)
def test_a_bad_listener_or_timeout_is_refused_at_setup(
    listener: Any, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    status = FlaskStatus(Flask(__name__))
    with pytest.raises(error, match=message):
        status.on_change(listener, **options)
    assert status.change_listeners == []


def test_with_the_store_down_each_process_announces_what_it_sees(
    make_client: MakeClient, closed_port: int
) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app, store=f"redis://127.0.0.1:{closed_port}/0")
    db = Switch()
    status.add_field("db", db, cache_ttl=0.01)  # shared, were the store up
    recorder = status.on_change(Recorder())
    client = make_client(app)
    for up in [True, True, False]:
        time.sleep(0.05)  # past the cache
        db.up = up
        assert "store" in client.get(URL).json()  # it says the store is down

    assert recorder.wait_for(4) == [
        ("db", None, "ok"),
        (None, None, "UP"),
        ("db", "ok", "failing"),
        (None, "UP", "DOWN"),
    ]


def test_a_store_that_never_answers_holds_up_no_event(make_client: MakeClient) -> None:
    """Each call to a silent store waits for its timeout: asked once per event, it would hold
    every later event (and keep each in memory) for as long, in turn."""
    app = Flask(__name__)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        store = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        status = FlaskStatus(app, store=RedisStore(store, timeout=0.2))
        db = Switch()
        status.add_field("db", db)  # not shared: its runs never ask the store
        recorder = status.on_change(Recorder())
        client = make_client(app)
        for request in range(50):
            db.up = request % 2 == 0
            client.get(URL)
        # 100 changes, each of the route's overall state: asked in turn, 20 s.
        assert len(recorder.wait_for(100, seconds=8)) == 100


# -- the tracker, alone ---------------------------------------------------------------------

OK, FAILING = Outcome("up"), Outcome(error="ConnectionError: refused")
STALE = Outcome(error="stale: the last result is 9s old", error_kind="stale")


def up_unless_failing(outcomes: Mapping[str, Outcome] | None) -> str | None:
    if outcomes is None:
        return None
    return "UP" if all(outcome.ok for outcome in outcomes.values()) else "DOWN"


def changes(tracker: Tracker, key: str, outcome: Outcome, origin: Origin) -> list[Change]:
    return tracker.field(key, outcome, origin, lambda: ["db"], up_unless_failing)


def test_the_tracker_offers_only_its_own_runs_of_a_shared_field_to_the_fleet() -> None:
    tracker = Tracker()
    # Read from the store: that process announces it; this one only keeps it.
    assert changes(tracker, "db", OK, "elsewhere") == []
    # Its own run of a shared field is offered to the fleet, changed here or not.
    assert changes(tracker, "db", OK, "shared") == [
        Change("db", "ok", "ok", OK, fleet=True),
        Change(None, "UP", "UP", None, fleet=True),
    ]
    assert changes(tracker, "db", FAILING, "shared") == [
        Change("db", "ok", "failing", FAILING, fleet=True),
        Change(None, "UP", "DOWN", None, fleet=True),
    ]


def test_the_tracker_announces_stale_and_its_end_per_process() -> None:
    tracker = Tracker()
    changes(tracker, "db", OK, "shared")
    assert changes(tracker, "db", STALE, "local") == [
        Change("db", "ok", "stale", STALE),
        Change(None, "UP", "DOWN", None),
    ]
    # Leaving stale through another process's result: this process's change, announced here.
    assert changes(tracker, "db", OK, "elsewhere") == [
        Change("db", "stale", "ok", OK),
        Change(None, "DOWN", "UP", None),
    ]
    assert changes(tracker, "db", OK, "local") == []


def test_the_tracker_never_offers_a_draining_process_to_the_fleet() -> None:
    tracker = Tracker()
    tracker.field("db", OK, "shared", lambda: ["db"], up_unless_failing)
    assert tracker.readiness(lambda: ["db"], lambda outcomes: "DRAINING") == [
        Change(None, "UP", "DRAINING", None)
    ]
    # A background run of a shared field goes on while the process drains.
    assert tracker.field("db", OK, "shared", lambda: ["db"], lambda outcomes: "DRAINING") == [
        Change("db", "ok", "ok", OK, fleet=True)
    ]


# -- once per fleet ------------------------------------------------------------------------

#: Two gunicorn processes of four workers stand in for two pods.
PODS, WORKERS = 2, 4
#: Seconds a result is shared for: each worker probes several times per period.
CACHE_TTL = events_app.CACHE_TTL
FLIPS = 3


@pytest.fixture
def fleet(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[list[ServerProcess], Path]]:
    state = tmp_path / "state"
    state.write_text("up")
    env = {
        "EVENTS_REDIS_URL": redis_server.url,
        "EVENTS_STATE_FILE": str(state),
        "EVENTS_LIST": "events",
    }
    with ExitStack() as stack:
        servers = [
            stack.enter_context(
                gunicorn(
                    "events_app:create_app()", tmp_path / f"pod{pod}.log", workers=WORKERS, env=env
                )
            )
            for pod in range(PODS)
        ]
        yield servers, state


def test_a_shared_field_announces_each_change_once_per_fleet(
    fleet: tuple[list[ServerProcess], Path], redis_server: RedisServer
) -> None:
    servers, state = fleet
    stop = threading.Event()

    def probe(index: int) -> None:
        while not stop.is_set():
            http_fetch(servers[index % PODS].port, URL)
            time.sleep(0.02)

    clients = [threading.Thread(target=probe, args=(i,)) for i in range(4 * PODS * WORKERS)]
    for client in clients:
        client.start()
    announced = redis.Redis(port=redis_server.port)
    try:
        for flip in range(FLIPS + 1):
            if flip:
                state.write_text("down" if flip % 2 else "up")
            # Announced by one worker, then several cache periods: every worker sees it.
            wait_for(lambda count=flip + 1: len(field_events(announced)) >= count, 30)
            time.sleep(4 * CACHE_TTL)
    finally:
        stop.set()
        for client in clients:
            client.join(30)
    time.sleep(1.0)

    assert field_events(announced) == [
        [None, "ok"],
        ["ok", "failing"],
        ["failing", "ok"],
        ["ok", "failing"],
    ]
    assert overall_events(announced) == [
        [None, "UP"],
        ["UP", "DOWN"],
        ["DOWN", "UP"],
        ["UP", "DOWN"],
    ]


def all_events(client: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(item) for item in client.lrange("events", 0, -1)]


def field_events(client: redis.Redis) -> list[list[str | None]]:
    return [[e["old"], e["new"]] for e in all_events(client) if e["key"] == "db"]


def overall_events(client: redis.Redis) -> list[list[str | None]]:
    return [[e["old"], e["new"]] for e in all_events(client) if e["key"] is None]
