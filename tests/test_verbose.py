"""``?verbose``: per check its status, value or error, timing and cache flag, and history."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest
from clients import Answer, Gate, MakeClient, in_threads
from flask import Flask

from flask_status import Degraded, FlaskStatus
from flask_status.fields import make_field
from flask_status.history import ERROR_CHARS, History
from flask_status.outcome import Outcome

pytest_plugins = ["reliability_fixtures"]

URL = "/api/status"
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def header(answer: Answer, name: str) -> str | None:
    return next((v for k, v in answer.headers.items() if k.lower() == name.lower()), None)


def refused() -> None:
    raise ConnectionRefusedError("refused")


def slow() -> dict[str, int]:
    time.sleep(0.05)
    return {"rows": 3}


def test_verbose_shape(make_client: MakeClient) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app, message={"status": "OK", "service": "billing"})
    status.add_field("version", "2.0")
    status.add_field("database", slow)
    status.add_field("mail", refused, critical=False)

    answer = make_client(app).get(f"{URL}?verbose")

    assert answer.status == 200
    assert header(answer, "Content-Type") == "application/json"
    body = answer.json()
    assert set(body) == {"status", "service", "checks"}
    assert (body["status"], body["service"]) == ("DEGRADED", "billing")
    checks = body["checks"]
    assert list(checks) == ["database", "mail", "version"]  # sorted by Flask's JSON provider

    database = checks["database"]
    assert set(database) == {
        "status", "value", "critical", "duration_ms", "measured_at", "cached", "history"
    }  # fmt: skip
    assert database["status"] == "ok"
    assert database["value"] == {"rows": 3}
    assert database["critical"] is True
    assert database["cached"] is False
    assert 40 <= database["duration_ms"] < 5000
    assert RFC3339_UTC.match(database["measured_at"])
    assert database["history"] == [
        {
            "status": "ok",
            "duration_ms": database["duration_ms"],
            "measured_at": database["measured_at"],
        }
    ]

    mail = checks["mail"]
    assert mail["status"] == "failing"
    assert mail["error"] == "ConnectionRefusedError: refused"
    assert "value" not in mail
    assert mail["critical"] is False
    assert mail["history"][0]["status"] == "failing"
    assert mail["history"][0]["error"] == "ConnectionRefusedError: refused"

    assert checks["version"] == {
        "status": "ok",
        "value": "2.0",
        "critical": True,
        "duration_ms": None,  # a constant never runs
        "measured_at": None,
        "cached": False,
        "history": [],
    }


def test_verbose_status_is_always_there(make_client: MakeClient) -> None:
    app = Flask(__name__)
    FlaskStatus(app, message="billing").add_field("database", lambda: True)
    body = make_client(app).get(f"{URL}?verbose").json()
    assert set(body) == {"message", "status", "checks"}
    assert (body["message"], body["status"]) == ("billing", "UP")  # the message has none


def test_verbose_down_is_503(make_client: MakeClient) -> None:
    app = Flask(__name__)
    FlaskStatus(app).add_field("database", refused)
    answer = make_client(app).get(f"{URL}?verbose")
    assert answer.status == 503
    assert answer.json()["status"] == "DOWN"
    assert header(answer, "Cache-Control") == "no-store"


@pytest.mark.parametrize("query", ["", "?verbose=0", "?verbose=false", "?other"])
def test_without_verbose_the_body_keeps_its_shape(make_client: MakeClient, query: str) -> None:
    app = Flask(__name__)
    FlaskStatus(app).add_field("database", lambda: "sqlite")
    answer = make_client(app).get(URL + query)
    assert answer.json() == {"status": "OK", "database": "sqlite"}
    assert header(answer, "Vary") == "Accept"


def test_verbose_on_the_field_route(make_client: MakeClient) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    status.add_field("database", lambda: "sqlite")
    status.add_field("mail", refused)
    answer = make_client(app).get(f"{URL}/database?verbose")
    assert answer.status == 200
    assert list(answer.json()["checks"]) == ["database"]


def test_verbose_wins_over_health_json(make_client: MakeClient) -> None:
    app = Flask(__name__)
    FlaskStatus(app).add_field("database", lambda: "sqlite")
    answer = make_client(app).get(f"{URL}?verbose", {"Accept": "application/health+json"})
    assert header(answer, "Content-Type") == "application/json"
    assert "checks" in answer.json()
    assert header(answer, "Vary") == "Accept"


def test_health_json_answers_vary_on_accept(make_client: MakeClient) -> None:
    app = Flask(__name__)
    FlaskStatus(app).add_field("database", lambda: "sqlite")
    answer = make_client(app).get(URL, {"Accept": "application/health+json"})
    assert header(answer, "Content-Type") == "application/health+json"
    assert header(answer, "Vary") == "Accept"


def test_cached_results_say_so_and_add_no_history(make_client: MakeClient) -> None:
    app = Flask(__name__)
    FlaskStatus(app, cache_ttl=60).add_field("database", lambda: "sqlite")
    client = make_client(app)

    first = client.get(f"{URL}?verbose").json()["checks"]["database"]
    time.sleep(0.01)
    second = client.get(f"{URL}?verbose").json()["checks"]["database"]

    assert first["cached"] is False
    assert second["cached"] is True
    assert second["measured_at"] == first["measured_at"]
    assert len(second["history"]) == 1  # one run, two answers


def test_requests_sharing_a_run_add_one_entry(make_client: MakeClient) -> None:
    app = Flask(__name__)
    release = threading.Event()

    def held() -> str:
        release.wait(10)
        return "done"

    FlaskStatus(app, timeout=10).add_field("database", held)
    client = make_client(app)
    answers: list[Answer] = []

    def work(index: int) -> None:
        if index == 0:
            time.sleep(0.5)  # the others have joined the run by then
            release.set()
            return
        answers.append(client.get(URL))

    in_threads(5, work)
    assert [answer.status for answer in answers] == [200] * 4
    time.sleep(0.2)
    history = client.get(f"{URL}?verbose").json()["checks"]["database"]["history"]
    # The shared run, the run ahead of the next wave (where a loop hosts one: the portal's),
    # and this request's own: one entry a run, not one a request.
    assert len(history) in (2, 3)


def test_history_keeps_the_last_n_runs(make_client: MakeClient) -> None:
    app = Flask(__name__)
    FlaskStatus(app, history_size=3).add_field("database", lambda: "sqlite")
    client = make_client(app)
    stamps = [client.get(f"{URL}?verbose").json()["checks"]["database"] for _ in range(5)]

    history = stamps[-1]["history"]
    assert [entry["measured_at"] for entry in history] == [s["measured_at"] for s in stamps[-3:]]


def test_history_keeps_no_values(make_client: MakeClient) -> None:
    app = Flask(__name__)
    FlaskStatus(app).add_field("token", lambda: "s3cret-value")
    client = make_client(app)
    client.get(URL)
    body = client.get(f"{URL}?verbose").json()
    history = body["checks"]["token"]["history"]
    assert len(history) == 2
    assert all(set(entry) == {"status", "duration_ms", "measured_at"} for entry in history)


@pytest.mark.parametrize("how", ["argument", "app.config"])
def test_history_size_zero_keeps_none(make_client: MakeClient, how: str) -> None:
    app = Flask(__name__)
    if how == "app.config":
        app.config["STATUS_HISTORY_SIZE"] = 0
        status = FlaskStatus(app)
    else:
        status = FlaskStatus(app, history_size=0)
    status.add_field("database", lambda: "sqlite")
    client = make_client(app)
    client.get(URL)
    assert client.get(f"{URL}?verbose").json()["checks"]["database"]["history"] == []


def test_history_size_from_app_config(make_client: MakeClient) -> None:
    app = Flask(__name__)
    app.config["STATUS_HISTORY_SIZE"] = 2
    FlaskStatus(app).add_field("database", lambda: "sqlite")
    client = make_client(app)
    for _ in range(4):
        client.get(URL)
    assert len(client.get(f"{URL}?verbose").json()["checks"]["database"]["history"]) == 2


@pytest.mark.parametrize(
    ("value", "error"), [(-1, ValueError), (1.5, TypeError), ("60", TypeError), (True, TypeError)]
)
def test_bad_history_size_names_the_parameter(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="history_size"):
        FlaskStatus(history_size=value)
    app = Flask(__name__)
    app.config["STATUS_HISTORY_SIZE"] = value
    with pytest.raises(error, match="STATUS_HISTORY_SIZE"):
        FlaskStatus(app)


def test_hidden_errors_stay_hidden_in_verbose_and_history(make_client: MakeClient) -> None:
    app = Flask(__name__)
    FlaskStatus(app, expose_errors=False).add_field("database", refused)
    body = make_client(app).get(f"{URL}?verbose").json()
    database = body["checks"]["database"]
    assert database["error"] == "check failed"
    assert [entry["error"] for entry in database["history"]] == ["check failed"]
    assert "refused" not in str(body)


def test_history_errors_are_short(make_client: MakeClient) -> None:
    app = Flask(__name__)

    def long_error() -> None:
        raise ValueError("x" * 1000)

    FlaskStatus(app).add_field("database", long_error)
    entry = make_client(app).get(f"{URL}?verbose").json()["checks"]["database"]["history"][0]
    assert len(entry["error"]) == ERROR_CHARS
    assert entry["error"].startswith("ValueError: xxx")


# -- History itself ----------------------------------------------------------------------


def test_history_is_bounded() -> None:
    history = History(60)
    database = make_field("database", lambda: None)
    for index in range(1000):
        history.record(database, Outcome(index, None, 0.001, float(index + 1)))
    entries = history.recent("database")
    assert len(entries) == 60
    assert [entry.measured_at for entry in entries] == [float(i + 1) for i in range(940, 1000)]
    assert history.recent("other") == []


def test_history_size_zero_records_nothing() -> None:
    history = History(0)
    history.record(make_field("database", lambda: None), Outcome(1, None, 0.001, 1.0))
    assert history.recent("database") == []


def test_history_may_be_read_while_runs_are_recorded() -> None:
    history = History(50)
    stop = threading.Event()
    errors: list[BaseException] = []

    fields = [make_field(f"field{index}", lambda: None) for index in range(3)]

    def writer() -> None:
        index = 0
        while not stop.is_set():
            index += 1
            history.record(fields[index % 3], Outcome(None, "boom", 0.001, float(index)))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            try:
                for key in ("field0", "field1", "field2"):
                    assert len(history.recent(key)) <= 50
            except BaseException as exc:
                errors.append(exc)
                break
    finally:
        stop.set()
        thread.join(10)
    assert not errors


def test_each_check_says_its_state(make_client: MakeClient, gate: Gate) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app, timeout=0.2)
    status.add_field("database", lambda: "up")
    status.add_field("replica", lambda: Degraded("lag 12s", value=12))
    status.add_field("mail", refused, critical=False)
    status.add_field("stuck", gate.wait, critical=False)  # timed out: failing
    status.add_field("queue", gate.wait, interval=60, critical=False)  # no result yet

    checks = make_client(app).get(f"{URL}?verbose").json()["checks"]

    assert {key: check["status"] for key, check in checks.items()} == {
        "database": "ok",
        "replica": "degraded",
        "mail": "failing",
        "stuck": "failing",
        "queue": "starting",
    }
    assert (checks["replica"]["value"], checks["replica"]["degraded"]) == (12, "lag 12s")
    assert checks["stuck"]["error"] == "timed out after 0.2s"
    assert checks["queue"]["error"] == "starting: no result yet"
    assert [entry["status"] for entry in checks["replica"]["history"]] == ["degraded"]
    assert checks["replica"]["history"][0]["degraded"] == "lag 12s"
