"""Single-flight, caching, hidden errors, authentication and recovery, under WSGI and ASGI."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from functools import wraps
from typing import Any

import pytest
from clients import (
    Answer,
    Client,
    Gate,
    MakeClient,
    Timed,
    WsgiClient,
    asgi_get,
    in_threads,
    middleware,
    timed_get,
)
from flask import Flask, abort, request
from otel_memory import forget_finished_spans
from servers import TcpService, ping

from flask_status import FlaskStatus

pytest_plugins = ["reliability_fixtures"]

URL = "/api/status"
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Counter:
    """Counts calls from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def tick(self) -> None:
        with self._lock:
            self.value += 1


def counted(counter: Counter, result: Any = True, seconds: float = 0.0) -> Callable[[], Any]:
    """A sync check that counts its runs, takes ``seconds`` and returns ``result``."""

    def check() -> Any:
        counter.tick()
        time.sleep(seconds)
        return result

    return check


def parse_rfc3339(text: str) -> float:
    assert RFC3339_UTC.match(text), text
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return moment.timestamp()


# -- single-flight ---------------------------------------------------------------------------


def test_hung_check_holds_one_thread_however_many_probes(
    make_client: MakeClient, gate: Gate
) -> None:
    app = Flask(__name__)
    FlaskStatus(app).add_field("hung", gate.wait, timeout=0.1)
    client = make_client(app)
    before = {thread.ident for thread in threading.enumerate()}
    baseline = threading.active_count()
    answers: list[Timed] = []
    started_by_product: set[int | None] = set()
    peak_growth = 0

    def probe(_: int) -> None:
        nonlocal peak_growth
        for _ in range(20):
            answers.append(timed_get(client, URL))
            alive = threading.enumerate()
            peak_growth = max(peak_growth, len(alive) - baseline)
            started_by_product.update(
                thread.ident
                for thread in alive
                if thread.ident not in before and not thread.name.startswith("client-")
            )

    in_threads(3, probe)

    assert len(answers) == 60
    for timed in answers:
        assert timed.answer.status == 503
        body = timed.answer.json()
        # A probe arriving during the hung run shares its outcome, marked as measured before.
        assert set(body.pop("cached", {"hung": None})) == {"hung"}
        assert body == {"hung": {"error": "timed out after 0.1s"}, "status": "DOWN"}
    slowest = max(timed.seconds for timed in answers)
    assert slowest < 0.5
    # The 3 client threads aside, the product may add at most 3 threads for 60 probes.
    assert len(started_by_product) <= 3
    assert peak_growth - 3 <= 3
    print(
        f"single-flight: 60 probes, slowest answer {slowest:.3f}s, threads started by the route "
        f"{len(started_by_product)}, peak active_count growth {peak_growth} (3 of them clients)"
    )


def test_probing_a_hung_check_does_not_accumulate_memory(
    make_client: MakeClient, gate: Gate
) -> None:
    app = Flask(__name__)
    FlaskStatus(app).add_field("hung", gate.wait, timeout=0.05)
    client = make_client(app)
    client.get(URL)  # from here on, every probe finds the same run in flight
    tracemalloc.start()
    try:
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(2000):
            assert client.get(URL).status == 503
        # Where test_telemetry ran first, its SDK's exporter keeps every run's span: its
        # memory, not the route's, and as much as there were runs (one each time the gate lets
        # the check go; more under load, where a run's thread may start after its deadline and
        # leave the next probe to start another).
        forget_finished_spans()
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert growth < 256 * 1024, f"{growth / 1024:.0f} KiB kept after 2000 probes"


def test_concurrent_requests_share_one_run_of_a_slow_check(make_client: MakeClient) -> None:
    runs = Counter()
    app = Flask(__name__)
    FlaskStatus(app).add_field("slow", counted(runs, "done", seconds=0.5), timeout=3)
    client = make_client(app)
    answers: list[Timed] = []
    in_threads(10, lambda _: answers.append(timed_get(client, URL)))
    time.sleep(0.7)

    # One run for the ten, and (where a loop hosts runs ahead: the portal's) at most one run
    # ahead after it, which nobody joined, so nothing more.
    assert runs.value in (1, 2)
    assert [timed.answer.json() for timed in answers] == [{"slow": "done", "status": "OK"}] * 10
    assert max(timed.seconds for timed in answers) < 2.5  # ten runs in a row would take 5 s


