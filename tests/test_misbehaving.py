"""A misbehaving check costs only its own field: never a 500, never a stuck worker."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio.to_thread
import pytest
from clients import REQUEST_LIMIT, Answer, Gate, MakeClient, timed_get
from flask import Flask, Request, g

from flask_status import FlaskStatus

pytest_plugins = ["reliability_fixtures"]

URL = "/api/status"
HEALTH_JSON = {"Accept": "application/health+json"}
TIMEOUT = 0.5
MARGIN = 1.0  # generous: the machine is shared

#: Every app below has these fields next to the misbehaving one, and they must stay correct.
HEALTHY = {"sync_ok": "fine", "async_ok": "fine", "version": "2.0.0"}


def sync_ok() -> str:
    return "fine"


async def async_ok() -> str:
    await asyncio.sleep(0.001)
    return "fine"


def status_app(check: Callable[..., Any], *, timeout: float = TIMEOUT) -> Flask:
    """An app whose status has the critical field ``bad`` next to the :data:`HEALTHY` ones.

    Two workers only: a check that kills or blocks its worker thread starves the others soon.
    """
    app = Flask(__name__)
    status = FlaskStatus(app, timeout=timeout, max_workers=2)
    status.add_field("bad", check)
    status.add_field("sync_ok", sync_ok)
    status.add_field("async_ok", async_ok)
    status.add_field("version", HEALTHY["version"])
    return app


def in_async(make_value: Callable[[], Any]) -> Callable[[], Any]:
    """The same behaviour as an async check, after one real suspension point."""

    async def check() -> Any:
        await asyncio.sleep(0)
        return make_value()

    return check


class BrokenStr(Exception):
    """An exception that cannot be turned into text."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ failed")


def raise_(exc_type: type[BaseException], *args: Any) -> Callable[[], Any]:
    """A check raising a new ``exc_type(*args)`` on every call."""

    def check() -> Any:
        raise exc_type(*args)

    return check


def huge() -> str:
    return "x" * (64 * 1024 + 1)


def deep() -> list[Any]:
    value: list[Any] = []
    for _ in range(100_000):
        value = [value]
    return value


NOT_JSON = "returned a value that is not JSON-serializable: "
TOO_LARGE = r"returned a value too large to report \(65539 > 65536 bytes\)"

#: (check, its field's error as a regular expression); each as a sync and as an async check.
BEHAVIOURS = {
    "raises ValueError": (raise_(ValueError, "boom"), "ValueError: boom"),
    "raises without message": (raise_(LookupError), "LookupError"),
    "raises an exception whose str() fails": (raise_(BrokenStr), r"BrokenStr\b.*"),
    "raises CancelledError": (
        raise_(asyncio.CancelledError, "given up"),
        "CancelledError: given up",
    ),
    "raises GeneratorExit": (raise_(GeneratorExit, "closing"), "GeneratorExit: closing"),
    "returns over 64 KiB": (huge, TOO_LARGE),
    "returns a value nested 100000 deep": (deep, NOT_JSON + "RecursionError: .+"),
    "returns object()": (object, NOT_JSON + "TypeError: .+"),
    "returns NaN": (lambda: float("nan"), NOT_JSON + ".+"),
}

CASES = [
    pytest.param(check, error, id=f"sync {name}") for name, (check, error) in BEHAVIOURS.items()
] + [
    pytest.param(in_async(check), error, id=f"async {name}")
    for name, (check, error) in BEHAVIOURS.items()
]


@pytest.mark.parametrize(("check", "error"), CASES)
def test_misbehaving_check_costs_only_its_field(
    make_client: MakeClient, check: Callable[[], Any], error: str
) -> None:
    client = make_client(status_app(check))
    for _ in range(4):  # a killed or stuck worker would starve the later requests
        timed = timed_get(client, URL)
        assert timed.answer.status == 503
        body = timed.answer.json()
        assert {key: body[key] for key in HEALTHY} == HEALTHY
        assert body["status"] == "DOWN"
        assert re.fullmatch(error, body["bad"]["error"]), body["bad"]
        assert timed.seconds < TIMEOUT + MARGIN


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_field_recovers_after_an_exception_whose_str_fails(
    make_client: MakeClient, asynchronous: bool
) -> None:
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise BrokenStr()
        return "fine again"

    client = make_client(status_app(in_async(flaky) if asynchronous else flaky))
    client.get(URL)
    answer = client.get(URL)
    assert answer.json()["bad"] == "fine again"
    assert answer.status == 200


