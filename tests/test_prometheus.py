"""Prometheus gauges kept current by ``flask_status.prometheus.instrument``."""

from __future__ import annotations

import importlib
import subprocess
import sys
import time

import pytest
from conftest import StatusApp
from flask import Flask, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flask_status import Degraded, FlaskStatus
from flask_status.outcome import Outcome
from flask_status.prometheus import (
    DURATION,
    STATE,
    STATES,
    UP,
    StatusCollector,
    instrument,
)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def sample(registry: CollectorRegistry, name: str, check: str, route: str = "/api/status") -> float:
    value = registry.get_sample_value(name, {"check": check, "route": route})
    assert value is not None, f"no {name} sample for check {check!r} on {route!r}"
    return value


class Switch:
    """A check that fails while ``broken`` is set."""

    def __init__(self) -> None:
        self.broken = False

    def __call__(self) -> str:
        if self.broken:
            raise RuntimeError("switched off")
        return "on"


def test_gauges_follow_each_evaluation(checked_app: StatusApp, registry: CollectorRegistry) -> None:
    switch = Switch()
    checked_app.status.add_field("version", "2.0.0")
    checked_app.status.add_field("switch", switch, critical=False)
    checked_app.status.add_field("slow", lambda: time.sleep(0.1))
    instrument(checked_app.status, registry)
    assert registry.get_sample_value(UP, {"check": "switch", "route": "/api/status"}) is None

    assert checked_app.get()[0] == 200
    assert sample(registry, UP, "switch") == 1
    assert sample(registry, UP, "version") == 1
    assert sample(registry, DURATION, "version") == 0
    assert 0.1 <= sample(registry, DURATION, "slow") < 5

    switch.broken = True
    assert checked_app.get()[1]["status"] == "DEGRADED"
    assert sample(registry, UP, "switch") == 0
    assert sample(registry, UP, "slow") == 1

    switch.broken = False
    checked_app.get()
    assert sample(registry, UP, "switch") == 1


def test_timed_out_check_is_down(registry: CollectorRegistry) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app, timeout=0.2)
    status.add_field("stuck", lambda: time.sleep(2))
    instrument(status, registry)
    assert app.test_client().get("/api/status").status_code == 503
    assert sample(registry, UP, "stuck") == 0
    assert 0.2 <= sample(registry, DURATION, "stuck") < 2


def test_exposition_text(checked_app: StatusApp, registry: CollectorRegistry) -> None:
    checked_app.status.add_field("version", "2.0.0")
    instrument(checked_app.status, registry)
    checked_app.get()
    text = generate_latest(registry).decode()
    assert "# TYPE flask_status_check_up gauge" in text
    assert 'flask_status_check_up{check="version",route="/api/status"} 1.0' in text
    assert 'flask_status_check_duration_seconds{check="version",route="/api/status"} 0.0' in text


def states(registry: CollectorRegistry, check: str) -> dict[str, float | None]:
    """``flask_status_check_state``'s series of one check: state -> value."""
    return {
        state: registry.get_sample_value(
            STATE, {"check": check, "route": "/api/status", "state": state}
        )
        for state in STATES
    }


def test_the_state_gauge_has_one_series_per_state_and_up_counts_degraded_as_up(
    registry: CollectorRegistry,
) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    status.add_field("replica", lambda: Degraded("lag 12s", value=12))
    status.add_field("mail", lambda: 1 / 0, critical=False)
    instrument(status, registry)
    assert app.test_client().get("/api/status").status_code == 200  # DEGRADED

    assert (sample(registry, UP, "replica"), sample(registry, UP, "mail")) == (1, 0)
    expected = dict.fromkeys(STATES, 0.0)
    assert states(registry, "replica") == {**expected, "degraded": 1.0}
    assert states(registry, "mail") == {**expected, "failing": 1.0}
    text = generate_latest(registry).decode()
    assert "# TYPE flask_status_check_state gauge" in text
    assert (
        'flask_status_check_state{check="replica",route="/api/status",state="degraded"} 1.0' in text
    )


def test_a_skipped_check_is_down_and_says_skipped(registry: CollectorRegistry) -> None:
    collector = StatusCollector()
    collector.add_route("/api/status")
    registry.register(collector)
    skipped = Outcome(error="skipped: broker is failing", error_kind="skipped")
    collector.update("/api/status", {"workers": skipped})
    assert sample(registry, UP, "workers") == 0
    assert states(registry, "workers") == {**dict.fromkeys(STATES, 0.0), "skipped": 1.0}


