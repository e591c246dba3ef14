"""No check can break a field, an app or a server for good: each fault found in 2.0.0, and
what is expected instead."""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal
from typing import Any

import pytest
from clients import MakeClient, WsgiClient
from flask import Flask
from flask.json.provider import DefaultJSONProvider

from flask_status import FlaskStatus
from flask_status.outcome import describe

pytest_plugins = ["reliability_fixtures"]

URL = "/api/status"


class Counted:
    """A sync check that counts its runs and raises what ``make_error()`` returns."""

    def __init__(self, make_error: Any) -> None:
        self.runs = 0
        self.make_error = make_error

    def __call__(self) -> str:
        self.runs += 1
        raise self.make_error()


class UnprintableGeneratorExit(Exception):
    def __str__(self) -> str:
        raise GeneratorExit("from __str__")


def test_an_error_that_cannot_be_described_fails_its_field_and_the_check_runs_again(
    make_client: MakeClient,
) -> None:
    app = Flask(__name__)
    check = Counted(UnprintableGeneratorExit)
    FlaskStatus(app, timeout=2).add_field("odd", check)
    client = make_client(app)

    for runs in (1, 2, 3):
        answer = client.get(URL)
        assert answer.status == 503
        assert answer.json()["odd"] == {
            "error": "UnprintableGeneratorExit: (its message could not be read)"
        }
        assert check.runs == runs  # run anew each time: never stuck as "timed out"


@pytest.mark.parametrize("raised", [RuntimeError, GeneratorExit])
def test_a_raising_log_filter_does_not_break_the_field(
    make_client: MakeClient, raised: type[BaseException]
) -> None:
    app = Flask(__name__)

    def broken_filter(record: logging.LogRecord) -> bool:
        raise raised("filter failed")

    check = Counted(lambda: ValueError("down"))
    FlaskStatus(app, timeout=2).add_field("db", check)
    client = make_client(app)
    app.logger.addFilter(broken_filter)  # the logger is the process's: removed below
    try:
        for runs in (1, 2):
            answer = client.get(URL)
            assert (answer.status, answer.json()["db"]) == (503, {"error": "ValueError: down"})
            assert check.runs == runs
    finally:
        app.logger.removeFilter(broken_filter)


def test_a_check_stopping_the_shared_loop_costs_only_its_own_answer() -> None:
    """Under WSGI every app of the process shares one event loop; a check that stops it
    fails its own request's fields, and the next request of any app gets a new loop."""
    rogue = Flask("rogue")
    rogue_status = FlaskStatus(rogue)
    rogue_status.add_field("version", "1.0")

    async def stop_the_loop() -> str:
        asyncio.get_running_loop().stop()
        await asyncio.sleep(0.05)
        return "stopped"

    rogue_status.add_field("rogue", stop_the_loop, critical=False)
    healthy = Flask("healthy")

    async def fine() -> str:
        await asyncio.sleep(0.001)
        return "fine"

    FlaskStatus(healthy).add_field("db", fine)

    for _ in range(3):
        answer = WsgiClient(rogue).get(URL)
        assert answer.status == 200
        body = answer.json()
        assert body["status"] == "DEGRADED"
        assert body["version"] == "1.0"
        assert "event loop stopped" in body["rogue"]["error"]
        for _ in range(3):
            answer = WsgiClient(healthy).get(URL)
            assert (answer.status, answer.json()) == (200, {"db": "fine", "status": "OK"})


class BadDecimal(Decimal):
    def __str__(self) -> str:
        raise RuntimeError("no digits today")


class BadHtml:
    def __html__(self) -> str:
        raise LookupError("no markup today")


class BadItems(dict[str, Any]):
    def items(self) -> Any:
        raise KeyError("no items today")


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (BadDecimal("1.5"), "RuntimeError: no digits today"),
        (BadHtml(), "LookupError: no markup today"),
        (BadItems(a=1), "KeyError: 'no items today'"),
    ],
    ids=["decimal with raising __str__", "raising __html__", "dict whose items() raises"],
)
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_any_error_while_encoding_a_value_is_that_fields_error(
    make_client: MakeClient, value: Any, error: str, asynchronous: bool
) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app, timeout=2)

    async def async_check() -> Any:
        return value

    status.add_field("odd", async_check if asynchronous else (lambda: value), critical=False)
    status.add_field("ok", lambda: "fine")

    answer = make_client(app).get(URL)

    assert answer.status == 200
    assert answer.json() == {
        "odd": {"error": f"returned a value that is not JSON-serializable: {error}"},
        "ok": "fine",
        "status": "DEGRADED",
    }


class CountingProvider(DefaultJSONProvider):
    """Counts how often a value at least a megabyte long is encoded."""

    large_encodings = 0

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if isinstance(obj, str) and len(obj) >= 1 << 20:
            CountingProvider.large_encodings += 1
        return super().dumps(obj, **kwargs)


def test_a_large_cached_value_is_checked_once_per_run_not_per_probe(
    make_client: MakeClient,
) -> None:
    app = Flask(__name__)
    app.json_provider_class = CountingProvider
    app.json = CountingProvider(app)
    CountingProvider.large_encodings = 0
    FlaskStatus(app, timeout=5).add_field("report", lambda: "x" * (10 << 20), cache_ttl=600)
    client = make_client(app)

    for _ in range(8):
        answer = client.get(URL)
        assert answer.status == 503
        assert answer.json()["report"]["error"].startswith("returned a value too large")

    assert CountingProvider.large_encodings == 1


def test_a_huge_error_message_is_cut_before_it_is_collapsed() -> None:
    message = "word " * 20_000_000  # 100 MB of words: collapsing it whole takes seconds
    started = time.monotonic()
    text = describe(ValueError(message))
    assert time.monotonic() - started < 0.5
    assert text.startswith("ValueError: word word")
    assert len(text) == 200


# -- logs: one line per change of state, not per probe --------------------------------------


def test_failures_are_logged_once_per_change_of_state(caplog: pytest.LogCaptureFixture) -> None:
    app = Flask(__name__)
    errors: list[Exception | None] = [
        ValueError("down: 1"),
        ValueError("down: 2"),  # another message, the same state
        None,
        None,
        TimeoutError("down again"),
    ]

    def flaky() -> str:
        error = errors.pop(0)
        if error is not None:
            raise error
        return "up"

    FlaskStatus(app, timeout=2).add_field("db", flaky)
    client = app.test_client()

    with caplog.at_level(logging.DEBUG, logger=app.logger.name):
        for _ in range(5):
            client.get(URL)

    logged = [
        (record.levelname, record.getMessage(), record.exc_info is not None)
        for record in caplog.records
        if record.name == app.logger.name
    ]
    assert logged == [
        ("ERROR", "status field 'db' failed: ValueError: down: 1", True),
        ("DEBUG", "status field 'db' still failing: ValueError: down: 2", False),
        ("INFO", "status field 'db' recovered", False),
        ("ERROR", "status field 'db' failed: TimeoutError: down again", True),
    ]
