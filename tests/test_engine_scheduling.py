"""How checks are scheduled: the capacity limiter, quick sync checks sharing a thread, deadlines."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.wsgi import WsgiToAsgi
from flask import Flask

from flask_status import FlaskStatus
from flask_status.asgi import StatusMiddleware

# Seconds each slow check takes: long enough to tell checks started together from checks run in
# turn, which would start SLOW apart. The tests below want every start within SLOW / 2 of the
# first (or of the request), and the request done in under 3 x SLOW, where 6 in turn take 6 x.
SLOW = 0.3


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown, so that no hung check outlives its test."""
    event = threading.Event()
    yield event
    event.set()


def slow_checks(status: FlaskStatus, count: int) -> dict[str, float]:
    """Add ``count`` sync checks taking :data:`SLOW` seconds; returns when each started."""
    started: dict[str, float] = {}

    def make(key: str) -> Any:
        def check() -> bool:
            started[key] = time.monotonic()
            time.sleep(SLOW)
            return True

        return check

    for index in range(count):
        status.add_field(f"slow{index}", make(f"slow{index}"))
    return started


def asgi_get(app: Any, path: str) -> tuple[int, dict[str, Any]]:
    """One GET through an ASGI app, on a fresh event loop."""
    return asyncio.run(asgi_call(app, path))


async def asgi_call(app: Any, path: str) -> tuple[int, dict[str, Any]]:
    """One GET through an ASGI app, on the running event loop: its status and JSON body."""
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 12345),
    }
    await app(scope, receive, send)
    return messages[0]["status"], json.loads(messages[1]["body"])


def test_slow_sync_checks_all_start_at_once_under_wsgi() -> None:
    app = Flask(__name__)
    started = slow_checks(FlaskStatus(app, timeout=5), 6)
    sent = time.monotonic()
    response = app.test_client().get("/api/status")
    elapsed = time.monotonic() - sent
    assert response.status_code == 200
    # One after another they would take 6 x 0.3 s; each started well before the first ended.
    assert elapsed < 3 * SLOW
    assert max(started.values()) - min(started.values()) < SLOW / 2


def test_slow_sync_checks_all_start_at_once_under_asgi() -> None:
    app = Flask(__name__)
    started = slow_checks(FlaskStatus(app, timeout=5), 6)
    sent = time.monotonic()
    status, body = asgi_get(StatusMiddleware(WsgiToAsgi(app), app), "/api/status")
    assert (status, body["status"]) == (200, "OK")
    assert time.monotonic() - sent < 3 * SLOW
    assert max(started.values()) - sent < SLOW / 2


def test_a_check_beside_a_hung_one_gets_a_thread_of_its_own_and_answers(
    release: threading.Event,
) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app, max_workers=2)
    status.add_field("hung", lambda: release.wait(10), timeout=0.2)
    status.add_field("after", lambda: True, timeout=5)
    client = app.test_client()
    for _ in range(2):  # the hung check's thread is still busy the second time
        response = client.get("/api/status")
        assert response.status_code == 503
        body = response.get_json()
        assert (body["hung"], body["after"]) == ({"error": "timed out after 0.2s"}, True)


def test_async_checks_are_cancelled_at_their_own_deadlines() -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    cancelled: dict[str, float] = {}

    def make(key: str) -> Any:
        async def check() -> bool:
            try:
                await asyncio.sleep(10)
            finally:
                cancelled[key] = time.monotonic()
            return True

        return check

    status.add_field("short", make("short"), timeout=0.1)
    status.add_field("long", make("long"), timeout=0.5)
    sent = time.monotonic()
    response = app.test_client().get("/api/status")
    assert response.status_code == 503
    assert response.get_json() == {
        "short": {"error": "timed out after 0.1s"},
        "long": {"error": "timed out after 0.5s"},
        "status": "DOWN",
    }
    deadline = time.monotonic() + 5
    while len(cancelled) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert 0.1 <= cancelled["short"] - sent < 0.3
    assert 0.5 <= cancelled["long"] - sent < 0.7


def test_a_cancellation_raised_by_the_check_itself_is_an_error_not_a_timeout() -> None:
    app = Flask(__name__)
    status = FlaskStatus(app, timeout=5)

    async def gives_up() -> bool:
        raise asyncio.CancelledError

    status.add_field("gives_up", gives_up, critical=False)
    sent = time.monotonic()
    response = app.test_client().get("/api/status")
    assert time.monotonic() - sent < 1
    assert response.get_json() == {"gives_up": {"error": "CancelledError"}, "status": "DEGRADED"}


