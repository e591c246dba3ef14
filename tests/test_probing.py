"""Kubernetes-style probing, health+json, the ``flask status`` command and app.config settings."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from typing import Any

import pytest
from flask import Flask

from flask_status import Degraded, FlaskStatus

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def make_app(**options: Any) -> tuple[Flask, FlaskStatus, dict[str, int]]:
    """An app whose checks count their runs: database (sync), cache (async), mail (failing)."""
    app = Flask(__name__)
    status = FlaskStatus(app, **options)
    runs = {"database": 0, "cache": 0, "mail": 0}
    lock = threading.Lock()

    def database() -> dict[str, float]:
        with lock:
            runs["database"] += 1
        return {"latency_ms": 1.5}

    async def cache() -> int:
        runs["cache"] += 1
        await asyncio.sleep(0)
        return 7

    def mail() -> None:
        runs["mail"] += 1
        raise ConnectionRefusedError("smtp refused")

    status.add_field("version", "2.0.0")
    status.add_field("database", database)
    status.add_field("cache", cache)
    status.add_field("mail", mail, critical=False)
    return app, status, runs


def test_single_field_route_runs_only_that_field() -> None:
    app, _, runs = make_app()
    response = app.test_client().get("/api/status/database")
    assert response.status_code == 200
    assert response.get_json() == {"status": "OK", "database": {"latency_ms": 1.5}}
    assert runs == {"database": 1, "cache": 0, "mail": 0}


def test_single_field_route_reports_that_fields_failure() -> None:
    app, _, _ = make_app()
    response = app.test_client().get("/api/status/mail")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "DEGRADED",
        "mail": {"error": "ConnectionRefusedError: smtp refused"},
    }
    assert response.headers["Cache-Control"] == "no-store"


def test_unknown_field_is_404() -> None:
    app, _, runs = make_app()
    assert app.test_client().get("/api/status/nope").status_code == 404
    assert sum(runs.values()) == 0


def test_exclude_leaves_fields_out_and_does_not_run_them() -> None:
    app, _, runs = make_app()
    response = app.test_client().get("/api/status?exclude=mail&exclude=cache&exclude=unknown")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "OK",
        "version": "2.0.0",
        "database": {"latency_ms": 1.5},
    }
    assert runs == {"database": 1, "cache": 0, "mail": 0}


def test_livez_and_readyz_side_by_side() -> None:
    app = Flask(__name__)
    FlaskStatus(app, url="/livez")
    readyz = FlaskStatus(app, url="readyz")
    readyz.add_field("database", lambda: 1 / 0)
    client = app.test_client()
    assert client.get("/livez").get_json() == {"status": "OK"}
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["database"] == {"error": "ZeroDivisionError: division by zero"}
    assert client.get("/readyz?exclude=database").status_code == 200


def test_health_json_format() -> None:
    app, _, _ = make_app(message="Running")
    response = app.test_client().get("/api/status", headers={"Accept": "application/health+json"})
    assert response.status_code == 200
    assert response.mimetype == "application/health+json"
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json(force=True)
    assert body["status"] == "warn"
    assert body["description"] == "Running"
    assert body["output"] == "failing: mail"
    checks = body["checks"]
    assert set(checks) == {"version", "database", "cache", "mail"}
    assert checks["version"] == [{"status": "pass"}]
    (cache,) = checks["cache"]
    assert cache["status"] == "pass" and cache["observedValue"] == 7
    assert RFC3339_UTC.match(cache["time"]) and cache["duration"] >= 0
    (database,) = checks["database"]
    assert database["status"] == "pass" and "observedValue" not in database
    (mail,) = checks["mail"]
    assert mail["status"] == "warn"
    assert mail["output"] == "ConnectionRefusedError: smtp refused"


def test_health_json_a_degraded_check_warns_even_when_critical() -> None:
    app = Flask(__name__)
    status = FlaskStatus(app, expose_errors=False)
    status.add_field("replica", lambda: Degraded("lag 12s", value=12))
    status.add_field("mail", lambda: 1 / 0, critical=False)
    response = app.test_client().get("/api/status", headers={"Accept": "application/health+json"})
    assert response.status_code == 200
    body = response.get_json(force=True)
    assert (body["status"], body["output"]) == ("warn", "failing: mail; degraded: replica")
    (replica,) = body["checks"]["replica"]
    assert (replica["status"], replica["observedValue"]) == ("warn", 12)
    assert replica["output"] == "check degraded"  # hidden like errors


def test_health_json_critical_failure_is_fail_and_503() -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    status.add_field("database", lambda: 1 / 0)
    response = app.test_client().get("/api/status", headers={"Accept": "application/health+json"})
    assert response.status_code == 503
    body = response.get_json(force=True)
    assert body["status"] == "fail"
    assert body["checks"]["database"][0]["status"] == "fail"


def test_plain_json_stays_default_for_other_accept_headers() -> None:
    app, _, _ = make_app()
    for accept in ("*/*", "application/json", "text/html"):
        response = app.test_client().get("/api/status", headers={"Accept": accept})
        assert response.mimetype == "application/json"
        assert response.get_json()["status"] == "DEGRADED"


def test_cli_prints_json_and_exits_by_status() -> None:
    app, _, _ = make_app()
    result = app.test_cli_runner().invoke(args=["status"])
    assert result.exit_code == 0
    assert json.loads(result.output)["status"] == "DEGRADED"

    down = Flask(__name__)
    FlaskStatus(down).add_field("database", lambda: 1 / 0)
    result = down.test_cli_runner().invoke(args=["status"])
    assert result.exit_code == 1
    assert json.loads(result.output)["status"] == "DOWN"


def test_cli_chooses_among_several_routes_and_skips_the_authenticator() -> None:
    app = Flask(__name__)

    def deny_all(view: Any) -> Any:
        return lambda **kwargs: ("no", 401)

    FlaskStatus(app, url="/livez")
    FlaskStatus(app, url="/readyz", authenticator=deny_all).add_field("database", lambda: 1 / 0)
    runner = app.test_cli_runner()
    assert runner.invoke(args=["status", "--url", "/livez"]).exit_code == 0
    result = runner.invoke(args=["status", "--url", "/readyz"])
    assert result.exit_code == 1
    assert json.loads(result.output)["status"] == "DOWN"
    result = runner.invoke(args=["status", "--url", "/nope"])
    assert result.exit_code == 2
    assert "/livez" in result.output and "/readyz" in result.output


def test_settings_from_app_config() -> None:
    app = Flask(__name__)
    app.config.update(
        STATUS_URL="/healthz",
        STATUS_MESSAGE="Running",
        STATUS_TIMEOUT=0.05,
        STATUS_EXPOSE_ERRORS=False,
    )
    status = FlaskStatus(app)
    hung = threading.Event()
    status.add_field("slow", lambda: hung.wait(5))
    try:
        response = app.test_client().get("/healthz")
    finally:
        hung.set()
    assert response.status_code == 503
    assert response.get_json() == {
        "message": "Running",
        "status": "DOWN",
        "slow": {"error": "check failed"},
    }


def test_constructor_arguments_take_precedence_over_app_config() -> None:
    app = Flask(__name__)
    app.config.update(STATUS_URL="/healthz", STATUS_TIMEOUT=0.05)
    status = FlaskStatus(app, url="/ready", timeout=2)
    status.add_field("quick", lambda: __import__("time").sleep(0.2) or "done")
    client = app.test_client()
    assert client.get("/healthz").status_code == 404
    assert client.get("/ready").get_json() == {"status": "OK", "quick": "done"}


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("STATUS_TIMEOUT", 0, ValueError),
        ("STATUS_TIMEOUT", "1", TypeError),
        ("STATUS_URL", 5, TypeError),
        ("STATUS_MESSAGE", 5, TypeError),
        ("STATUS_EXPOSE_ERRORS", "no", TypeError),
        ("STATUS_MAX_WORKERS", 0, ValueError),
        ("STATUS_CACHE_TTL", -1, ValueError),
    ],
)
def test_bad_app_config_names_the_key(key: str, value: Any, error: type[Exception]) -> None:
    app = Flask(__name__)
    app.config[key] = value
    with pytest.raises(error, match=key):
        FlaskStatus(app)


def test_method_not_allowed_is_not_cached() -> None:
    app, _, _ = make_app()
    response = app.test_client().post("/api/status")
    assert response.status_code == 405
    assert response.headers["Cache-Control"] == "no-store"
    assert "Cache-Control" not in app.test_client().post("/elsewhere").headers


def test_cli_runs_every_route_without_url_and_fails_if_any_is_down() -> None:
    app = Flask(__name__)
    FlaskStatus(app, url="/livez")
    FlaskStatus(app, url="/readyz").add_field("database", lambda: 1 / 0)

    result = app.test_cli_runner().invoke(args=["status"], input="")

    assert result.exit_code == 1
    assert json.loads(result.output) == {
        "/livez": {"status": "OK"},
        "/readyz": {"database": {"error": "ZeroDivisionError: division by zero"}, "status": "DOWN"},
    }
