"""Drop-in compatibility with the examples of Flask-Status 1.0.1's README."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

import pytest
from flask import Blueprint, Flask, abort, request
from flask.testing import FlaskClient

from flask_status import FlaskStatus

AUTH_TOKEN_HEADER = "auth_token"
VALID_TOKEN = "valid-token"


def verify_token(token: str) -> bool:
    return token == VALID_TOKEN


def login_required(func: Callable[..., Any]) -> Callable[..., Any]:
    """The README's authenticator, as written there."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = request.cookies.get(AUTH_TOKEN_HEADER)
        if not token:
            return abort(401)
        if not verify_token(token):
            return abort(403)
        return func(*args, **kwargs)

    return wrapper


def test_default_payload(app: Flask, client: FlaskClient) -> None:
    FlaskStatus(app)

    response = client.get("/api/status")

    assert response.status_code == 200
    assert response.get_json() == {"status": "OK"}
    assert response.mimetype == "application/json"


@pytest.mark.parametrize("url", ["/api/ping", "api/ping"])
def test_custom_url_and_dict_message(app: Flask, client: FlaskClient, url: str) -> None:
    FlaskStatus(app, url=url, message={"message": "show my status"})

    response = client.get("/api/ping")

    assert response.status_code == 200
    assert response.get_json() == {"message": "show my status"}
    assert client.get("/api/status").status_code == 404


def test_str_message_goes_in_a_message_field(app: Flask, client: FlaskClient) -> None:
    FlaskStatus(app, message="Running")

    assert client.get("/api/status").get_json() == {"message": "Running"}


def test_readme_add_field_example(app: Flask, client: FlaskClient) -> None:
    flask_status = FlaskStatus(app)
    flask_status.add_field("error", False)

    def check_database() -> bool:
        return True

    flask_status.add_field("database", check_database)

    response = client.get("/api/status")

    assert response.status_code == 200
    assert response.get_json() == {"status": "OK", "error": False, "database": True}


@pytest.mark.parametrize(
    ("token", "expected_status"),
    [(None, 401), ("forged", 403), (VALID_TOKEN, 200)],
    ids=["no-cookie", "bad-token", "good-token"],
)
def test_readme_authenticator_example(
    app: Flask, client: FlaskClient, token: str | None, expected_status: int
) -> None:
    FlaskStatus(app, authenticator=login_required)
    if token is not None:
        client.set_cookie(AUTH_TOKEN_HEADER, token)

    response = client.get("/api/status")

    assert response.status_code == expected_status
    assert (response.get_json(silent=True) == {"status": "OK"}) is (expected_status == 200)


def test_blueprint_with_url_prefix(app: Flask, client: FlaskClient) -> None:
    blueprint = Blueprint("v1", __name__)
    status = FlaskStatus(blueprint)
    status.add_field("api_version", 1)
    status.add_field("database", lambda: True)
    app.register_blueprint(blueprint, url_prefix="/v1")

    response = client.get("/v1/api/status")

    assert response.status_code == 200
    assert response.get_json() == {"status": "OK", "api_version": 1, "database": True}
    assert client.get("/api/status").status_code == 404