def wait_until(condition: Any, seconds: float = 5) -> bool:
    """Poll ``condition()`` until it is true or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_at_most_max_workers_sync_checks_run_at_once_and_the_rest_in_turn() -> None:
    app = Flask(__name__)
    status = FlaskStatus(app, timeout=5, max_workers=2)
    lock = threading.Lock()
    running = {"now": 0, "most": 0}

    def make(key: str) -> Any:
        def check() -> str:
            with lock:
                running["now"] += 1
                running["most"] = max(running["most"], running["now"])
            time.sleep(0.1)
            with lock:
                running["now"] -= 1
            return key

        return check

    for index in range(5):
        status.add_field(f"c{index}", make(f"c{index}"))
    response = app.test_client().get("/api/status")
    assert response.status_code == 200
    assert response.get_json() == {f"c{i}": f"c{i}" for i in range(5)} | {"status": "OK"}
    assert running["most"] == 2


def test_quick_sync_checks_share_a_thread_and_a_slow_one_costs_only_its_batch(
    release: threading.Event,
) -> None:
    """Quick checks (their last run under a millisecond) share one worker thread hop.

    When one of them suddenly hangs, the others of its hop that had not run by the deadline
    time out with it on that request, and on the next one run apart from the hung run.
    """
    app = Flask(__name__)
    status = FlaskStatus(app, timeout=0.2)
    hang = threading.Event()
    threads: dict[str, set[int]] = {"a": set(), "b": set()}

    def make(key: str) -> Any:
        def check() -> bool:
            threads[key].add(threading.get_ident())
            if key == "a" and hang.is_set():
                release.wait(10)
            return True

        return check

    status.add_field("a", make("a"))
    status.add_field("b", make("b"))
    client = app.test_client()
    client.get("/api/status")  # first runs: each in its own hop, both found quick
    threads["a"].clear()
    threads["b"].clear()
    for _ in range(3):
        assert client.get("/api/status").status_code == 200
    # Each request ran both in one thread.
    assert len(threads["a"] | threads["b"]) <= 3
    hang.set()
    assert client.get("/api/status").status_code == 503
    answer = client.get("/api/status")  # "a" is still hung: "b" runs on its own
    assert answer.get_json()["b"] is True


class AsyncCounted:
    """An async check taking ``seconds``, counting its runs."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.runs = 0

    async def __call__(self) -> int:
        self.runs += 1
        await asyncio.sleep(self.seconds)
        return self.runs


def test_joined_runs_are_followed_at_once_by_the_next_one_and_only_while_joined() -> None:
    """Concurrent probes find the next run already in flight when their shared run ends;
    once they stop, at most one more run starts; lone probes start one run each."""
    app = Flask(__name__)
    check = AsyncCounted(0.05)
    FlaskStatus(app, timeout=2).add_field("slow", check)
    stop_at = time.monotonic() + 1.0
    answers: list[int] = []

    def probe() -> None:
        client = app.test_client()
        while time.monotonic() < stop_at:
            response = client.get("/api/status")
            answers.append(response.status_code)

    probes = [threading.Thread(target=probe) for _ in range(8)]
    for thread in probes:
        thread.start()
    for thread in probes:
        thread.join(10)
    assert set(answers) == {200}
    time.sleep(0.2)
    runs_after_load = check.runs
    time.sleep(0.3)
    assert check.runs == runs_after_load  # nothing runs ahead of nobody
    assert check.runs < len(answers)  # still single-flight: probes shared runs

    client = app.test_client()
    for expected in range(runs_after_load + 1, runs_after_load + 4):
        assert client.get("/api/status").get_json()["slow"] == expected  # one run per probe
    time.sleep(0.2)
    assert check.runs == runs_after_load + 3


def test_the_next_run_starts_before_the_requests_that_joined_a_run_go_on() -> None:
    """Under a burst of probes the run they joined is followed at once by the next one (run
    ahead). It starts before they go on with their answers: started after them, it would wait
    for all of their answers, and every wave of probes would wait that much longer."""
    app = Flask(__name__)
    order: list[str] = []
    in_flight: list[asyncio.Event] = []

    async def slow() -> bool:
        order.append("run starts")
        in_flight[0].set()
        await asyncio.sleep(0.05)
        return True

    FlaskStatus(app, timeout=2).add_field("slow", slow)
    # Not draining at its shutdown: the process's readiness routes are other tests' too.
    asgi_app = StatusMiddleware(WsgiToAsgi(app), app, drain_on_shutdown=False)

    async def probe(name: str) -> None:
        assert (await asgi_call(asgi_app, "/api/status"))[0] == 200
        order.append(f"{name} answered")

    async def main() -> None:
        in_flight.append(asyncio.Event())
        shutdown = asyncio.Event()
        started = asyncio.Event()
        startup = [{"type": "lifespan.startup"}]

        async def lifespan_receive() -> dict[str, Any]:
            if startup:
                return startup.pop()
            await shutdown.wait()
            return {"type": "lifespan.shutdown"}

        async def lifespan_send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                started.set()

        lifespan = asyncio.ensure_future(
            asgi_app(
                {"type": "lifespan", "asgi": {"version": "3.0"}}, lifespan_receive, lifespan_send
            )
        )
        await started.wait()
        first = asyncio.ensure_future(probe("the request that started it"))
        await in_flight[0].wait()
        await probe("a request that joined it")
        await first
        shutdown.set()
        await lifespan

    asyncio.run(main())
    assert order.index("run starts", 1) < order.index("a request that joined it answered")
