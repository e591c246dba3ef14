"""Setup errors: a TypeError or ValueError at setup time whose message names the parameter."""

from __future__ import annotations

import datetime
import math
from typing import Any

import pytest
from flask import Flask

from flask_status import FlaskStatus

BAD_DURATIONS = [
    pytest.param(0, ValueError, id="zero"),
    pytest.param(-1, ValueError, id="negative"),
    pytest.param("1", TypeError, id="str"),
    pytest.param(math.nan, ValueError, id="nan"),
    pytest.param(math.inf, ValueError, id="inf"),
    pytest.param(True, TypeError, id="bool"),
]


@pytest.mark.parametrize(
    ("url", "error"), [(42, TypeError), (b"/status", TypeError), ("", ValueError)]
)
def test_bad_url(url: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="url"):
        FlaskStatus(url=url)


@pytest.mark.parametrize(
    "message",
    [42, ["OK"], {"when": object()}, {1: "one"}, {"ratio": math.nan}],
    ids=["int", "list", "object-value", "int-key", "nan-value"],
)
def test_bad_message(message: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="message"):
        FlaskStatus(message=message)


@pytest.mark.parametrize(("key", "error"), [(1, TypeError), (None, TypeError), ("", ValueError)])
def test_bad_key(key: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="key"):
        FlaskStatus().add_field(key, True)


@pytest.mark.parametrize(
    "value",
    [object(), {1, 2}, {"nested": object()}, math.nan, math.inf],
    ids=["object", "set", "nested", "nan", "inf"],
)
def test_constant_that_is_not_json(value: Any) -> None:
    with pytest.raises((TypeError, ValueError), match=r"'version'.*JSON"):
        FlaskStatus().add_field("version", value)


def test_constants_flask_can_encode_are_accepted(app: Flask) -> None:
    status = FlaskStatus(app)
    status.add_field("released", datetime.date(2024, 1, 2))

    response = app.test_client().get("/api/status")

    assert response.get_json() == {"status": "OK", "released": "Tue, 02 Jan 2024 00:00:00 GMT"}


@pytest.mark.parametrize(("timeout", "error"), BAD_DURATIONS)
def test_bad_instance_timeout(timeout: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="timeout"):
        FlaskStatus(timeout=timeout)


@pytest.mark.parametrize(("timeout", "error"), BAD_DURATIONS)
def test_bad_field_timeout(timeout: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="timeout"):
        FlaskStatus().add_field("database", lambda: True, timeout=timeout)


def test_none_timeout_means_the_configured_default(app: Flask) -> None:
    app.config["STATUS_TIMEOUT"] = 0.05
    status = FlaskStatus(app, timeout=None)
    status.add_field("slow", lambda: __import__("time").sleep(0.5))

    response = app.test_client().get("/api/status")

    assert response.get_json()["slow"] == {"error": "timed out after 0.05s"}


@pytest.mark.parametrize("cache_ttl", [-1, -0.5, math.nan])
def test_bad_cache_ttl(cache_ttl: float) -> None:
    with pytest.raises(ValueError, match="cache_ttl"):
        FlaskStatus(cache_ttl=cache_ttl)
    with pytest.raises(ValueError, match="cache_ttl"):
        FlaskStatus().add_field("database", lambda: True, cache_ttl=cache_ttl)


def test_status_key_is_reserved() -> None:
    with pytest.raises(ValueError, match="status"):
        FlaskStatus().add_field("status", "UP")


def test_good_values_are_accepted(app: Flask) -> None:
    status = FlaskStatus(app, url="/ok", message={}, timeout=0.5, cache_ttl=0)
    status.add_field("fraction", lambda: True, timeout=0.25, cache_ttl=0)
    status.add_field("integer", lambda: True, timeout=1, cache_ttl=2)

    assert app.test_client().get("/ok").get_json() == {"fraction": True, "integer": True}
