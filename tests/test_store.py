"""Results shared across processes through a real redis-server.

Two Flask apps with the same name and URL stand in for two processes (gunicorn workers, pods):
each has its own evaluator, and they meet only in Redis. ``test_store_gunicorn.py`` runs the
same against real gunicorn processes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from conftest import RedisServer
from flask import Flask

from flask_status import FlaskStatus
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


def process(store: Any, check: Any, **options: Any) -> Any:
    """An app as one process of the fleet would build it; its test client."""
    app = Flask("fleet")
    FlaskStatus(app, store=store, timeout=2).add_field("db", check, **options)
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
    raw.set("flask-status:fleet:/api/status:db:lease", "dead", px=400)

    answer = client.get(URL)  # waits for a result that never comes, up to its deadline
    assert (answer.status_code, answer.get_json()["db"]) == (503, {"error": "timed out after 0.2s"})
    time.sleep(0.5)  # past the lease, and past this process's cached "timed out"
    assert client.get(URL).get_json()["db"] == "up"  # the lease expired: this process ran it
    assert check.runs == 1


def test_stored_values_are_json_under_a_namespaced_key(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    store = RedisStore(redis_server.url, prefix="myapp")
    process(store, Counted(value={"latency_ms": 1.5}), cache_ttl=5).get(URL)

    stored = json.loads(raw.get("myapp:fleet:/api/status:db") or b"")

    assert stored["value"] == {"latency_ms": 1.5}
    assert stored["error"] is None


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
