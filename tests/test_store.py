"""Results shared across processes through a real redis-server.

Two Flask apps with the same name and URL stand in for two processes (gunicorn workers, pods):
each has its own evaluator, and they meet only in Redis. ``test_store_gunicorn.py`` runs the
same against real gunicorn processes.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import redis
from conftest import RedisServer
from flask import Flask, g

from flask_status import Degraded, FlaskStatus
from flask_status.route import EXTENSION_KEY
from flask_status.store import RedisStore

URL = "/api/status"


class Counted:
    """A sync check counting its runs (across the "processes" of one test)."""

    def __init__(self, seconds: float = 0.0, value: Any = "up") -> None:
        self.runs = 0
        self.seconds = seconds
        self.value = value
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            self.runs += 1
        time.sleep(self.seconds)
        return self.value


class FailsOnce(Counted):
    """A check that fails on its ``failing``-th run only."""

    def __init__(self, failing: int) -> None:
        super().__init__()
        self.failing = failing

    def __call__(self) -> Any:
        super().__call__()
        if self.runs == self.failing:
            raise ConnectionError("lost the connection")
        return self.value


def failing() -> Any:
    raise ConnectionError("down")


def probe(clients: list[Any], seconds: float) -> list[tuple[int, Any]]:
    """Each client's answers, in turn, for ``seconds``: (status code, body)."""
    answers = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        for client in clients:
            answer = client.get(URL)
            answers.append((answer.status_code, answer.get_json()))
        time.sleep(0.02)
    return answers


def history_times(client: Any) -> list[str]:
    """When each run in the field's ``?verbose`` history was measured."""
    return [
        entry["measured_at"]
        for entry in client.get(f"{URL}?verbose").get_json()["checks"]["db"]["history"]
    ]


#: The apps of the test running now, whose background checks stop when it ends.
_fleet: list[Flask] = []


@pytest.fixture(autouse=True)
def _stop_background_checks() -> Iterator[None]:
    """Every test's apps share the key namespace ``fleet``: a background check left running
    would write into the next test's store (a new redis-server may get the same port)."""
    yield
    for app in _fleet:
        for route in app.extensions[EXTENSION_KEY]:
            route.background.stop()
    _fleet.clear()


def process(store: Any, check: Any, **options: Any) -> Any:
    """An app as one process of the fleet would build it; its test client."""
    app = Flask("fleet")
    FlaskStatus(app, store=store, timeout=2).add_field("db", check, **options)
    _fleet.append(app)
    return app.test_client()


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=redis_server.port)
    yield client
    client.close()


def test_a_fresh_stored_result_serves_every_process(redis_server: RedisServer) -> None:
    check = Counted()
    fleet = [process(redis_server.url, check, cache_ttl=1) for _ in range(4)]

    started = time.monotonic()
    while time.monotonic() - started < 1.5:
        for client in fleet:
            answer = client.get(URL)
            assert (answer.status_code, answer.get_json()["db"]) == (200, "up")

    assert check.runs <= 2  # once per cache period across the four, not once per process


def test_others_wait_for_the_run_in_flight_instead_of_running_it(
    redis_server: RedisServer,
) -> None:
    slow, never = Counted(seconds=0.5, value="from the first"), Counted()
    first = process(redis_server.url, slow, cache_ttl=5)
    second = process(redis_server.url, never, cache_ttl=5)
    answers: list[Any] = []
    running = threading.Thread(target=lambda: answers.append(first.get(URL).get_json()))
    running.start()
    time.sleep(0.2)  # the first process holds the lease now

    waited = second.get(URL).get_json()
    running.join(10)

    assert waited["db"] == answers[0]["db"] == "from the first"
    assert (slow.runs, never.runs) == (1, 0)