def test_a_check_outliving_the_loop_that_waited_for_it_leaves_the_route_working(
    gate: Gate,
) -> None:
    """An ASGI server's loop can end (shutdown, reload) while a sync check it waited for runs."""
    app = Flask(__name__)
    FlaskStatus(app, max_workers=1).add_field("db", lambda: gate.wait() and "ok", timeout=0.1)
    first = asyncio.run(asgi_get(middleware(app), URL))  # closes its loop when done
    assert first.json() == {"db": {"error": "timed out after 0.1s"}, "status": "DOWN"}
    gate.release()
    _, answer = probe_until(WsgiClient(app), 200)
    assert answer.json() == {"db": "ok", "status": "OK"}


# -- caching -------------------------------------------------------------------------------


def test_cache_serves_many_clients_with_at_most_two_runs(make_client: MakeClient) -> None:
    runs = Counter()
    app = Flask(__name__)
    FlaskStatus(app).add_field("db", counted(runs, {"rows": 3}, 0.05), cache_ttl=1)
    client = make_client(app)
    first_request = time.time()
    answers: list[Timed] = []

    def client_loop(_: int) -> None:
        for _ in range(10):
            answers.append(timed_get(client, URL))

    in_threads(50, client_loop)

    assert runs.value <= 2
    assert len(answers) == 500
    assert max(timed.seconds for timed in answers) < 1
    cached_at = set()
    for timed in answers:
        assert timed.answer.status == 200
        body = timed.answer.json()
        assert body["db"] == {"rows": 3}
        if "cached" in body:  # absent for requests that waited for the run in flight
            assert body["cached"].keys() == {"db"}
            cached_at.add(body["cached"]["db"]["measured_at"])
    assert 1 <= len(cached_at) <= runs.value
    for text in cached_at:
        assert first_request - 0.01 <= parse_rfc3339(text) <= time.time()


def test_cached_value_says_when_it_was_measured(make_client: MakeClient) -> None:
    runs = Counter()
    app = Flask(__name__)
    status = FlaskStatus(app)
    status.add_field("db", counted(runs, 42), cache_ttl=60)
    status.add_field("fresh", counted(runs, "live"))
    client = make_client(app)

    before = time.time()
    first = client.get(URL).json()
    after = time.time()
    second = client.get(URL).json()

    assert first == {"db": 42, "fresh": "live", "status": "OK"}  # measured for this request
    assert second["cached"].keys() == {"db"}
    measured_at = parse_rfc3339(second["cached"]["db"]["measured_at"])
    assert before - 0.001 <= measured_at <= after + 0.001
    assert runs.value == 3  # db once, fresh twice


def test_failures_are_cached_too(make_client: MakeClient) -> None:
    runs = Counter()

    def broken() -> None:
        runs.tick()
        raise ConnectionError("database unreachable")

    app = Flask(__name__)
    FlaskStatus(app).add_field("db", broken, cache_ttl=60)
    client = make_client(app)
    answers = [client.get(URL) for _ in range(5)]

    assert runs.value == 1
    for answer in answers:
        assert answer.status == 503
        assert answer.json()["db"] == {"error": "ConnectionError: database unreachable"}
    assert all("db" in answer.json()["cached"] for answer in answers[1:])


def test_cache_expires_after_its_ttl(make_client: MakeClient) -> None:
    runs = Counter()
    app = Flask(__name__)
    FlaskStatus(app).add_field("db", counted(runs), cache_ttl=0.3)
    client = make_client(app)
    client.get(URL)
    client.get(URL)
    assert runs.value == 1
    time.sleep(0.4)
    answer = client.get(URL)
    assert runs.value == 2
    assert "cached" not in answer.json()


@pytest.mark.parametrize("where", ["argument", "app.config"])
def test_instance_wide_cache_ttl_applies_to_every_field(
    make_client: MakeClient, where: str
) -> None:
    app = Flask(__name__)
    if where == "argument":
        status = FlaskStatus(app, cache_ttl=60)
    else:
        app.config["STATUS_CACHE_TTL"] = 60
        status = FlaskStatus(app)
    inherited, uncached = Counter(), Counter()
    status.add_field("inherited", counted(inherited))
    status.add_field("uncached", counted(uncached), cache_ttl=0)
    client = make_client(app)
    for _ in range(4):
        assert client.get(URL).status == 200
    assert (inherited.value, uncached.value) == (1, 4)


