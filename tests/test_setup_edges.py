"""Setup refuses what cannot work, at registration, with an error naming what to change."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Blueprint, Flask, url_for

from flask_status import FlaskStatus


def rules(app: Flask) -> list[tuple[str, str]]:
    return sorted((rule.rule, rule.endpoint) for rule in app.url_map.iter_rules())


# -- two routes on one URL ---------------------------------------------------------------


@pytest.mark.parametrize(
    "second",
    [{}, {"endpoint": "other"}],
    ids=["derived-endpoints", "explicit-endpoints"],
)
def test_two_instances_on_one_url(app: Flask, second: dict[str, Any]) -> None:
    FlaskStatus(app, endpoint="first" if second else None)
    before = rules(app)
    with pytest.raises(ValueError, match=re.escape("'/api/status' is already routed")):
        FlaskStatus(app, **second)
    assert rules(app) == before  # a refused route leaves nothing behind


def test_blueprint_on_the_apps_status_url(app: Flask) -> None:
    FlaskStatus(app)
    blueprint = Blueprint("health", __name__)
    FlaskStatus(blueprint)
    with pytest.raises(ValueError, match=re.escape("'/api/status' is already routed")):
        app.register_blueprint(blueprint)


def test_app_on_a_blueprints_status_url(app: Flask) -> None:
    blueprint = Blueprint("health", __name__)
    FlaskStatus(blueprint, url="/status")
    app.register_blueprint(blueprint, url_prefix="/api")
    with pytest.raises(ValueError, match=re.escape("'/api/status' is already routed")):
        FlaskStatus(app)


def test_url_of_an_app_route(app: Flask) -> None:
    @app.post("/api/status")
    def report() -> str:
        return ""

    with pytest.raises(ValueError, match=r"'/api/status' is already routed.*'report'"):
        FlaskStatus(app)


def test_per_field_route_of_an_app_route(app: Flask) -> None:
    @app.get("/api/status/<int:job>")
    def job_status(job: int) -> str:
        return ""

    with pytest.raises(ValueError, match=r"'/api/status/<field>' is already routed"):
        FlaskStatus(app)


def test_distinct_urls_still_work(app: Flask) -> None:
    FlaskStatus(app, url="/livez")
    FlaskStatus(app, url="/readyz")
    blueprint = Blueprint("v1", __name__)
    FlaskStatus(blueprint)
    app.register_blueprint(blueprint, url_prefix="/v1")
    FlaskStatus(app)
    client = app.test_client()
    for url in ("/livez", "/readyz", "/v1/api/status", "/api/status"):
        assert client.get(url).status_code == 200


# -- URLs that cannot be served ----------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["/x/<y>", "/<field>", "/api/<int:version>/status", "/x>", "/x?y=1", "/x#y", "/", "//"],
)
def test_unservable_url(url: str) -> None:
    with pytest.raises(ValueError, match=rf"^url {re.escape(repr(url))} must not"):
        FlaskStatus(url=url)


@pytest.mark.parametrize("url", ["/<x>", "/x?y=1", "/"])
def test_unservable_status_url_config(app: Flask, url: str) -> None:
    app.config["STATUS_URL"] = url
    with pytest.raises(ValueError, match=rf"^STATUS_URL {re.escape(repr(url))} must not"):
        FlaskStatus(app)
    assert rules(app) == [("/static/<path:filename>", "static")]


@pytest.mark.parametrize("where", ["blueprint", "register_blueprint"])
def test_blueprint_prefix_with_a_converter(app: Flask, where: str) -> None:
    blueprint = Blueprint(
        "tenant", __name__, url_prefix="/<tenant>" if where == "blueprint" else None
    )
    FlaskStatus(blueprint)
    prefix = {"url_prefix": "/<tenant>"} if where == "register_blueprint" else {}
    with pytest.raises(ValueError, match=r"'/<tenant>/api/status' \(url_prefix '/<tenant>'"):
        app.register_blueprint(blueprint, **prefix)


def test_blueprint_url_is_checked_too() -> None:
    with pytest.raises(ValueError, match="url '/<x>'"):
        FlaskStatus(Blueprint("b", __name__), url="/<x>")


def test_root_url_would_have_taken_the_apps_pages(app: Flask) -> None:
    @app.get("/<page>")
    def page(page: str) -> str:
        return page

    with pytest.raises(ValueError, match="root"):
        FlaskStatus(app, url="/")
    assert app.test_client().get("/about").get_data(as_text=True) == "about"


# -- endpoint names ----------------------------------------------------------------------


def test_default_url_keeps_the_1_0_1_endpoint(app: Flask) -> None:
    FlaskStatus(app)
    with app.test_request_context():
        assert url_for("status_ping") == "/api/status"


def test_urls_deriving_the_same_endpoint_both_register(app: Flask) -> None:
    FlaskStatus(app, url="/a/b")
    FlaskStatus(app, url="/a_b")
    client = app.test_client()
    assert client.get("/a/b").status_code == 200
    assert client.get("/a_b").status_code == 200
    endpoints = {
        rule.endpoint for rule in app.url_map.iter_rules() if rule.rule in ("/a/b", "/a_b")
    }
    assert len(endpoints) == 2


def test_derived_endpoint_avoids_the_apps_own(app: Flask) -> None:
    @app.get("/ping")
    def status_ping() -> str:
        return "pong"

    FlaskStatus(app)
    client = app.test_client()
    assert client.get("/ping").get_data(as_text=True) == "pong"
    assert client.get("/api/status").get_json() == {"status": "OK"}


def test_url_named_like_a_per_field_endpoint(app: Flask) -> None:
    FlaskStatus(app, url="/x")  # status_ping_x and status_ping_x_field
    FlaskStatus(app, url="/x/field")  # would derive status_ping_x_field
    assert app.test_client().get("/x/field").get_json() == {"status": "OK"}


def test_explicit_endpoint_already_used(app: Flask) -> None:
    FlaskStatus(app, url="/livez", endpoint="health")
    with pytest.raises(ValueError, match="endpoint 'health'"):
        FlaskStatus(app, url="/readyz", endpoint="health")


# -- field keys --------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["db/primary", "/", "a/"])
def test_key_with_a_slash(key: str) -> None:
    with pytest.raises(ValueError, match=rf"key {re.escape(repr(key))} must not contain '/'"):
        FlaskStatus().add_field(key, True)


@pytest.mark.parametrize(
    ("message", "key"),
    [({"version": "1.2"}, "version"), ("Running", "message")],
)
def test_key_of_the_message_at_add_field(message: Any, key: str) -> None:
    status = FlaskStatus(message=message)
    with pytest.raises(ValueError, match=rf"key '{key}' is a key of message too"):
        status.add_field(key, "2.0")


def test_key_of_a_message_given_to_init_app(app: Flask) -> None:
    status = FlaskStatus()
    status.add_field("version", "2.0")
    with pytest.raises(ValueError, match="key 'version' of a field is a key of message too"):
        status.init_app(app, message={"version": "1.2"})


def test_key_of_the_status_message_config(app: Flask) -> None:
    app.config["STATUS_MESSAGE"] = {"version": "1.2"}
    status = FlaskStatus()
    status.add_field("version", "2.0")
    with pytest.raises(ValueError, match="'version' of a field is a key of STATUS_MESSAGE too"):
        status.init_app(app)


def test_key_of_the_status_message_config_after_registration(app: Flask) -> None:
    app.config["STATUS_MESSAGE"] = {"version": "1.2"}
    status = FlaskStatus(app)
    with pytest.raises(ValueError, match="'version' is a key of STATUS_MESSAGE too"):
        status.add_field("version", "2.0")
    status.add_field("build", "2.0")
    assert app.test_client().get("/api/status").get_json() == {"version": "1.2", "build": "2.0"}


def test_key_of_a_blueprint_message_config(app: Flask) -> None:
    app.config["STATUS_MESSAGE"] = "Running"
    blueprint = Blueprint("health", __name__)
    status = FlaskStatus(blueprint)
    status.add_field("message", "hello")
    with pytest.raises(ValueError, match="'message' of a field is a key of STATUS_MESSAGE"):
        app.register_blueprint(blueprint)


def test_message_key_cached_is_reserved(app: Flask) -> None:
    with pytest.raises(ValueError, match="message key 'cached' is reserved"):
        FlaskStatus(message={"cached": 1})
    app.config["STATUS_MESSAGE"] = {"cached": 1}
    with pytest.raises(ValueError, match="STATUS_MESSAGE key 'cached' is reserved"):
        FlaskStatus(app)


def test_message_may_hold_status(app: Flask) -> None:
    FlaskStatus(app, message={"status": "UP", "version": "1.2"})
    assert app.test_client().get("/api/status").get_json() == {"status": "UP", "version": "1.2"}


# -- durations ---------------------------------------------------------------------------

TOO_LONG = [
    pytest.param(1e10, id="1e10"),
    pytest.param(86400.5, id="a-day-and-a-bit"),
    pytest.param(10**400, id="int-beyond-float"),
]


@pytest.mark.parametrize("seconds", TOO_LONG)
@pytest.mark.parametrize("name", ["timeout", "cache_ttl"])
def test_duration_above_a_day_in_the_constructor(name: str, seconds: float) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be .* at most 86400"):
        FlaskStatus(**{name: seconds})


@pytest.mark.parametrize("seconds", TOO_LONG)
@pytest.mark.parametrize("name", ["timeout", "cache_ttl"])
def test_duration_above_a_day_in_add_field(name: str, seconds: float) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must be .* at most 86400"):
        FlaskStatus().add_field("database", lambda: True, **{name: seconds})


@pytest.mark.parametrize("seconds", TOO_LONG)
@pytest.mark.parametrize("key", ["STATUS_TIMEOUT", "STATUS_CACHE_TTL"])
def test_duration_above_a_day_in_app_config(app: Flask, key: str, seconds: float) -> None:
    app.config[key] = seconds
    with pytest.raises(ValueError, match=rf"^{key} must be .* at most 86400"):
        FlaskStatus(app)


def test_a_day_is_accepted(app: Flask) -> None:
    status = FlaskStatus(app, timeout=86400, cache_ttl=86400)
    status.add_field("database", lambda: True, timeout=86400.0, cache_ttl=86400)
    assert app.test_client().get("/api/status").status_code == 200