def test_a_lease_left_by_a_dead_process_blocks_nobody_past_its_expiry(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    check = Counted()
    client = process(redis_server.url, check, cache_ttl=0.3, timeout=0.2)
    # Long enough to outlast a loaded machine's pause before the first request reads it.
    raw.set(LEASE, "dead", px=1500)
    lease_ends = time.monotonic() + 1.5

    answer = client.get(URL)  # waits for a result that never comes, up to its deadline
    assert (answer.status_code, answer.get_json()["db"]) == (503, {"error": "timed out after 0.2s"})
    time.sleep(max(0.0, lease_ends + 0.1 - time.monotonic()))  # past the lease and its "timed out"
    assert client.get(URL).get_json()["db"] == "up"  # the lease expired: this process ran it
    assert check.runs == 1


LEASE = "flask-status:fleet:/api/status:db:lease"


@pytest.mark.parametrize("raised", [ConnectionError, SystemExit])
def test_what_an_async_checks_teardown_raises_is_the_fleets_result_too(
    redis_server: RedisServer, raised: type[BaseException]
) -> None:
    """The run ends with its teardown's error, as with the check's own: stored, the lease let
    go, so the other processes take it instead of waiting for a lease that nobody releases."""
    runs: list[str] = []

    async def db() -> str:
        runs.append("db")
        g.connection = "open"
        return "up"

    def close(error: BaseException | None) -> None:
        if g.pop("connection", None):
            raise raised("could not close")

    fleet = [process(redis_server.url, db, cache_ttl=5) for _ in range(2)]
    for client in fleet:
        client.application.teardown_appcontext(close)

    answers = [client.get(URL).get_json()["db"] for client in fleet]

    assert answers == [{"error": f"{raised.__name__}: could not close"}] * 2
    assert runs == ["db"]


def test_a_waiter_runs_the_check_once_the_lease_expired_without_a_result(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    check = Counted()
    client = process(redis_server.url, check, cache_ttl=0.3, timeout=1.5)
    raw.set(LEASE, "dead", px=200)  # a process that died holding it

    started = time.monotonic()
    answer = client.get(URL)

    assert (answer.status_code, answer.get_json()["db"]) == (200, "up")
    assert time.monotonic() - started < 1.2  # not left waiting until the deadline
    assert check.runs == 1


def test_a_lease_that_never_expires_is_not_waited_for(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    check = Counted()
    client = process(redis_server.url, check, cache_ttl=0.3, timeout=0.5)
    raw.set(LEASE, "not ours")  # no expiry: no process of the fleet leaves such a lease

    answer = client.get(URL)

    assert (answer.status_code, answer.get_json()) == (200, {"db": "up", "status": "OK"})


def test_a_store_that_stalls_during_a_wait_costs_only_the_sharing(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    check = Counted()
    client = process(redis_server.url, check, cache_ttl=0.3, timeout=0.8)
    raw.set(LEASE, "another process", px=5000)
    stall = threading.Timer(0.15, lambda: raw.execute_command("DEBUG", "SLEEP", "1"))
    stall.start()
    try:
        answer = client.get(URL)  # waiting for the other process's result when Redis stalls
    finally:
        stall.join()

    body = answer.get_json()
    assert answer.status_code == 200, body
    assert (body["db"], body["status"]) == ("up", "DEGRADED")
    assert "store" in body  # why: the store did not answer in time


def test_stored_values_are_json_under_a_namespaced_key(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    store = RedisStore(redis_server.url, prefix="myapp")
    process(store, Counted(value={"latency_ms": 1.5}), cache_ttl=5).get(URL)

    stored = json.loads(raw.get("myapp:fleet:/api/status:db") or b"")

    assert stored["value"] == {"latency_ms": 1.5}
    assert stored["error"] is None
    # Only what is set is written: a plain result reads the same to an earlier version.
    assert set(stored) == {"value", "error", "duration", "measured_at"}


def test_a_stored_value_that_is_not_ours_is_ignored(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    check = Counted()
    raw.set("flask-status:fleet:/api/status:db", b"\x80\x04pickle?", px=5000)
    assert process(redis_server.url, check, cache_ttl=5).get(URL).get_json()["db"] == "up"
    assert check.runs == 1


def test_store_down_evaluates_locally_says_so_and_sharing_resumes(
    redis_server: RedisServer,
) -> None:
    check = Counted()
    fleet = [process(redis_server.url, check, cache_ttl=0.3) for _ in range(2)]
    assert fleet[0].get(URL).get_json() == {"db": "up", "status": "OK"}

    redis_server.stop()
    time.sleep(0.4)  # past the cache period: the next answers need a run
    for client in fleet:
        started = time.monotonic()
        answer = client.get(URL)
        assert time.monotonic() - started < 2  # within the field's deadline
        body = answer.get_json()
        assert (answer.status_code, body["db"], body["status"]) == (200, "up", "DEGRADED")
        assert body["store"]["error"].startswith("unavailable: ")

    redis_server.start()  # same port
    time.sleep(0.4)  # one cache period
    runs = check.runs
    for client in fleet:
        body = client.get(URL).get_json()
        assert (body["db"], body["status"], "store" in body) == ("up", "OK", False)
    assert check.runs == runs + 1  # shared again: one run for both


def test_background_checks_run_in_one_process_of_the_fleet(redis_server: RedisServer) -> None:
    check = Counted()
    fleet = [process(redis_server.url, check, interval=0.3, wait_first=True) for _ in range(3)]
    for client in fleet:
        assert client.get(URL).get_json()["db"] == "up"
    time.sleep(1.5)
    for client in fleet:
        assert client.get(URL).get_json()["db"] == "up"
    # Alone, each process would run it about 1.5 / 0.3 + 1 = 6 times: 18 for three.
    assert check.runs <= 9


def test_store_is_read_from_app_config_and_refuses_what_cannot_work(
    redis_server: RedisServer,
) -> None:
    app = Flask("configured")
    app.config["STATUS_STORE"] = redis_server.url
    status = FlaskStatus(app)
    with pytest.raises(ValueError, match='"store" is reserved'):
        status.add_field("store", 1)
    with pytest.raises(ValueError, match="store must be a redis"):
        FlaskStatus(Flask("bad"), store="http://127.0.0.1:6379")
    with pytest.raises(TypeError, match="store must be a RedisStore"):
        FlaskStatus(Flask("bad"), store=42)  # type: ignore[arg-type]


def test_a_bad_store_url_is_refused_without_its_password() -> None:
    with pytest.raises(ValueError, match="store must be a redis") as refused:
        FlaskStatus(Flask("bad"), store="http://admin:hunter2@127.0.0.1:6379")
    assert "hunter2" not in str(refused.value)


# -- background checks and the store ------------------------------------------------------


def test_a_background_check_with_a_store_keeps_its_interval_and_never_reads_stale(
    redis_server: RedisServer,
) -> None:
    check = Counted()
    client = process(redis_server.url, check, interval=0.5, timeout=0.25, wait_first=True)

    answers = probe([client], 3)

    assert [answer for answer in answers if answer[0] != 200 or answer[1]["db"] != "up"] == []
    # A run every 0.5 s: 7 in 3 s. Reading its own stored result back, it ran every 1 s.
    assert check.runs >= 5
    times = history_times(client)
    assert len(times) == len(set(times))  # each run recorded once


def test_a_run_read_back_from_the_store_is_not_counted_twice_for_thresholds(
    redis_server: RedisServer,
) -> None:
    check = FailsOnce(failing=3)
    client = process(
        redis_server.url, check, interval=0.3, timeout=0.25, wait_first=True, failure_threshold=2
    )

    answers = probe([client], 2)

    assert check.runs >= 4  # the failed run, and the runs after it
    assert {code for code, _ in answers} == {200}  # one failed run is below the threshold


def test_a_fleet_runs_a_background_check_once_per_interval_and_no_process_reads_stale(
    redis_server: RedisServer,
) -> None:
    check = Counted()
    fleet = [
        process(redis_server.url, check, interval=0.5, timeout=0.25, wait_first=True)
        for _ in range(2)
    ]

    answers = probe(fleet, 3)

    assert [answer for answer in answers if answer[0] != 200 or answer[1]["db"] != "up"] == []
    # Once per interval for the whole fleet: about 7 in 3 s (alone, each would run 7).
    assert 4 <= check.runs <= 10
    for client in fleet:
        times = history_times(client)
        assert len(times) == len(set(times))


def test_a_slow_store_leaves_a_background_check_healthy_and_says_so(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    # The check's timeout is the store's: a stalled store must not use it up.
    client = process(redis_server.url, Counted(), interval=0.3, timeout=0.5, wait_first=True)
    assert client.get(URL).get_json()["db"] == "up"

    def stall() -> None:
        for _ in range(4):
            raw.execute_command("DEBUG", "SLEEP", "0.8")
            time.sleep(0.2)

    stalling = threading.Thread(target=stall)
    stalling.start()
    answers = probe([client], 4)
    stalling.join(10)

    assert [answer for answer in answers if answer[0] != 200 or answer[1]["db"] != "up"] == []
    degraded = [body for _, body in answers if body["status"] == "DEGRADED"]
    assert degraded  # while the store stalled
    assert all(body["store"]["error"].startswith("unavailable: ") for body in degraded)


# -- what is read from the store ----------------------------------------------------------

ENTRY = {"value": "up", "error": None, "duration": 0.01}


@pytest.mark.parametrize(
    "entry",
    [
        json.dumps({**ENTRY, "measured_at": 1e300}),
        json.dumps({**ENTRY, "measured_at": math.nan}),  # Python writes NaN, JSON has none
        json.dumps({**ENTRY, "measured_at": -1e12}),
        json.dumps({**ENTRY, "duration": math.nan, "measured_at": "now"}),
        json.dumps({**ENTRY, "duration": -1.0, "measured_at": "now"}),
        json.dumps({**ENTRY, "measured_at": "a day ago"}),
        json.dumps({**ENTRY, "error": {"not": "text"}, "measured_at": "now"}),
        json.dumps({**ENTRY, "error_kind": ["skipped"], "measured_at": "now"}),
        json.dumps({**ENTRY, "error_kind": "skipped", "measured_at": "now"}),  # but no error
        json.dumps({**ENTRY, "error": "x", "degraded": "slow", "measured_at": "now"}),
        json.dumps({**ENTRY, "extra": 1, "measured_at": "now"}),
        "[" * 30000 + "]" * 30000,
    ],
    ids=["far-future", "nan", "far-past", "nan-duration", "negative-duration", "a-day-old",
         "error-not-text", "error-kind-not-text", "error-kind-without-error",
         "degraded-with-error", "unknown-key", "nested"],
)  # fmt: skip
def test_a_bad_stored_entry_is_ignored_logged_once_and_the_check_runs(
    redis_server: RedisServer,
    raw: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    entry: str,
) -> None:
    now = time.time()
    entry = entry.replace('"now"', str(now)).replace('"a day ago"', str(now - 86400))
    client = process(redis_server.url, failing, cache_ttl=0.1)
    forms = [
        ({}, f"{URL}?verbose"),
        ({"Accept": "application/health+json"}, URL),
        ({}, f"{URL}?format=html"),
        ({}, URL),
    ]
    with caplog.at_level(logging.DEBUG):
        for headers, url in forms:
            raw.set("flask-status:fleet:/api/status:db", entry)  # no TTL
            time.sleep(0.15)  # past this process's cache: the next answer reads the store
            answer = client.get(url, headers=headers)
            # The check ran (it fails), whatever the entry said.
            assert answer.status_code == 503, url
            assert b"ConnectionError: down" in answer.data
    ignored = [r.levelno for r in caplog.records if "ignored the entry" in r.getMessage()]
    assert len(ignored) >= len(forms)  # read each time
    assert ignored[0] == logging.WARNING  # and logged once
    assert set(ignored[1:]) == {logging.DEBUG}


def test_a_day_old_entry_does_not_stand_in_for_a_failing_background_check(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    stored = {"value": "ok", "error": None, "duration": 0.01, "measured_at": time.time() - 86400}
    raw.set("flask-status:fleet:/api/status:db", json.dumps(stored))  # no TTL
    client = process(redis_server.url, failing, interval=0.3, wait_first=True)

    answers = probe([client], 1)

    assert {code for code, _ in answers} == {503}
    assert all(body["db"] == {"error": "ConnectionError: down"} for _, body in answers)


@pytest.mark.parametrize("timeout", [-1, 0, math.nan, math.inf, "0.5"])
def test_redis_store_refuses_a_timeout_that_cannot_work(timeout: Any) -> None:
    with pytest.raises((TypeError, ValueError), match=r"^timeout must be a number of seconds"):
        RedisStore("redis://127.0.0.1:6379/0", timeout=timeout)


def test_each_event_loop_has_its_own_client_even_on_one_thread(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    raw.set("key", "stored")
    store = RedisStore(redis_server.url)
    # A redis.asyncio client belongs to the loop it connected on: the second loop of this
    # thread must not be handed the first one's.
    assert [anyio.run(store.get, "key") for _ in range(2)] == [b"stored"] * 2


def test_a_failure_is_shared_for_cache_ttl_failure_and_stored_as_long(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    # No cache_ttl: a good result is not reused, but a failure is, by every process.
    check = FailsOnce(failing=1)
    fleet = [process(redis_server.url, check, cache_ttl_failure=30) for _ in range(3)]
    for client in fleet:
        assert client.get(URL).get_json()["db"] == {"error": "ConnectionError: lost the connection"}
    assert check.runs == 1
    assert 20_000 < raw.pttl("flask-status:fleet:/api/status:db") <= 30_000

    raw.delete("flask-status:fleet:/api/status:db")  # the same key for the next fleet
    healthy = Counted()
    fleet = [process(redis_server.url, healthy, cache_ttl_failure=30) for _ in range(3)]
    for client in fleet * 2:
        assert client.get(URL).get_json()["db"] == "up"
        # Fresh for no time: not stored (only those waiting for the run get it), so that no
        # process reads it back, however late the store's own clock runs.
        assert raw.get("flask-status:fleet:/api/status:db") is None
    assert healthy.runs == 6  # each good result was measured for its request


def test_a_stored_result_is_kept_by_how_its_run_ended(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    key = "flask-status:fleet:/api/status:db"
    process(redis_server.url, failing, cache_ttl=30, cache_ttl_failure=2).get(URL)
    assert 0 < raw.pttl(key) <= 2_000
    raw.delete(key)

    def degraded() -> Any:
        return Degraded("replica lag", value=12)

    first, second = (
        process(redis_server.url, degraded, cache_ttl=30, cache_ttl_failure=2) for _ in range(2)
    )
    assert first.get(URL).get_json()["db"] == {"value": 12, "degraded": "replica lag"}
    assert raw.pttl(key) > 20_000  # degraded is no failure
    answer = second.get(f"{URL}?verbose").get_json()["checks"]["db"]
    assert (answer["status"], answer["degraded"], answer["cached"]) == (
        "degraded",
        "replica lag",
        True,
    )
