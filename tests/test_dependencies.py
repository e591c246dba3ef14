"""Dependencies between checks (``add_field(..., depends_on=...)``): order, skips naming the
root cause, deadlines counted from the request's start, setup-time refusals, and how
dependencies meet single-flight, the cache, background fields, the one-field URL,
``?exclude=``, the store and thresholds.

Served through the Flask test client (the WSGI portal path), StatusMiddleware on a loop in this
process, and StatusMiddleware under a real uvicorn.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import dependencies_app
import pytest
from clients import Answer, MakeClient, in_threads, timed_get
from conftest import RedisServer
from flask import Flask
from helpers import Reply, client_fetch
from servers import uvicorn

from flask_status import Degraded, FlaskStatus
from flask_status.outcome import MAX_ERROR_CHARS
from flask_status.route import EXTENSION_KEY

pytest_plugins = ["reliability_fixtures"]

URL = "/api/status"


class Counted:
    """A sync check counting its runs; raises ``error`` when given one."""

    def __init__(self, value: Any = "up", error: BaseException | None = None) -> None:
        self.runs = 0
        self.value = value
        self.error = error
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            self.runs += 1
        time.sleep(0.01)
        if self.error is not None:
            raise self.error
        return self.value


def down() -> Counted:
    return Counted(error=ConnectionError("refused"))


# -- the same app, through every way it is served -------------------------------------------


@pytest.fixture(scope="module", params=["wsgi", "uvicorn"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """``GET path`` on ``dependencies_app``: through the test client, or a real uvicorn serving
    it under StatusMiddleware."""
    if request.param == "wsgi":
        client = dependencies_app.create_app().test_client()
        yield lambda path: client_fetch(client, path)
        return
    log = tmp_path_factory.mktemp("dependencies") / "uvicorn.log"
    with uvicorn("dependencies_app:create_asgi_app", log, "--factory") as server:
        yield server.fetch


def timed(served: Any, path: str) -> tuple[Reply, float]:
    started = time.monotonic()
    reply = served(path)
    return reply, time.monotonic() - started


def test_a_chain_runs_in_order_and_answers_in_about_the_sum_of_its_steps(served: Any) -> None:
    reply, seconds = timed(served, "/chain")

    body = reply.json()
    assert reply.status == 200, body
    a, b, c = body["a"], body["b"], body["c"]
    assert a["ended"] <= b["started"]
    assert b["ended"] <= c["started"]
    step = dependencies_app.STEP_SECONDS
    # Three steps one after the other, not all at once; and far from a timeout.
    assert 3 * step <= seconds < 3 * step + 0.5


def test_a_failing_parent_skips_its_dependents_naming_the_root_cause(served: Any) -> None:
    reply = served("/broken")

    # broker is not critical, but workers is: skipped counts as failing for its own setting.
    assert reply.status == 503
    assert reply.json() == {
        "status": "DOWN",
        "broker": {"error": "ConnectionError: connection refused"},
        "workers": {"error": "skipped: broker is failing"},
        "tasks": {"error": "skipped: broker is failing"},  # the root, not "workers"
        "queue": "up",
    }


def test_a_hung_parent_times_out_and_its_dependents_are_skipped_within_the_deadline(
    served: Any,
) -> None:
    reply, seconds = timed(served, "/hung")

    body = reply.json()
    assert reply.status == 503, body
    assert body["hung"] == {"error": f"timed out after {dependencies_app.HUNG_TIMEOUT:g}s"}
    assert body["waiter"] == {"error": "skipped: hung timed out"}
    # Its deadline falls at the same instant as its parent's: the cause is still named.
    assert body["same_deadline"] == {"error": "skipped: hung_sync timed out"}
    assert seconds < dependencies_app.DEPENDENT_TIMEOUT + 0.5


def test_a_dependents_deadline_counts_from_the_requests_start(served: Any) -> None:
    reply, seconds = timed(served, "/deadline")

    body = reply.json()
    timeout = dependencies_app.DEADLINE_TIMEOUT
    assert body["parent"]["ended"] - body["parent"]["started"] >= dependencies_app.PARENT_SECONDS
    # Counted from its own start it would have had time to finish: from the request's, not.
    assert body["child"] == {"error": f"timed out after {timeout:g}s"}
    assert seconds < timeout + 0.5


def test_a_key_that_is_no_field_fails_its_dependent_at_request_time(served: Any) -> None:
    reply = served("/missing")

    assert reply.json()["workers"] == {
        "error": "depends_on: no field 'brokr' (fields: workers, broker)"
    }


def test_one_field_url_evaluates_its_parents_but_shows_only_it(served: Any) -> None:
    reply, seconds = timed(served, "/chain/c")

    assert reply.status == 200
    assert set(reply.json()) == {"status", "c"}
    assert seconds >= 3 * dependencies_app.STEP_SECONDS  # c ran after a and b


# -- setup-time refusals --------------------------------------------------------------------


def test_refusals_name_the_keys() -> None:
    status = FlaskStatus(Flask(__name__), timeout=1)
    status.add_field("broker", Counted(), timeout=2)

    with pytest.raises(ValueError, match=r"'workers' \(timeout 1s\) depends on 'broker' "):
        status.add_field("workers", Counted(), depends_on="broker")
    with pytest.raises(ValueError, match="depends_on: field 'loop' depends on itself"):
        status.add_field("loop", Counted(), depends_on=["loop"])
    with pytest.raises(TypeError, match="depends_on must be a field key or a list"):
        status.add_field("workers", Counted(), depends_on=3)
    with pytest.raises(ValueError, match="depends_on names 'a/b', which no field can have"):
        status.add_field("workers", Counted(), depends_on="a/b")
    with pytest.raises(TypeError, match="depends_on needs a callable value; field 'version'"):
        status.add_field("version", "1.0", depends_on="broker")
    with pytest.raises(ValueError, match="background field 'beat' depends on 'broker'"):
        status.add_field("beat", Counted(), interval=5, depends_on="broker")
    assert list(status.fields) == ["broker"]  # nothing refused was added
    status.add_field("clock", Counted(), interval=5)
    status.add_field("beat", Counted(), interval=5, depends_on="clock")
    with pytest.raises(ValueError, match="background field 'beat' depends on 'clock'"):
        status.add_field("clock", Counted())  # replaced by a request-time field


def test_a_dependency_added_before_its_parent_is_checked_when_the_parent_comes() -> None:
    status = FlaskStatus(Flask(__name__))
    status.add_field("workers", Counted(), depends_on="broker", timeout=1)
    status.add_field("tasks", Counted(), depends_on="workers", timeout=1)

    with pytest.raises(ValueError, match="a cycle: 'workers' -> 'broker' -> 'tasks' -> 'workers'"):
        status.add_field("broker", Counted(), depends_on="tasks")
    with pytest.raises(
        ValueError, match=r"'workers' \(timeout 1s\) depends on 'broker' \(timeout 3s\)"
    ):
        status.add_field("broker", Counted(), timeout=3)
    status.add_field("broker", Counted(), timeout=1)
    # Adding a key again replaces its field: the replacement is checked like a new one.
    with pytest.raises(ValueError, match=r"depends on 'broker' \(timeout 2s\)"):
        status.add_field("broker", Counted(), timeout=2)


def test_an_apps_default_timeout_is_checked_when_the_route_is_registered() -> None:
    status = FlaskStatus()
    status.add_field("broker", Counted())  # the app's default timeout, once known
    status.add_field("workers", Counted(), depends_on="broker", timeout=1)
    app = Flask(__name__)
    app.config["STATUS_TIMEOUT"] = 2

    with pytest.raises(
        ValueError, match=r"'workers' \(timeout 1s\) depends on 'broker' \(timeout 2s\)"
    ):
        status.init_app(app)


def test_a_constant_parent_has_no_timeout_to_compare() -> None:
    app = Flask(__name__)
    status = FlaskStatus(app, timeout=1)
    status.add_field("region", "eu-west-1")
    status.add_field("workers", Counted(), depends_on="region", timeout=0.5)

    assert app.test_client().get(URL).get_json()["workers"] == "up"


def test_a_deep_chain_added_from_its_end_is_checked_for_a_cycle() -> None:
    status = FlaskStatus(Flask(__name__))
    depth = sys.getrecursionlimit() + 100
    for step in range(depth, 0, -1):  # each step's parent comes after it
        status.add_field(f"step{step}", Counted(), depends_on=f"step{step - 1}")
    status.add_field("step0", Counted())

    with pytest.raises(ValueError, match=r"depends_on: a cycle: 'step\d+' -> 'step\d+' -> "):
        status.add_field("step0", Counted(), depends_on=f"step{depth}")


def test_a_missing_key_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    app = Flask(__name__)
    FlaskStatus(app).add_field("workers", Counted(), depends_on="brokr")
    client = app.test_client()

    with caplog.at_level(logging.INFO, logger=app.logger.name):
        for _ in range(3):
            assert client.get(URL).get_json()["workers"] == {
                "error": "depends_on: no field 'brokr' (fields: workers)"
            }

    logged = [record for record in caplog.records if "brokr" in record.getMessage()]
    assert len(logged) == 1
    assert logged[0].levelno == logging.ERROR


def test_many_missing_keys_are_named_within_the_error_length() -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    status.add_field("workers", Counted(), depends_on=[f"queue{n}" for n in range(10_000)])

    error = app.test_client().get(URL).get_json()["workers"]["error"]
    assert error.startswith("depends_on: no field 'queue0', 'queue1', ")
    assert len(error) <= MAX_ERROR_CHARS


def test_a_parent_removed_from_the_fields_fails_its_dependent(make_client: MakeClient) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    status.add_field("broker", Counted())
    status.add_field("workers", Counted(), depends_on="broker")
    client = make_client(app)
    assert client.get(URL).json()["workers"] == "up"

    del status.fields["broker"]

    assert client.get(URL).json()["workers"] == {
        "error": "depends_on: no field 'broker' (fields: workers)"
    }


def test_a_parent_removed_while_its_dependent_waits_holds_no_request(
    make_client: MakeClient,
) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app, timeout=3)
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(3)
        return "up"

    status.add_field("slow", slow)
    status.add_field("other", Counted())
    status.add_field("workers", Counted(), depends_on=["slow", "other"])
    client = make_client(app)
    answers: list[Answer] = []

    def ask() -> None:
        answers.append(client.get(URL))

    first = threading.Thread(target=ask, daemon=True)
    first.start()
    assert started.wait(3)
    del status.fields["other"]  # while workers waits for slow, its first parent
    release.set()
    first.join(5)
    second = threading.Thread(target=ask, daemon=True)
    second.start()
    second.join(5)

    assert not first.is_alive() and not second.is_alive()
    # The first request chose its fields before: workers ran after both its parents.
    assert (answers[0].status, answers[0].json()["workers"]) == (200, "up")
    assert answers[1].json()["workers"] == {
        "error": "depends_on: no field 'other' (fields: slow, workers)"
    }


def test_a_parent_that_ignores_its_deadline_holds_no_dependent_past_it(
    make_client: MakeClient,
) -> None:
    """A check that outruns its cancellation holds the request that started it (its run is
    that request's); a request that only waits for it, or for a field that depends on it,
    answers by the deadline."""
    app = Flask(__name__)
    status = FlaskStatus(app, timeout=0.3)
    release = threading.Event()

    async def stubborn() -> str:
        with anyio.CancelScope(shield=True):  # deaf to its deadline until released
            while not release.is_set():
                await anyio.sleep(0.02)
        return "late"

    status.add_field("stubborn", stubborn, critical=False)
    status.add_field("workers", Counted(), depends_on="stubborn", critical=False)
    status.add_field("quick", Counted(), critical=False)
    status.add_field("tasks", stubborn, depends_on="quick", critical=False)
    client = make_client(app)
    answers: dict[str, Answer] = {}

    def ask(path: str) -> threading.Thread:
        asking = threading.Thread(
            target=lambda: answers.update({path: client.get(f"{URL}/{path}")}), daemon=True
        )
        asking.start()
        return asking

    try:
        hosts = [ask("stubborn"), ask("tasks")]  # each starts a run that outruns its deadline
        time.sleep(0.1)
        waiters = [ask("workers"), ask("tasks?again")]
        for waiter in waiters:
            waiter.join(3)
        assert not any(waiter.is_alive() for waiter in waiters)
        assert answers["workers"].json()["workers"] == {"error": "skipped: stubborn timed out"}
        assert answers["tasks?again"].json()["tasks"] == {"error": "timed out after 0.3s"}
    finally:
        release.set()
        for host in hosts:
            host.join(3)


# -- with the engine's other features, on both paths ------------------------------------------


def test_a_skipped_check_does_not_run_and_a_grandchild_names_the_root(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    broker, workers, tasks = down(), Counted(), Counted()
    status.add_field("broker", broker, critical=False)
    status.add_field("workers", workers, depends_on="broker", critical=False)
    status.add_field("tasks", tasks, depends_on=["workers"], critical=False)
    client = make_client(app)

    with caplog.at_level(logging.INFO, logger=app.logger.name):
        answer = client.get(URL)

    assert answer.status == 200  # all three are not critical: DEGRADED
    assert answer.json()["tasks"] == {"error": "skipped: broker is failing"}
    assert (broker.runs, workers.runs, tasks.runs) == (1, 0, 0)
    # The root cause is the error; a skip is news, not another failure.
    levels = {record.getMessage(): record.levelno for record in caplog.records}
    assert levels["status field 'workers' skipped: broker is failing"] == logging.INFO
    verbose = client.get(f"{URL}?verbose").json()["checks"]
    assert verbose["workers"]["error"] == "skipped: broker is failing"


def test_quick_sync_checks_run_after_their_parents_every_time(make_client: MakeClient) -> None:
    app = Flask(__name__)
    order: list[str] = []
    status = FlaskStatus(app)
    status.add_field("c", lambda: order.append("c") or "up", depends_on="b")
    status.add_field("b", lambda: order.append("b") or "up", depends_on="a")
    status.add_field("a", lambda: order.append("a") or "up")
    client = make_client(app)

    for _ in range(5):  # from the second request on, they are quick checks
        assert client.get(URL).status == 200
    assert order == ["a", "b", "c"] * 5


def test_a_dependent_holds_no_worker_thread_while_it_waits(make_client: MakeClient) -> None:
    app = Flask(__name__)
    # One worker thread: a dependent holding one while it waited would starve its parent.
    status = FlaskStatus(app, max_workers=1, timeout=2)
    runs = [Counted() for _ in range(3)]
    status.add_field("first", lambda: time.sleep(0.1) or runs[0]())
    status.add_field("second", runs[1], depends_on="first")
    status.add_field("third", runs[2], depends_on="second")
    client = make_client(app)

    timed = timed_get(client, URL)

    assert timed.answer.json() == {"status": "OK", "first": "up", "second": "up", "third": "up"}
    assert timed.seconds < 1.5  # not the 2 s timeout
    assert [run.runs for run in runs] == [1, 1, 1]


def test_concurrent_requests_share_one_run_of_a_chain(make_client: MakeClient) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    broker, workers = Counted(), Counted()
    slow_broker = lambda: time.sleep(0.3) or broker()  # noqa: E731
    status.add_field("broker", slow_broker)
    status.add_field("workers", workers, depends_on="broker")
    client = make_client(app)
    answers: list[Any] = []

    in_threads(4, lambda _: answers.append(client.get(URL).json()))

    assert answers == [{"status": "OK", "broker": "up", "workers": "up"}] * 4
    assert (broker.runs, workers.runs) == (1, 1)


def test_a_cached_parent_counts_as_its_cached_result_and_a_skip_is_not_cached(
    make_client: MakeClient,
) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    results: list[Any] = [ConnectionError("refused"), "up"]

    def broker() -> Any:
        result = results.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result

    workers = Counted()
    status.add_field("broker", broker, cache_ttl=0.5)
    status.add_field("workers", workers, depends_on="broker", cache_ttl=60)
    client = make_client(app)

    for _ in range(3):  # the cached failure skips workers on each request
        assert client.get(URL).json()["workers"] == {"error": "skipped: broker is failing"}
    time.sleep(0.6)
    # broker ran again and recovered: workers runs now, its skip was not kept for 60 s.
    assert client.get(URL).json() == {"status": "OK", "broker": "up", "workers": "up"}
    assert workers.runs == 1


def test_a_parent_held_ok_by_its_failure_threshold_counts_as_ok(make_client: MakeClient) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    results: list[Any] = ["up", ConnectionError("refused"), ConnectionError("refused")]

    def broker() -> Any:
        result = results.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result

    workers = Counted()
    status.add_field("broker", broker, failure_threshold=2)
    status.add_field("workers", workers, depends_on="broker")
    client = make_client(app)

    assert client.get(URL).json()["workers"] == "up"
    assert client.get(URL).json()["workers"] == "up"  # broker failed once: still ok
    assert workers.runs == 2
    assert client.get(URL).json()["workers"] == {"error": "skipped: broker is failing"}
    assert workers.runs == 2


def test_a_skip_shows_at_once_whatever_the_dependents_own_threshold(
    make_client: MakeClient,
) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    broker = Counted()
    status.add_field("broker", broker)
    status.add_field("workers", Counted(), depends_on="broker", failure_threshold=3)
    client = make_client(app)
    assert client.get(URL).json()["workers"] == "up"

    broker.error = ConnectionError("refused")

    # Not held as "up" for two more runs: the skip is not one of workers' failures.
    assert client.get(URL).json()["workers"] == {"error": "skipped: broker is failing"}


def test_excluding_a_parent_hides_it_but_still_evaluates_it(make_client: MakeClient) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    broker, workers = down(), Counted()
    status.add_field("broker", broker, critical=False)
    status.add_field("workers", workers, depends_on="broker", critical=False)
    client = make_client(app)

    body = client.get(f"{URL}?exclude=broker").json()

    assert body == {"status": "DEGRADED", "workers": {"error": "skipped: broker is failing"}}
    assert broker.runs == 1


def test_one_field_url_shows_its_parents_under_verbose_without_counting_them(
    make_client: MakeClient,
) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    broker, workers = down(), Counted()
    status.add_field("broker", broker)  # critical
    status.add_field("workers", workers, depends_on="broker", critical=False)
    client = make_client(app)

    plain = client.get(f"{URL}/workers")
    verbose = client.get(f"{URL}/workers?verbose")

    assert plain.json() == {
        "status": "DEGRADED",
        "workers": {"error": "skipped: broker is failing"},
    }
    assert verbose.status == plain.status == 200  # the asked field's status, either way
    checks = verbose.json()["checks"]
    assert set(checks) == {"workers", "broker"}
    assert checks["broker"]["error"] == "ConnectionError: refused"
    assert broker.runs == 2


def test_a_request_time_field_reads_its_background_parents_latest_result(
    make_client: MakeClient,
) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    broker, workers = down(), Counted()
    status.add_field("broker", broker, interval=60, wait_first=True)
    status.add_field("workers", workers, depends_on="broker")
    client = make_client(app)

    try:
        for _ in range(3):
            answer = client.get(f"{URL}/workers")
            assert answer.json()["workers"] == {"error": "skipped: broker is failing"}
        assert (broker.runs, workers.runs) == (1, 0)  # one background run, read by each request
    finally:
        stop_background(app)


def test_a_background_chain_skips_in_the_background(make_client: MakeClient) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    broker, beat, ok = down(), Counted(), Counted()
    status.add_field("broker", broker, interval=0.2, timeout=0.5, critical=False)
    status.add_field("beat", beat, interval=0.2, depends_on="broker", wait_first=True)
    status.add_field("heartbeat", ok, interval=0.2, wait_first=True)
    status.add_field("pulse", ok, interval=0.2, depends_on="heartbeat", wait_first=True)
    client = make_client(app)

    try:
        body = client.get(URL).json()
        # Its first run waited for its parent's first result (not "has no result yet").
        assert body["beat"] == {"error": "skipped: broker is failing"}
        assert body["pulse"] == "up"
        time.sleep(0.5)
        assert client.get(URL).json()["beat"] == {"error": "skipped: broker is failing"}
        assert beat.runs == 0
    finally:
        stop_background(app)


def stop_background(app: Flask) -> None:
    for route in app.extensions[EXTENSION_KEY]:
        route.background.stop()


# -- the store ------------------------------------------------------------------------------


def test_a_parent_read_from_the_store_counts_as_its_result(redis_server: RedisServer) -> None:
    def process(broker: Counted, workers: Counted) -> Any:
        app = Flask("dependencies_fleet")
        status = FlaskStatus(app, store=redis_server.url, timeout=2)
        status.add_field("broker", broker, cache_ttl=30)
        status.add_field("workers", workers, depends_on="broker")
        return app.test_client()

    first_broker, second_broker, workers = down(), Counted(), Counted()
    first, second = process(first_broker, workers), process(second_broker, workers)

    assert first.get(URL).get_json()["workers"] == {"error": "skipped: broker is failing"}
    # The second process reads broker's failure from the store instead of running its own.
    body = second.get(URL).get_json()
    assert set(body.pop("cached")) == {"broker"}  # measured in the other process
    assert body == {
        "status": "DOWN",
        "broker": {"error": "ConnectionError: refused"},
        "workers": {"error": "skipped: broker is failing"},
    }
    assert (first_broker.runs, second_broker.runs, workers.runs) == (1, 0, 0)


def test_a_degraded_parent_counts_as_succeeded(make_client: MakeClient) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    workers = Counted()
    status.add_field("broker", lambda: Degraded("queue 900 deep", value=900))
    status.add_field("workers", workers, depends_on="broker")
    client = make_client(app)

    answer = client.get(URL)

    assert answer.status == 200
    body = answer.json()
    assert body["status"] == "DEGRADED"
    assert body["broker"] == {"value": 900, "degraded": "queue 900 deep"}
    assert (body["workers"], workers.runs) == ("up", 1)


def test_a_skipped_field_says_skipped_in_every_format(make_client: MakeClient) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    status.add_field("broker", down(), critical=False)
    status.add_field("workers", Counted(), depends_on="broker")  # critical: DOWN when skipped
    client = make_client(app)

    answer = client.get(URL)
    assert answer.status == 503
    assert answer.json()["workers"] == {"error": "skipped: broker is failing"}
    assert client.get(f"{URL}?verbose").json()["checks"]["workers"]["status"] == "skipped"
    health = client.get(URL, headers={"Accept": "application/health+json"}).json()
    assert health["status"] == "fail"
    assert health["checks"]["workers"][0]["status"] == "fail"
    page = client.get(f"{URL}?format=html").body.decode()
    assert '<tr class="check skipped" data-check="workers"' in page