def test_unreportable_value_fails_its_field_in_every_format(make_client: MakeClient) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    status.add_field("opaque", object)
    status.add_field("huge", huge, critical=False)
    client = make_client(app)

    plain = client.get(URL)
    assert plain.status == 503
    assert plain.json()["status"] == "DOWN"

    health = client.get(URL, HEALTH_JSON)
    assert health.status == 503
    document = health.json()
    assert document["status"] == "fail"
    assert document["checks"]["opaque"][0]["status"] == "fail"
    assert document["checks"]["huge"][0]["status"] == "warn"
    assert document["checks"]["opaque"][0]["output"].startswith(NOT_JSON)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_long_multiline_error_becomes_one_capped_line(
    make_client: MakeClient, asynchronous: bool
) -> None:
    failing = raise_(ValueError, "first line\nsecond line\r\n\tthird " + "y" * 10_000)
    client = make_client(status_app(in_async(failing) if asynchronous else failing))

    error = client.get(URL).json()["bad"]["error"]
    output = client.get(URL, HEALTH_JSON).json()["checks"]["bad"][0]["output"]

    assert error == output
    assert error.startswith("ValueError: first line second line third yyy")
    assert len(error) == 200
    assert error.endswith("\u2026")
    assert not re.search(r"\s\s|[\r\n\t]", error)


def test_sync_function_returning_a_coroutine_reports_its_value(make_client: MakeClient) -> None:
    async def query(value: str) -> dict[str, str]:
        await asyncio.sleep(0.01)
        return {"result": value}

    async def failing_query() -> None:
        await asyncio.sleep(0.01)
        raise ConnectionError("lost")

    app = Flask(__name__)
    status = FlaskStatus(app)
    status.add_field("lazy", lambda: query("from a coroutine"))
    status.add_field("lazy_failing", lambda: failing_query(), critical=False)
    answer = make_client(app).get(URL)
    assert answer.status == 200
    assert answer.json() == {
        "lazy": {"result": "from a coroutine"},
        "lazy_failing": {"error": "ConnectionError: lost"},
        "status": "DEGRADED",
    }


def test_a_coroutine_that_leaves_a_context_pushed_costs_only_its_field(
    make_client: MakeClient,
) -> None:
    """A plain function's coroutine that pushes a context and never pops it: what it leaves
    in its context is its own, not the request's (whose contexts Flask then pops)."""
    app = Flask(__name__)

    async def leaky() -> str:
        app.test_request_context("/elsewhere").push()  # the mistake: never popped
        return "up"

    FlaskStatus(app).add_field("leaky", lambda: leaky())
    client = make_client(app)
    for _ in range(2):
        answer = client.get(URL)
        assert answer.status == 200
        assert answer.json() == {"leaky": "up", "status": "OK"}


def test_async_check_blocking_the_event_loop(make_client: MakeClient) -> None:
    blocking_seconds = 0.4

    async def blocking() -> str:
        time.sleep(blocking_seconds)  # the mistake: a blocking call in an async check
        return "late"

    client = make_client(status_app(blocking, timeout=0.1))

    timed = timed_get(client, URL)

    assert timed.answer.status == 503
    body = timed.answer.json()
    # The loop was held (the process's own under WSGI, the server's under ASGI): the answer
    # comes once the blocking call returns, and the error says why.
    assert body["bad"]["error"].startswith("timed out after 0.1s")
    overran = re.fullmatch(
        r"timed out after 0\.1s(?:, yet ran ([0-9.]+)s: it blocked the event loop or ignored "
        r"cancellation)?",
        body["bad"]["error"],
    )
    assert overran is not None, body["bad"]["error"]
    if overran[1] is not None:  # the time it ran, to two significant digits
        assert blocking_seconds <= float(overran[1]) < blocking_seconds + MARGIN
    # Every field of the evaluation comes back through the blocked loop: the others may have
    # missed their deadline too, but each reports in its own field and the constant stays.
    assert body["version"] == "2.0.0"
    assert body["sync_ok"] in ("fine", {"error": "timed out after 0.1s"})
    # The answer waits at most for the blocking call (under ASGI it holds the server's loop).
    assert timed.seconds < blocking_seconds + MARGIN
    print(f"blocked loop: answered in {timed.seconds:.3f}s with {body}")
    # Once the blocking call has returned, async checks run again.
    for _ in range(100):
        if client.get(f"{URL}?exclude=bad").json()["async_ok"] == "fine":
            break
        time.sleep(0.02)
    else:
        raise AssertionError("async checks never recovered from the blocked loop")


