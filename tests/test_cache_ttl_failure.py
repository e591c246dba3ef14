"""``cache_ttl_failure``: a failed result is reused for its own TTL (per field, per route,
``STATUS_CACHE_TTL_FAILURE``); by default as long as a good one."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from clients import Gate, MakeClient
from flask import Flask

from flask_status import Degraded, FlaskStatus

pytest_plugins = ["reliability_fixtures"]

URL = "/api/status"


class Scripted:
    """A check that fails while ``failing`` is set, and counts its runs."""

    def __init__(self, failing: bool = True) -> None:
        self.failing = failing
        self.runs = 0
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            self.runs += 1
        if self.failing:
            raise ConnectionError("down")
        return "up"


def serve(make_client: MakeClient, check: Any, *, route: Any = None, **options: Any) -> Any:
    app = Flask(__name__)
    FlaskStatus(app, **(route or {})).add_field("db", check, **options)
    return make_client(app)


def test_a_failure_is_reused_for_cache_ttl_failure_and_a_success_not(
    make_client: MakeClient,
) -> None:
    check = Scripted()
    client = serve(make_client, check, cache_ttl_failure=60)
    for _ in range(3):
        assert client.get(URL).json()["db"] == {"error": "ConnectionError: down"}
    assert check.runs == 1  # one failed run, reused

    fresh = Scripted(failing=False)
    client = serve(make_client, fresh, cache_ttl_failure=60)
    for _ in range(3):
        assert client.get(URL).json()["db"] == "up"
    assert fresh.runs == 3  # cache_ttl is 0: every request runs it


def test_a_failure_is_retried_sooner_than_a_success_expires(make_client: MakeClient) -> None:
    check = Scripted()
    client = serve(make_client, check, cache_ttl=60, cache_ttl_failure=0)
    assert client.get(URL).json()["status"] == "DOWN"
    assert client.get(URL).json()["status"] == "DOWN"
    assert check.runs == 2  # a failure is not reused
    check.failing = False
    assert client.get(URL).json()["db"] == "up"
    check.failing = True
    assert client.get(URL).json()["db"] == "up"  # a success is, for cache_ttl
    assert check.runs == 3


def test_a_failure_expires_after_cache_ttl_failure(make_client: MakeClient) -> None:
    check = Scripted()
    client = serve(make_client, check, cache_ttl=60, cache_ttl_failure=0.2)
    assert client.get(URL).json()["status"] == "DOWN"
    check.failing = False
    assert client.get(URL).json()["status"] == "DOWN"  # still reused
    time.sleep(0.5)
    assert client.get(URL).json()["db"] == "up"
    assert check.runs == 2


def test_degraded_is_reused_as_a_success(make_client: MakeClient) -> None:
    runs = []

    def slow() -> Any:
        runs.append(1)
        return Degraded("slow")

    client = serve(make_client, slow, cache_ttl=60, cache_ttl_failure=0)
    for _ in range(3):
        assert client.get(URL).json()["db"] == {"value": None, "degraded": "slow"}
    assert len(runs) == 1


def test_a_hung_runs_timed_out_stands_whatever_cache_ttl_failure(
    make_client: MakeClient, gate: Gate
) -> None:
    runs = []

    def hung() -> str:
        runs.append(1)
        gate.wait()
        return "late"

    client = serve(make_client, hung, timeout=0.2, cache_ttl_failure=0)
    for _ in range(3):
        assert client.get(URL).json()["db"] == {"error": "timed out after 0.2s"}
    assert len(runs) == 1  # its thread is still busy: no second one


def test_the_route_and_config_give_the_default_and_a_field_overrides_it(
    make_client: MakeClient,
) -> None:
    by_route, by_field = Scripted(), Scripted()
    app = Flask(__name__)
    status = FlaskStatus(app, cache_ttl_failure=60)
    status.add_field("route", by_route)
    status.add_field("field", by_field, cache_ttl_failure=0)
    client = make_client(app)
    for _ in range(3):
        client.get(URL)
    assert (by_route.runs, by_field.runs) == (1, 3)

    configured = Scripted()
    app = Flask(__name__)
    app.config["STATUS_CACHE_TTL_FAILURE"] = 60
    FlaskStatus(app).add_field("db", configured)
    client = make_client(app)
    for _ in range(3):
        client.get(URL)
    assert configured.runs == 1


def test_by_default_a_failure_is_reused_as_long_as_a_success(make_client: MakeClient) -> None:
    check = Scripted()
    client = serve(make_client, check, route={"cache_ttl": 60})
    for _ in range(3):
        client.get(URL)
    assert check.runs == 1


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"cache_ttl_failure": -1}, ValueError, "cache_ttl_failure must be a number of seconds"),
        ({"cache_ttl_failure": True}, TypeError, "cache_ttl_failure must be a number of seconds"),
        ({"cache_ttl_failure": "5"}, TypeError, "cache_ttl_failure must be a number of seconds"),
        (
            {"cache_ttl_failure": 5, "interval": 10},
            ValueError,
            "cache_ttl_failure applies only to a check run on request",
        ),
    ],
)
def test_a_bad_cache_ttl_failure_is_refused_naming_it(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    status = FlaskStatus()
    with pytest.raises(error, match=message):
        status.add_field("db", lambda: "up", **options)


def test_a_bad_route_or_config_cache_ttl_failure_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"^cache_ttl_failure must be"):
        FlaskStatus(cache_ttl_failure=float("nan"))
    app = Flask(__name__)
    app.config["STATUS_CACHE_TTL_FAILURE"] = "soon"
    with pytest.raises(TypeError, match=r"^STATUS_CACHE_TTL_FAILURE must be"):
        FlaskStatus(app)


class Slow:
    """An async check taking 0.2 s, counting its runs; it fails while ``failing`` is set."""

    def __init__(self, failing: bool) -> None:
        self.failing = failing
        self.runs = 0

    async def __call__(self) -> str:
        self.runs += 1
        await asyncio.sleep(0.2)
        if self.failing:
            raise ConnectionError("down")
        return "up"


@pytest.mark.parametrize(("failing", "runs"), [(False, 2), (True, 1)])
def test_a_good_run_that_requests_joined_runs_ahead_and_a_failed_one_not(
    failing: bool, runs: int
) -> None:
    """Without a cache_ttl, a good result is not reused: probes that joined a run find the
    next one in flight (run-ahead), while a failure is reused for cache_ttl_failure."""
    app = Flask(__name__)
    check = Slow(failing)
    FlaskStatus(app, timeout=2).add_field("db", check, cache_ttl_failure=60)

    def probe() -> None:
        app.test_client().get(URL)

    first = threading.Thread(target=probe)
    first.start()
    time.sleep(0.05)  # the run is in flight: the second probe joins it
    second = threading.Thread(target=probe)
    second.start()
    first.join(5)
    second.join(5)
    time.sleep(0.5)  # a run ahead, if any, started and ended
    assert check.runs == runs