def test_metrics_route_in_the_app(registry: CollectorRegistry) -> None:
    app = Flask(__name__)
    live = FlaskStatus(app, url="/health/live")
    ready = FlaskStatus(app, url="/health/ready")
    live.add_field("process", lambda: "running")
    ready.add_field("database", lambda: 1 / 0)
    instrument(live, registry)
    instrument(ready, registry)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    client = app.test_client()
    assert client.get("/health/live").status_code == 200
    assert client.get("/health/ready").status_code == 503
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type == CONTENT_TYPE_LATEST
    families = {f.name: f for f in text_string_to_metric_families(response.get_data(as_text=True))}
    up = {(s.labels["route"], s.labels["check"]): s.value for s in families[UP].samples}
    assert up == {("/health/live", "process"): 1.0, ("/health/ready", "database"): 0.0}


def test_same_route_twice_in_one_registry_is_refused(registry: CollectorRegistry) -> None:
    first, second = FlaskStatus(Flask("first")), FlaskStatus(Flask("second"))
    instrument(first, registry)
    with pytest.raises(ValueError, match="'/api/status' is already instrumented"):
        instrument(second, registry)
    instrument(second, registry, route="second")  # a distinct label resolves it
    instrument(second, CollectorRegistry())  # so does another registry


def test_clash_with_other_metrics_of_the_same_name(registry: CollectorRegistry) -> None:
    Gauge(UP, "someone else's", registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        instrument(FlaskStatus(Flask(__name__)), registry)


@pytest.mark.parametrize(
    ("status", "registry", "route", "error"),
    [
        (None, None, None, "status must be a FlaskStatus"),
        (FlaskStatus(), "registry", None, "registry must be a CollectorRegistry"),
        (FlaskStatus(), CollectorRegistry(), "", "route must be a non-empty str"),
    ],
)
def test_validates_arguments(status: object, registry: object, route: object, error: str) -> None:
    with pytest.raises(TypeError, match=error):
        instrument(status, registry, route=route)  # type: ignore[arg-type]


def test_default_registry_is_the_global_one() -> None:
    # In a child process, so the global registry of the test process stays untouched.
    code = """
from flask import Flask
from prometheus_client import generate_latest
from flask_status import FlaskStatus
from flask_status.prometheus import instrument
app = Flask(__name__)
status = FlaskStatus(app)
status.add_field("version", "2.0.0")
instrument(status)
app.test_client().get("/api/status")
print(generate_latest().decode())
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert 'flask_status_check_up{check="version",route="/api/status"} 1.0' in result.stdout


def test_missing_prometheus_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # makes the import fail
    monkeypatch.delitem(sys.modules, "flask_status.prometheus")
    with pytest.raises(ImportError, match=r"pip install -e '\.\[prometheus\]' in a clone"):
        importlib.import_module("flask_status.prometheus")


def test_single_field_requests_keep_the_other_gauges(
    checked_app: StatusApp, registry: CollectorRegistry
) -> None:
    switch = Switch()
    checked_app.status.add_field("switch", switch)
    checked_app.status.add_field("version", "2.0.0")
    instrument(checked_app.status, registry)
    client = checked_app.app.test_client()
    assert client.get("/api/status").status_code == 200
    switch.broken = True
    assert client.get("/api/status/switch").status_code == 503
    assert client.get("/api/status?exclude=switch").status_code == 200
    assert sample(registry, UP, "switch") == 0  # from the single-field request
    assert sample(registry, UP, "version") == 1


def test_the_up_gauge_follows_failure_thresholds(registry: CollectorRegistry) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    switch = Switch()
    status.add_field("db", switch, failure_threshold=2)
    instrument(status, registry=registry)
    client = app.test_client()

    client.get("/api/status")
    switch.broken = True
    client.get("/api/status")  # one failed run of two: still up
    assert sample(registry, UP, "db") == 1.0
    client.get("/api/status")
    assert sample(registry, UP, "db") == 0.0


def test_a_skipped_dependent_is_down_and_in_the_skipped_state(registry: CollectorRegistry) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    status.add_field("broker", lambda: 1 / 0, critical=False)
    status.add_field("workers", lambda: "up", depends_on="broker", critical=False)
    instrument(status, registry)
    assert app.test_client().get("/api/status").status_code == 200  # DEGRADED

    assert sample(registry, UP, "workers") == 0
    assert states(registry, "workers") == {**dict.fromkeys(STATES, 0.0), "skipped": 1.0}
