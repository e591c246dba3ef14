"""Which runs a request may share, and what its answer says about them: a run in flight on
another event loop is not waited for; a run joined in flight is fresh, never "cached"."""

from __future__ import annotations

import asyncio
import threading
import time

import anyio
from clients import (
    Answer,
    AsgiClient,
    Gate,
    LoopThread,
    WsgiClient,
    asgi_get,
    in_threads,
    timed_get,
)
from flask import Flask

from flask_status import FlaskStatus

URL = "/api/status"


def test_a_run_in_flight_on_another_loop_is_not_waited_for() -> None:
    """The WSGI path evaluates on the process's own loop, StatusMiddleware on the server's:
    a run of one cannot wake a request waiting on the other."""
    started = threading.Event()

    def slow() -> str:
        started.set()
        time.sleep(0.3)
        return "done"

    app = Flask(__name__)
    FlaskStatus(app).add_field("slow", slow, timeout=3)
    loop = LoopThread()
    try:
        asgi = AsgiClient(app, loop)
        wsgi_answer: list[int] = []
        thread = threading.Thread(
            target=lambda: wsgi_answer.append(WsgiClient(app).get(URL).status)
        )
        thread.start()
        assert started.wait(5)
        timed = timed_get(asgi, URL)
        thread.join(5)
    finally:
        loop.close()

    assert wsgi_answer == [200]
    assert timed.answer.json() == {"status": "OK", "slow": "done"}
    assert timed.seconds < 2  # not left waiting for an Event of another loop until the deadline


def test_a_request_joining_a_run_in_flight_gets_a_fresh_value() -> None:
    """Two quick checks share a thread: the first has returned while the second still runs.
    A request that joins them then has nothing cached, whatever the first's measured_at."""
    slow = threading.Event()

    def second() -> str:
        if slow.is_set():
            time.sleep(0.4)
        return "b"

    app = Flask(__name__)
    status = FlaskStatus(app)
    status.add_field("first", lambda: "a")
    status.add_field("second", second)
    client = WsgiClient(app)
    assert client.get(URL).json() == {"status": "OK", "first": "a", "second": "b"}  # quick now
    slow.set()

    answers: list[dict[str, object]] = []

    def probe(index: int) -> None:
        time.sleep(0.15 * index)  # the second request comes while the first's thread runs
        answers.append(client.get(URL).json())

    in_threads(2, probe)

    assert answers == [{"status": "OK", "first": "a", "second": "b"}] * 2


def test_a_finished_run_reused_through_the_cache_is_listed_as_cached() -> None:
    app = Flask(__name__)
    FlaskStatus(app, cache_ttl=60).add_field("dep", lambda: "up")
    client = WsgiClient(app)

    first = client.get(URL).json()
    second = client.get(URL).json()

    assert "cached" not in first
    assert set(second["cached"]) == {"dep"}


def test_requests_that_join_a_batch_get_what_a_check_returned_before_its_sibling_hung() -> None:
    """Quick sync checks share a thread: one returned at once, the next hangs, so both runs end
    at the deadline (an async check shares it). Each request that came meanwhile shows what
    the first returned, as the one that started the runs does, never "timed out" because it
    stopped waiting at the very deadline that ends them."""
    gate = Gate()
    hang = threading.Event()

    def second() -> str:
        if hang.is_set():
            gate.wait()
        return "b"

    async def third() -> str:
        await anyio.sleep(0.01)
        return "c"

    app = Flask(__name__)
    status = FlaskStatus(app, timeout=0.3)
    status.add_field("first", lambda: "a")
    status.add_field("second", second, critical=False)
    status.add_field("third", third)
    loop = LoopThread()
    try:
        client = AsgiClient(app, loop)
        assert client.get(URL).json() == {"status": "OK", "first": "a", "second": "b", "third": "c"}
        hang.set()

        async def burst() -> list[Answer]:  # together, on the server's loop
            return await asyncio.gather(*(asgi_get(client.asgi_app, URL) for _ in range(32)))

        answers = loop.run(burst())
    finally:
        gate.release()
        loop.close()

    assert [answer.json()["first"] for answer in answers] == ["a"] * 32


def test_a_check_whose_batch_gave_up_on_it_is_not_called_by_the_abandoned_thread() -> None:
    """Quick sync checks share a thread. When one hangs, the runs after it time out unstarted
    and later requests run those checks again: once the hung check returns, its thread must
    not call them too (a second call, its result thrown away, maybe at once with a new one)."""
    gate = Gate()
    hang = threading.Event()
    calls: list[str] = []

    def hangs() -> str:
        if hang.is_set():
            gate.wait()
        return "a"

    def after() -> str:
        calls.append("after")
        return "b"

    app = Flask(__name__)
    status = FlaskStatus(app, timeout=0.3)
    status.add_field("hangs", hangs, critical=False)
    status.add_field("after", after)
    client = WsgiClient(app)
    try:
        assert client.get(URL).json() == {"status": "OK", "hangs": "a", "after": "b"}  # quick
        hang.set()
        gave_up = client.get(URL).json()  # both time out: "after" never started
        again = client.get(URL).json()  # "hangs" still runs: "after" runs on its own
    finally:
        gate.release(settle=0.5)

    assert gave_up["after"] == {"error": "timed out after 0.3s"}
    assert again["after"] == "b"
    assert len(calls) == 2  # the first request's and the third's: one per run a request awaited


def test_a_check_its_batch_held_up_past_the_deadline_is_not_reused_as_timed_out() -> None:
    """It never ran: its "timed out" says nothing of its dependency, so a failure's cache
    period does not keep it; the next request runs it."""
    gate = Gate()
    hang = threading.Event()

    def hangs() -> str:
        if hang.is_set():
            gate.wait()
        return "a"

    app = Flask(__name__)
    # Failures are reused for a minute, good results not at all: both run on each request.
    status = FlaskStatus(app, timeout=0.3, cache_ttl=0, cache_ttl_failure=60)
    status.add_field("hangs", hangs, critical=False)
    status.add_field("after", lambda: "b")
    client = WsgiClient(app)
    try:
        assert client.get(URL).json() == {"status": "OK", "hangs": "a", "after": "b"}  # quick
        hang.set()
        gave_up = client.get(URL).json()  # both time out: "after" never started
        again = client.get(URL).json()
    finally:
        gate.release(settle=0.5)

    assert gave_up["after"] == {"error": "timed out after 0.3s"}
    assert again["after"] == "b"
    assert again["hangs"] == {"error": "timed out after 0.3s"}  # it did hang: that is reused
