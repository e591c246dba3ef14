"""Overall status and the HTTP contract: status codes, headers, methods."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from helpers import raising

from flask_status import FlaskStatus

FAILING = raising(ConnectionRefusedError("refused"))
FAILED = {"error": "ConnectionRefusedError: refused"}


def test_all_fine_is_200_with_the_message_as_given(app: Flask, client: FlaskClient) -> None:
    status = FlaskStatus(app, message={"status": "UP", "service": "api"})
    status.add_field("database", lambda: True)
    status.add_field("mail", lambda: True, critical=False)

    response = client.get("/api/status")

    assert response.status_code == 200
    assert response.get_json() == {"status": "UP", "service": "api", "database": True, "mail": True}


def test_critical_failure_is_503_down(app: Flask, client: FlaskClient) -> None:
    status = FlaskStatus(app)
    status.add_field("database", FAILING)
    status.add_field("mail", lambda: True, critical=False)

    response = client.get("/api/status")

    assert response.status_code == 503
    assert response.get_json() == {"status": "DOWN", "database": FAILED, "mail": True}


def test_only_non_critical_failures_are_200_degraded(app: Flask, client: FlaskClient) -> None:
    status = FlaskStatus(app)
    status.add_field("database", lambda: True)
    status.add_field("mail", FAILING, critical=False)

    response = client.get("/api/status")

    assert response.status_code == 200
    assert response.get_json() == {"status": "DEGRADED", "database": True, "mail": FAILED}


def test_critical_failure_wins_over_non_critical(app: Flask, client: FlaskClient) -> None:
    status = FlaskStatus(app)
    status.add_field("mail", FAILING, critical=False)
    status.add_field("database", FAILING)

    response = client.get("/api/status")

    assert response.status_code == 503
    assert response.get_json()["status"] == "DOWN"


@pytest.mark.parametrize(
    ("critical", "expected_code", "expected_status"),
    [(None, 200, None), (True, 503, "DOWN"), (False, 200, "DEGRADED")],
    ids=["healthy", "critical-failure", "non-critical-failure"],
)
def test_message_without_status_key(
    app: Flask,
    client: FlaskClient,
    critical: bool | None,
    expected_code: int,
    expected_status: str | None,
) -> None:
    status = FlaskStatus(app, message="Running")
    if critical is not None:
        status.add_field("database", FAILING, critical=critical)

    response = client.get("/api/status")
    body: dict[str, Any] = response.get_json()

    assert response.status_code == expected_code
    assert body.get("status") == expected_status
    assert body["message"] == "Running"


@pytest.mark.parametrize("failing", [False, True], ids=["200", "503"])
def test_responses_are_not_cached(app: Flask, client: FlaskClient, failing: bool) -> None:
    status = FlaskStatus(app)
    status.add_field("database", FAILING if failing else (lambda: True))

    for response in (client.get("/api/status"), client.head("/api/status")):
        assert response.headers["Cache-Control"] == "no-store"
        assert response.mimetype == "application/json"


@pytest.mark.parametrize("failing", [False, True], ids=["200", "503"])
def test_head_has_the_status_code_and_no_body(
    app: Flask, client: FlaskClient, failing: bool
) -> None:
    status = FlaskStatus(app)
    status.add_field("database", FAILING if failing else (lambda: True))

    get, head = client.get("/api/status"), client.head("/api/status")

    assert head.status_code == get.status_code == (503 if failing else 200)
    assert head.get_data() == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_not_allowed(app: Flask, client: FlaskClient, method: str) -> None:
    FlaskStatus(app)

    response = client.open("/api/status", method=method)

    assert response.status_code == 405
    assert {"GET", "HEAD"} <= set(response.allow)
