"""Background checks (``interval``) and flap damping (``failure_threshold``,
``success_threshold``), under WSGI and StatusMiddleware."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest
from clients import MakeClient
from flask import Flask

from flask_status import FlaskStatus
from flask_status.route import EXTENSION_KEY

pytest_plugins = ["reliability_fixtures"]

URL = "/api/status"
INTERVAL = 0.2


class Counter:
    """A check returning how often it ran, its first run taking ``first_seconds``."""

    def __init__(self, first_seconds: float = 0.0) -> None:
        self.runs = 0
        self.first_seconds = first_seconds
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            self.runs += 1
            runs = self.runs
        if runs == 1:
            time.sleep(self.first_seconds)
        return runs


def wait_for(condition: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_a_background_field_is_starting_then_answers_without_running_per_probe(
    make_client: MakeClient,
) -> None:
    app = Flask(__name__)
    check = Counter(first_seconds=0.5)  # no result yet when the first answer goes out
    FlaskStatus(app).add_field("runs", check, interval=INTERVAL)
    client = make_client(app)

    first = client.get(URL)
    assert (first.status, first.json()) == (
        503,
        {"runs": {"error": "starting: no result yet"}, "status": "DOWN"},
    )
    wait_for(lambda: client.get(URL).status == 200)
    started = time.monotonic()
    probes = 0
    while time.monotonic() - started < 1.0:
        body = client.get(URL).json()
        assert body["status"] == "OK"
        assert set(body["cached"]) == {"runs"}  # measured before the probe, with when
        probes += 1
    # Runs follow the interval (about 5 in that second, plus the first), not the probes.
    assert probes > 20
    assert 3 <= check.runs <= 1.0 / INTERVAL + 3


def test_wait_first_makes_the_first_request_wait_for_a_result(make_client: MakeClient) -> None:
    app = Flask(__name__)
    FlaskStatus(app).add_field("runs", Counter(), interval=INTERVAL, wait_first=True)
    answer = make_client(app).get(URL)
    assert (answer.status, answer.json()["runs"]) == (200, 1)


def test_a_background_runner_that_stopped_reports_stale() -> None:
    app = Flask(__name__)
    status = FlaskStatus(app, timeout=0.1)
    status.add_field("runs", Counter(), interval=INTERVAL, wait_first=True)
    route = app.extensions[EXTENSION_KEY][0]
    field = status.fields["runs"]
    client = app.test_client()
    assert client.get(URL).status_code == 200
    route.background.stop()
    time.sleep(INTERVAL + 0.1 + 0.2)

    outcome = route.evaluator.background_result(field)

    assert outcome is not None and outcome.error is not None
    assert outcome.error.startswith("stale: the last result is")


def test_a_hung_background_check_holds_one_thread_and_reports_timed_out(
    make_client: MakeClient, gate: Any
) -> None:
    app = Flask(__name__)
    FlaskStatus(app, timeout=0.1).add_field("hung", gate.wait, interval=INTERVAL)
    client = make_client(app)
    before = threading.active_count()
    wait_for(lambda: client.get(URL).json()["hung"] != {"error": "starting: no result yet"})
    time.sleep(5 * INTERVAL)

    body = client.get(URL).json()

    assert body["hung"] == {"error": "timed out after 0.1s"}
    assert threading.active_count() - before <= 2  # the hung check's thread (and the loop's)


def test_a_request_waiting_for_the_thread_a_background_check_holds_gets_it_when_freed(
    make_client: MakeClient,
) -> None:
    """The route's worker limit is shared by its background checks (on the process's own
    loop) and its requests (under StatusMiddleware, on the server's): a request waiting for
    the only thread is woken when the background check gives it back, not at its deadline."""
    holding, release = threading.Event(), threading.Event()

    def background() -> str:
        holding.set()
        release.wait(10)
        return "done"

    app = Flask(__name__)
    status = FlaskStatus(app, max_workers=1)
    status.add_field("background", background, interval=60, timeout=10, critical=False)
    status.add_field("quick", lambda: "up", timeout=10)
    client = make_client(app)
    client.get(f"{URL}?exclude=quick")  # starts the background check: it takes the thread
    assert holding.wait(10)
    threading.Timer(0.3, release.set).start()

    started = time.monotonic()
    answer = client.get(f"{URL}?exclude=background")

    assert (answer.status, answer.json()) == (200, {"status": "OK", "quick": "up"})
    assert time.monotonic() - started < 5  # once the thread was free, not at the deadline


def flaky(results: list[Any]) -> Any:
    """A check answering ``results`` in turn: an exception is raised, anything else returned."""

    def check() -> Any:
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    return check


def test_failure_threshold_keeps_the_last_good_value_until_enough_runs_failed(
    make_client: MakeClient,
) -> None:
    app = Flask(__name__)
    down = ConnectionError("refused")
    check = flaky(["up", down, down, down, "up", "up"])
    FlaskStatus(app).add_field("db", check, failure_threshold=3, success_threshold=2)
    client = make_client(app)

    assert client.get(URL).json() == {"db": "up", "status": "OK"}
    for runs in (1, 2):
        answer = client.get(URL)
        body = answer.json()
        assert (answer.status, body["status"], body["db"]["value"]) == (200, "OK", "up")
        failing = body["db"]["failing"]
        assert (failing["runs"], failing["threshold"]) == (runs, 3)
        assert failing["error"] == "ConnectionError: refused"
        assert failing["since"].endswith("Z")
    assert client.get(URL).json() == {"db": {"error": "ConnectionError: refused"}, "status": "DOWN"}
    recovering = client.get(URL)
    assert recovering.status == 503
    assert recovering.json()["db"]["recovering"]["runs"] == 1
    assert client.get(URL).json() == {"db": "up", "status": "OK"}


def test_thresholds_count_runs_not_probes(make_client: MakeClient) -> None:
    app = Flask(__name__)
    down = ConnectionError("refused")
    results: list[Any] = ["up", down, down]
    FlaskStatus(app).add_field("db", flaky(results), failure_threshold=2, cache_ttl=60)
    client = make_client(app)

    for _ in range(5):  # one run, then the cache: the probes count no failures
        assert client.get(URL).json()["db"] == "up"
    assert results == [down, down]


def test_health_json_and_prometheus_follow_the_thresholds(make_client: MakeClient) -> None:
    app = Flask(__name__)
    check = flaky(["up", ConnectionError("refused")])
    FlaskStatus(app).add_field("db", check, failure_threshold=2)
    client = make_client(app)
    client.get(URL)

    answer = client.get(URL, headers={"Accept": "application/health+json"})

    check_entry = answer.json()["checks"]["db"][0]
    assert (answer.status, check_entry["status"]) == (200, "pass")
    assert check_entry["output"].startswith("failing since ")
    assert check_entry["output"].endswith("(1 of 2 runs): ConnectionError: refused")


CLEAN_EXIT = textwrap.dedent(
    """
    import time
    from flask import Flask
    from flask_status import FlaskStatus

    async def slow():
        import anyio
        await anyio.sleep(0.05)
        return "ok"

    app = Flask("exit")
    status = FlaskStatus(app, timeout=2)
    status.add_field("sync", lambda: time.sleep(0.05) or "ok", interval=0.1)
    status.add_field("async", slow, interval=0.1)
    client = app.test_client()
    for _ in range(5):
        client.get("/api/status")
        time.sleep(0.1)
    print("done")
    """
)


def test_the_interpreter_exits_promptly_and_quietly_with_background_checks() -> None:
    started = time.monotonic()
    finished = subprocess.run(
        [sys.executable, "-c", CLEAN_EXIT], capture_output=True, text=True, timeout=30
    )
    assert (finished.returncode, finished.stdout.strip()) == (0, "done"), finished.stderr
    assert finished.stderr == ""  # no "Task was destroyed but it is pending", no traceback
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"interval": 0}, ValueError),
        ({"interval": "1"}, TypeError),
        ({"wait_first": True}, ValueError),
        ({"failure_threshold": 0}, ValueError),
        ({"success_threshold": 1.5}, TypeError),
    ],
)
def test_bad_background_and_threshold_arguments_name_the_parameter(
    arguments: dict[str, Any], error: type[Exception]
) -> None:
    name = next(iter(arguments))
    with pytest.raises(error, match=name):
        FlaskStatus(Flask(__name__)).add_field("db", Counter(), **arguments)


def test_a_constant_cannot_run_in_the_background() -> None:
    with pytest.raises(TypeError, match="interval"):
        FlaskStatus(Flask(__name__)).add_field("version", "1.0", interval=1)
