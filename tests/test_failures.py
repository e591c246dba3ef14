"""Failing fields: a one-line error in the field, the full error in the app's log."""

from __future__ import annotations

import logging
import math

import pytest
from flask import Flask
from flask.testing import FlaskClient
from helpers import raising, strict_json

from flask_status import FlaskStatus


async def raising_async() -> None:
    raise ValueError("boom")


RAISING_CHECKS = [raising(ValueError("boom")), raising_async]


@pytest.mark.parametrize("check", RAISING_CHECKS, ids=["sync", "async"])
def test_raised_exception_shows_class_and_message(
    app: Flask, client: FlaskClient, check: object
) -> None:
    status = FlaskStatus(app)
    status.add_field("database", check)
    status.add_field("cache", lambda: "warm")
    status.add_field("version", "2.0.0")

    response = client.get("/api/status")

    assert response.get_json() == {
        "status": "DOWN",
        "database": {"error": "ValueError: boom"},
        "cache": "warm",
        "version": "2.0.0",
    }
    assert "Traceback" not in response.get_data(as_text=True)


def test_multiline_error_is_shown_on_one_line(app: Flask, client: FlaskClient) -> None:
    FlaskStatus(app).add_field("database", raising(RuntimeError("first line\n  second line")))

    error = client.get("/api/status").get_json()["database"]["error"]

    assert error == "RuntimeError: first line second line"


def test_exception_without_message_shows_its_class(app: Flask, client: FlaskClient) -> None:
    FlaskStatus(app).add_field("database", raising(ConnectionResetError()))

    error = client.get("/api/status").get_json()["database"]["error"]

    assert error == "ConnectionResetError"


@pytest.mark.parametrize(
    "value", [object(), {1, 2}, math.nan, math.inf], ids=["object", "set", "nan", "inf"]
)
def test_non_json_return_value_is_a_field_error(
    app: Flask, client: FlaskClient, value: object
) -> None:
    status = FlaskStatus(app)
    status.add_field("report", lambda: value)
    status.add_field("cache", lambda: "warm")

    response = client.get("/api/status")
    body = strict_json(response.get_data())

    assert response.status_code == 503
    assert body["status"] == "DOWN"
    assert body["cache"] == "warm"
    assert set(body["report"]) == {"error"}
    assert "JSON" in body["report"]["error"]


@pytest.mark.parametrize("check", RAISING_CHECKS, ids=["sync", "async"])
def test_raised_exception_is_logged_with_traceback(
    app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture, check: object
) -> None:
    FlaskStatus(app).add_field("database", check)

    with caplog.at_level(logging.ERROR, logger=app.logger.name):
        client.get("/api/status")

    [record] = [r for r in caplog.records if r.name == app.logger.name]
    assert record.levelno == logging.ERROR
    assert "database" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)
    assert str(record.exc_info[1]) == "boom"


def test_non_json_return_value_is_logged(
    app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    FlaskStatus(app).add_field("report", object)

    with caplog.at_level(logging.ERROR, logger=app.logger.name):
        client.get("/api/status")

    messages = [r.getMessage() for r in caplog.records if r.name == app.logger.name]
    assert any("report" in m and "JSON" in m for m in messages), messages
