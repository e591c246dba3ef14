"""A check that raises or returns ``Degraded``: "working, but not well".

Every way a check runs (a sync check in a worker thread, an async one, a sync function
returning an awaitable, a background check) on the WSGI portal path (Flask's test client) and
under StatusMiddleware in a real uvicorn process; and the overall status as a pure function of
the fields' states.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
from collections.abc import Awaitable, Iterator
from typing import Any

import pytest
from asgiref.wsgi import WsgiToAsgi
from flask import Flask
from helpers import Fetch, ServerProcess, client_fetch, http_fetch
from servers import uvicorn

from flask_status import Degraded, FlaskStatus
from flask_status.aggregate import Health, aggregate
from flask_status.asgi import StatusMiddleware
from flask_status.outcome import State
from flask_status.route import EXTENSION_KEY

URL = "/api/status"
HIDDEN_URL = "/hidden/status"
RETRIED_URL = "/retried/status"
SLOW = "replica lag 12s"

# -- the app: a degraded check of every kind ------------------------------------------------


def raises_sync() -> Any:
    raise Degraded(SLOW, value={"lag_s": 12})


def returns_sync() -> Any:
    return Degraded("2 of 3 nodes")


async def raises_async() -> Any:
    await asyncio.sleep(0.001)
    raise Degraded(SLOW, value=12)


async def returns_async() -> Any:
    await asyncio.sleep(0.001)
    return Degraded("cache cold", value="warming")


def returns_awaitable() -> Awaitable[Any]:
    """A plain function returning a coroutine that raises: awaited under the deadline."""
    return raises_async()


def degraded_background() -> Any:
    return Degraded("queue backlog", value=340)


def not_json() -> Any:
    return Degraded("odd", value=object())


def healthy() -> str:
    return "ok"


_refusals = itertools.count(1)


def refused() -> Any:
    raise ConnectionRefusedError(f"refused (run {next(_refusals)})")


#: Each field's entry in the answer.
EXPECTED = {
    "raises_sync": {"value": {"lag_s": 12}, "degraded": SLOW},
    "returns_sync": {"value": None, "degraded": "2 of 3 nodes"},
    "raises_async": {"value": 12, "degraded": SLOW},
    "returns_async": {"value": "warming", "degraded": "cache cold"},
    "returns_awaitable": {"value": 12, "degraded": SLOW},
    "background": {"value": 340, "degraded": "queue backlog"},
    # Held to a failure threshold of 3: a degraded run is no failure and shows at once.
    "damped": {"value": None, "degraded": "2 of 3 nodes"},
    "healthy": "ok",
}


def create_app() -> Flask:
    """Every field critical: degraded ones make the route DEGRADED, never DOWN."""
    app = Flask("degraded_app")
    app.add_url_rule("/hello", "hello", lambda: "hello")  # what the server's start waits for
    status = FlaskStatus(app, url=URL)
    status.add_field("raises_sync", raises_sync)
    status.add_field("returns_sync", returns_sync)
    status.add_field("raises_async", raises_async)
    status.add_field("returns_async", returns_async)
    status.add_field("returns_awaitable", returns_awaitable)
    status.add_field("background", degraded_background, interval=0.5, wait_first=True)
    status.add_field("damped", returns_sync, failure_threshold=3)
    status.add_field("healthy", healthy)
    hidden = FlaskStatus(app, url=HIDDEN_URL, expose_errors=False)
    hidden.add_field("raises_sync", raises_sync)
    hidden.add_field("not_json", not_json, critical=False)
    retried = FlaskStatus(app, url=RETRIED_URL, cache_ttl_failure=60)
    retried.add_field("payments", refused, critical=False)
    retried.add_field("healthy", healthy)
    return app


def create_asgi_app() -> StatusMiddleware:
    app = create_app()
    return StatusMiddleware(WsgiToAsgi(app), app)  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def uvicorn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("degraded") / "uvicorn.log"
    with uvicorn("test_degraded:create_asgi_app", log, "--factory") as server:
        yield server


@pytest.fixture(scope="module")
def wsgi_app() -> Iterator[Flask]:
    app = create_app()
    yield app
    for route in app.extensions[EXTENSION_KEY]:
        route.background.stop()


@pytest.fixture(params=["wsgi", "uvicorn"])
def fetch(request: pytest.FixtureRequest) -> Fetch:
    """``fetch(path, headers=...)`` through the WSGI portal, or from a real uvicorn."""
    if request.param == "wsgi":
        client = request.getfixturevalue("wsgi_app").test_client()
        return lambda path, **options: client_fetch(client, path, **options)
    server: ServerProcess = request.getfixturevalue("uvicorn_server")
    return lambda path, **options: http_fetch(server.port, path, **options)


# -- every path -------------------------------------------------------------------------------


def test_every_kind_of_check_can_be_degraded_and_the_route_stays_up(fetch: Fetch) -> None:
    answer = fetch(URL)
    assert answer.status == 200
    body = answer.json()
    assert set(body.pop("cached")) == {"background"}  # read from its latest run
    assert body == {"status": "DEGRADED", **EXPECTED}


def test_verbose_says_degraded_with_the_reason_and_history(fetch: Fetch) -> None:
    fetch(URL)  # at least one run of every field is in the history
    answer = fetch(f"{URL}?verbose")
    assert answer.status == 200
    checks = answer.json()["checks"]
    assert checks["healthy"]["status"] == "ok" and "degraded" not in checks["healthy"]
    for key, entry in EXPECTED.items():
        if key == "healthy":
            continue
        check = checks[key]
        assert (check["status"], check["value"], check["degraded"]) == (
            "degraded",
            entry["value"],  # type: ignore[index]
            entry["degraded"],  # type: ignore[index]
        )
        assert "error" not in check
        last = check["history"][-1]
        assert (last["status"], last["degraded"]) == ("degraded", entry["degraded"])  # type: ignore[index]


def test_health_json_warns_for_a_degraded_check(fetch: Fetch) -> None:
    answer = fetch(URL, headers={"Accept": "application/health+json"})
    assert answer.status == 200
    document = answer.json()
    assert document["status"] == "warn"
    assert document["output"].startswith("degraded: ")
    assert set(document["output"].removeprefix("degraded: ").split(", ")) == set(EXPECTED) - {
        "healthy"
    }
    raised = document["checks"]["raises_async"][0]
    assert (raised["status"], raised["output"], raised["observedValue"]) == ("warn", SLOW, 12)
    assert document["checks"]["healthy"][0]["status"] == "pass"


def test_the_page_shows_each_degraded_check_with_its_reason(fetch: Fetch) -> None:
    answer = fetch(f"{URL}?format=html")
    assert answer.status == 200
    page = answer.body.decode()
    assert '<span id="status">DEGRADED</span>' in page
    rows = {
        key: state for state, key in re.findall(r'<tr class="check (\w+)" data-check="(\w+)"', page)
    }
    assert rows == {key: "ok" if key == "healthy" else "degraded" for key in EXPECTED}
    assert '<span class="badge warn">degraded</span>' in page
    assert f'<div class="reason">{SLOW}</div>' in page
    assert "Degraded: " in page and "1 of 8 checks pass." in page


def test_the_reason_is_hidden_like_errors_and_a_value_is_checked_for_json(fetch: Fetch) -> None:
    answer = fetch(HIDDEN_URL)
    assert answer.status == 200
    assert answer.json() == {
        "status": "DEGRADED",
        "raises_sync": {"value": {"lag_s": 12}, "degraded": "check degraded"},
        "not_json": {"error": "check failed"},
    }
    verbose = fetch(f"{HIDDEN_URL}?verbose").json()["checks"]["raises_sync"]
    assert verbose["degraded"] == "check degraded"
    assert {entry["degraded"] for entry in verbose["history"]} == {"check degraded"}
    assert SLOW not in fetch(f"{HIDDEN_URL}?format=html").body.decode()


def test_a_reason_that_is_not_a_str_fails_the_field_naming_the_mistake() -> None:
    app = Flask(__name__)
    FlaskStatus(app).add_field("lag", lambda: Degraded(12))  # type: ignore[arg-type]
    body = app.test_client().get(URL).get_json()
    assert body["status"] == "DOWN"
    assert body["lag"]["error"].startswith("TypeError: Degraded needs a reason (a non-empty str)")


# -- thresholds: a degraded run is no failure -------------------------------------------------


class Sequence:
    """A check producing ``results`` in turn: a value, an exception to raise, or a Degraded."""

    def __init__(self, *results: Any) -> None:
        self.results = list(results)
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            result = self.results.pop(0)
        if isinstance(result, BaseException) and not isinstance(result, Degraded):
            raise result
        return result


def test_a_degraded_run_neither_counts_toward_nor_breaks_a_failure_streak() -> None:
    app = Flask(__name__)
    lost = ConnectionError("lost")
    check = Sequence("ok", lost, Degraded("slow"), lost, lost, lost)
    FlaskStatus(app).add_field("db", check, failure_threshold=2)
    client = app.test_client()
    seen = [client.get(URL).get_json()["db"] for _ in range(6)]
    assert seen[0] == "ok"
    assert seen[1]["value"] == "ok" and "failing" in seen[1]  # one failure: held as ok
    assert seen[2] == {"value": None, "degraded": "slow"}  # shown at once
    assert seen[3]["value"] is None and seen[3]["failing"]["runs"] == 1  # a new streak
    assert seen[4] == {"error": "ConnectionError: lost"}  # two in a row: failing


def test_a_degraded_run_counts_toward_recovery() -> None:
    app = Flask(__name__)
    check = Sequence(ConnectionError("lost"), Degraded("slow"), Degraded("slow"))
    FlaskStatus(app).add_field("db", check, success_threshold=2)
    client = app.test_client()
    seen = [client.get(URL).get_json() for _ in range(3)]
    assert seen[1]["status"] == "DOWN" and seen[1]["db"]["recovering"]["runs"] == 1
    assert seen[2] == {"status": "DEGRADED", "db": {"value": None, "degraded": "slow"}}


# -- the overall status: a pure function of the fields' states --------------------------------

CRITICAL, OPTIONAL = True, False


@pytest.mark.parametrize(
    ("fields", "health"),
    [
        ([], Health.UP),
        ([(CRITICAL, "ok"), (OPTIONAL, "ok")], Health.UP),
        ([(CRITICAL, "degraded")], Health.DEGRADED),
        ([(OPTIONAL, "degraded")], Health.DEGRADED),
        ([(CRITICAL, "degraded"), (OPTIONAL, "failing")], Health.DEGRADED),
        ([(CRITICAL, "degraded"), (CRITICAL, "failing")], Health.DOWN),
        ([(OPTIONAL, "failing")], Health.DEGRADED),
        ([(CRITICAL, "failing")], Health.DOWN),
        # Skipped counts as failing for its own critical setting; so do starting and stale.
        ([(OPTIONAL, "skipped")], Health.DEGRADED),
        ([(CRITICAL, "skipped"), (OPTIONAL, "ok")], Health.DOWN),
        ([(OPTIONAL, "starting"), (OPTIONAL, "stale")], Health.DEGRADED),
        ([(CRITICAL, "starting")], Health.DOWN),
        ([(CRITICAL, "stale")], Health.DOWN),
    ],
)
def test_aggregate(fields: list[tuple[bool, State]], health: Health) -> None:
    assert aggregate(fields) is health
    assert aggregate(reversed(fields)) is health  # order does not matter


def test_a_degraded_value_changed_since_its_run_fails_without_its_reason() -> None:
    value: dict[str, Any] = {"lag_s": 12}
    app = Flask(__name__)
    FlaskStatus(app).add_field("lag", lambda: Degraded("slow", value=value), cache_ttl=60)
    client = app.test_client()
    assert client.get(URL).get_json()["lag"] == {"value": {"lag_s": 12}, "degraded": "slow"}
    value["since"] = object()  # the check goes on mutating what it returned
    entry = client.get(URL).get_json()["lag"]
    assert list(entry) == ["error"]
    assert entry["error"].startswith("returned a value that is not JSON-serializable")


def test_a_failure_is_reused_for_cache_ttl_failure_on_every_path(fetch: Fetch) -> None:
    answers = [fetch(RETRIED_URL).json() for _ in range(3)]
    errors = {answer["payments"]["error"] for answer in answers}
    assert len(errors) == 1, errors  # one run's failure, reused
    assert all(answer["healthy"] == "ok" for answer in answers)
    assert all(list(answer.get("cached", {})) == ["payments"] for answer in answers[1:])