def test_caching_is_off_by_default(make_client: MakeClient) -> None:
    runs = Counter()
    app = Flask(__name__)
    FlaskStatus(app).add_field("db", counted(runs))
    client = make_client(app)
    for expected_runs in range(1, 6):
        assert client.get(URL).json() == {"db": True, "status": "OK"}
        assert runs.value == expected_runs


# -- hidden error details ------------------------------------------------------------------

SECRET = "password=hunter2 at db.internal:5432"


def leaky() -> None:
    raise ConnectionError(f"cannot connect:\n{SECRET}")


@pytest.mark.parametrize("where", ["argument", "app.config"])
def test_hidden_errors_keep_status_and_log_the_traceback(
    make_client: MakeClient, gate: Gate, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    app = Flask(__name__)
    if where == "argument":
        status = FlaskStatus(app, expose_errors=False)
    else:
        app.config["STATUS_EXPOSE_ERRORS"] = False
        status = FlaskStatus(app)
    status.add_field("db", leaky)
    status.add_field("mail", leaky, critical=False)
    status.add_field("search", gate.wait, timeout=0.1)
    status.add_field("version", "2.0.0")
    client = make_client(app)

    with caplog.at_level(logging.ERROR, logger=app.logger.name):
        down = client.get(URL)
        degraded = client.get(f"{URL}?exclude=db&exclude=search")

    assert down.status == 503
    assert down.json() == {
        "db": {"error": "check failed"},
        "mail": {"error": "check failed"},
        "search": {"error": "check failed"},
        "version": "2.0.0",
        "status": "DOWN",
    }
    assert degraded.status == 200
    assert degraded.json() == {
        "mail": {"error": "check failed"},
        "version": "2.0.0",
        "status": "DEGRADED",
    }
    assert b"hunter2" not in down.body + degraded.body
    logged = [record for record in caplog.records if record.exc_info]
    assert logged, "the failing checks were not logged with their exception"
    assert all(isinstance(record.exc_info[1], ConnectionError) for record in logged)  # type: ignore[index]
    assert "Traceback (most recent call last)" in caplog.text
    assert SECRET in caplog.text
    assert "in leaky" in caplog.text  # the frame of the failing check


def test_exposed_errors_are_the_default(make_client: MakeClient) -> None:
    app = Flask(__name__)
    FlaskStatus(app).add_field("db", leaky)
    answer = make_client(app).get(URL)
    assert answer.json()["db"] == {"error": f"ConnectionError: cannot connect: {SECRET}"}


# -- authentication ------------------------------------------------------------------------

TOKEN = "let-me-in"


def sync_authenticator(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if request.headers.get("X-Token") != TOKEN:
            abort(401)
        return view(*args, **kwargs)

    return wrapper


def async_authenticator(view: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(view)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if request.headers.get("X-Token") != TOKEN:
            abort(403)
        return await view(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize(
    ("authenticator", "denied"), [(sync_authenticator, 401), (async_authenticator, 403)]
)
def test_no_check_runs_for_a_rejected_request(
    make_client: MakeClient, authenticator: Callable[..., Any], denied: int
) -> None:
    sync_runs, async_runs = Counter(), Counter()

    async def async_check() -> bool:
        async_runs.tick()
        return True

    app = Flask(__name__)
    status = FlaskStatus(app, authenticator=authenticator)
    status.add_field("sync", counted(sync_runs))
    status.add_field("async", async_check)
    client = make_client(app)

    for attempt in range(100):
        url = f"{URL}/sync" if attempt % 2 else URL  # the field route is guarded too
        assert client.get(url, {"X-Token": "wrong"} if attempt % 3 else None).status == denied
    assert (sync_runs.value, async_runs.value) == (0, 0)

    accepted = client.get(URL, {"X-Token": TOKEN})
    assert accepted.json() == {"sync": True, "async": True, "status": "OK"}
    assert (sync_runs.value, async_runs.value) == (1, 1)


# -- recovery against a real TCP dependency ------------------------------------------------


@pytest.fixture
def dependency() -> Iterator[TcpService]:
    service = TcpService()
    service.start()
    yield service
    service.stop()


def probe_until(client: Client, expected: int, limit: float = 3.0) -> tuple[float, Answer]:
    """Probe every 20 ms until the answer has status ``expected``; returns how long it took."""
    started = time.monotonic()
    for _ in range(int(limit / 0.02)):
        answer = client.get(URL)
        assert answer.status in (200, 503), answer
        if answer.status == expected:
            return time.monotonic() - started, answer
        time.sleep(0.02)
    raise AssertionError(f"no {expected} answer within {limit}s, last: {answer.json()}")


def test_status_follows_a_dependency_that_goes_down_and_comes_back(
    make_client: MakeClient, dependency: TcpService
) -> None:
    app = Flask(__name__)
    FlaskStatus(app, timeout=0.5).add_field("dependency", lambda: ping(dependency.port))
    client = make_client(app)

    for _ in range(3):
        assert client.get(URL).json() == {"dependency": "PONG", "status": "OK"}
        dependency.stop()
        seconds, answer = probe_until(client, 503)
        assert seconds < 1
        assert answer.json()["dependency"]["error"].startswith("ConnectionRefusedError")
        for _ in range(5):  # stays down while the dependency is down
            assert client.get(URL).status == 503
        dependency.start()
        seconds, answer = probe_until(client, 200)
        assert seconds < 1
        assert answer.json() == {"dependency": "PONG", "status": "OK"}


def test_cached_status_flips_within_one_cache_period_under_load(
    make_client: MakeClient, dependency: TcpService
) -> None:
    ttl, margin = 0.5, 1.0
    app = Flask(__name__)
    FlaskStatus(app, timeout=0.5).add_field(
        "dependency", lambda: ping(dependency.port), cache_ttl=ttl
    )
    client = make_client(app)
    answers: list[Timed] = []
    done = threading.Event()

    def load(_: int) -> None:
        for _ in range(2000):  # bounded; ends long before when the timeline is over
            if done.is_set():
                return
            answers.append(timed_get(client, URL))
            time.sleep(0.005)

    def timeline(index: int) -> None:
        if index:
            load(index)
            return
        # The check runs every 0.5 s from the start: change the dependency between two runs.
        time.sleep(1.25)
        marks["stopped"] = time.monotonic()
        dependency.stop()
        time.sleep(2)
        marks["restarted"] = time.monotonic()
        dependency.start()
        time.sleep(2)
        done.set()

    marks: dict[str, float] = {}
    in_threads(9, timeline)  # thread 0 drives the dependency, 8 threads probe
    stopped, restarted = marks["stopped"], marks["restarted"]

    assert {timed.answer.status for timed in answers} <= {200, 503}
    assert all(timed.answer.status == 200 for timed in answers if timed.ended < stopped)
    first_down = min(t.ended for t in answers if t.answer.status == 503)
    first_up = min(t.ended for t in answers if t.started > restarted and t.answer.status == 200)
    assert stopped < first_down <= stopped + ttl + margin
    assert restarted < first_up <= restarted + ttl + margin
    for timed in answers:  # once flipped, no answer flips back
        if first_down < timed.started and timed.ended < restarted:
            assert timed.answer.status == 503, timed
        if first_up < timed.started:
            assert timed.answer.status == 200, timed
    print(
        f"fault test: {len(answers)} answers, DOWN {first_down - stopped:.3f}s after the stop, "
        f"OK {first_up - restarted:.3f}s after the restart (cache_ttl {ttl}s)"
    )


def test_requests_joining_a_run_that_ends_at_once_are_not_left_waiting(
    make_client: MakeClient,
) -> None:
    """A request joins a run, and the run ends before the request's waiting task starts: the
    answer must still come at once, not at the deadline."""
    app = Flask(__name__)

    async def quick() -> str:
        return "up"

    FlaskStatus(app, timeout=3).add_field("quick", quick)
    client = make_client(app)
    answers: list[Timed] = []
    in_threads(10, lambda _: answers.extend(timed_get(client, URL) for _ in range(20)))

    assert {timed.answer.status for timed in answers} == {200}
    assert max(timed.seconds for timed in answers) < 1.5  # the deadline is 3 s