@pytest.mark.parametrize("fatal", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_interpreter_exit_raised_by_a_check_fails_only_its_field(
    make_client: MakeClient, fatal: type[BaseException], asynchronous: bool
) -> None:
    # Checks run in worker threads or on an event loop, never where a real Ctrl-C or a
    # server's shutdown arrives: such an exception there is the check's failure, not the
    # server's, and the server answers as for any other failing field.
    check = raise_(fatal, "from the check")
    client = make_client(status_app(in_async(check) if asynchronous else check))

    for _ in range(2):  # and the next request is served as well
        answer = client.get(URL)
        assert answer.status == 503
        body = answer.json()
        assert body["bad"] == {"error": f"{fatal.__name__}: from the check"}
        assert {key: body[key] for key in HEALTHY} == HEALTHY


@pytest.mark.parametrize("raised", [RuntimeError, SystemExit])
def test_a_broken_on_evaluated_listener_costs_nothing_but_its_log(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture, raised: type[BaseException]
) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    status.add_field("sync_ok", sync_ok)
    status.add_field("async_ok", async_ok)
    heard: list[list[str]] = []

    def broken(outcomes: Any) -> None:
        raise raised("metrics backend down")

    status.on_evaluated(broken)
    status.on_evaluated(lambda outcomes: heard.append(sorted(outcomes)))
    client = make_client(app)

    with caplog.at_level("ERROR", logger=app.logger.name):
        answers = [client.get(URL) for _ in range(2)]

    for answer in answers:
        assert answer.status == 200
        assert answer.json() == {"status": "OK", "sync_ok": "fine", "async_ok": "fine"}
    assert heard == [["async_ok", "sync_ok"]] * 2  # the next listener hears every evaluation
    assert any("status listener" in r.getMessage() and r.exc_info for r in caplog.records)


@pytest.mark.parametrize("raiser", ["is_authorized", "teardown"])
def test_interpreter_exit_raised_by_the_apps_code_in_a_thread_stops_no_other_check(
    make_client: MakeClient, gate: Gate, raiser: str
) -> None:
    """A sync ``is_authorized``, or an async check's teardown, runs in one of the process's
    worker threads (under StatusMiddleware too): ``SystemExit`` raised there is that request's
    failure, and must not stop the loop those threads belong to, failing what other requests
    run there meanwhile."""
    app = Flask(__name__)
    started = threading.Event()

    def gated() -> str:
        started.set()
        gate.wait()
        return "done"

    FlaskStatus(app, timeout=REQUEST_LIMIT).add_field("gated", gated)

    def crashes(req: Request) -> bool:
        raise SystemExit("from is_authorized")

    async def marks() -> str:
        g.crash = True
        return "fine"

    def crash(error: BaseException | None) -> None:
        if g.get("crash"):
            raise SystemExit("from a teardown")

    if raiser == "teardown":
        app.teardown_appcontext(crash)
    authorizer = crashes if raiser == "is_authorized" else None
    FlaskStatus(app, url="/other", is_authorized=authorizer).add_field("marks", marks)
    client = make_client(app)
    answers: list[Answer] = []
    waiting = threading.Thread(target=lambda: answers.append(client.get(URL)))
    waiting.start()
    assert started.wait(REQUEST_LIMIT)

    crashed = client.get("/other")
    waiting.join(0.5)  # (a stopped loop would have failed the gated check by now)
    gate.release()
    waiting.join(REQUEST_LIMIT)

    if raiser == "is_authorized":  # no details for that caller
        assert (crashed.status, crashed.json()) == (200, {"status": "OK"})
    else:
        assert crashed.json()["marks"] == {"error": "SystemExit: from a teardown"}
    assert [answer.json() for answer in answers] == [{"status": "OK", "gated": "done"}]


def test_a_worker_thread_that_cannot_start_fails_only_the_sync_checks(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As when the process has run out of threads: the sync checks' fields say so, the
    async ones and the constant stand, and the request is answered."""

    async def no_thread(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("can't start new thread")

    client = make_client(status_app(sync_ok))
    monkeypatch.setattr(anyio.to_thread, "run_sync", no_thread)

    answer = client.get(URL)

    assert answer.status == 503
    body = answer.json()
    assert body["bad"] == body["sync_ok"] == {"error": "RuntimeError: can't start new thread"}
    assert (body["async_ok"], body["version"]) == ("fine", "2.0.0")
