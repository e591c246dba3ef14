"""OpenTelemetry: a span per check run and metrics per finished run, read back through the
SDK's in-memory span exporter and metric reader.

The global providers can be set once per process: this module sets them for the session
(``otel_memory.configure``) and clears the exporter before each test; metrics accumulate, so
each test reads the points of its own route.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgiref.wsgi import WsgiToAsgi
from flask import Flask
from helpers import TESTS_DIR, TOKEN, ServerProcess, token_required, token_required_async
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from otel_memory import CHECK_SPAN, check_spans, configure, finished_spans, metric_points
from servers import gunicorn, uvicorn

from flask_status import FlaskStatus
from flask_status.asgi import StatusMiddleware
from flask_status.route import EXTENSION_KEY
from flask_status.store import RedisStore

tracer = trace.get_tracer("test_telemetry")


def run_script(script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a Python process of its own (with global providers of its own), from
    the tests' folder; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=TESTS_DIR,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(autouse=True)
def exporter() -> Iterator[None]:
    spans, _ = configure()
    spans.clear()
    yield


def instrumented(url: str, **options: Any) -> tuple[Flask, FlaskStatus]:
    app = Flask("telemetry_tests")
    FlaskInstrumentor().instrument_app(app)
    return app, FlaskStatus(app, url, **options)


def finished(route: str) -> list[dict[str, Any]]:
    """The spans finished since the test began, but the runs of other routes (background
    checks of earlier tests' apps may still run in this process)."""
    return [
        span
        for span in finished_spans()
        if not span["name"].startswith(CHECK_SPAN)
        or span["attributes"]["health_check.route"] == route
    ]


def by_name(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {span["name"]: span for span in spans}


def wait_for(condition: Callable[[], Any], seconds: float = 5.0) -> Any:
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.02)
    return found


def test_a_request_s_runs_are_children_of_its_span_and_a_check_s_own_spans_nest() -> None:
    def sync_check() -> str:
        with tracer.start_as_current_span("sync query"):
            return "ok"

    async def async_check() -> str:
        with tracer.start_as_current_span("async query"):
            await anyio.sleep(0)
            return "ok"

    app, status = instrumented("/parentage")
    status.add_field("sync", sync_check)
    status.add_field("async", async_check, critical=False)
    assert app.test_client().get("/parentage").status_code == 200

    spans = by_name(finished("/parentage"))
    request = spans["GET /parentage"]
    for key in ("sync", "async"):
        run = spans[CHECK_SPAN + key]
        assert run["parent_id"] == request["span_id"]
        assert run["trace_id"] == request["trace_id"]
        assert spans[f"{key} query"]["parent_id"] == run["span_id"]
        assert run["status"] == "UNSET"
    attributes = spans[CHECK_SPAN + "async"]["attributes"]
    duration = attributes.pop("health_check.duration")
    assert 0 < duration < 1
    assert attributes == {
        "health_check.name": "async",
        "health_check.route": "/parentage",
        "health_check.result": "ok",
        "health_check.critical": False,
    }


def test_a_failing_run_has_its_error_type_and_status() -> None:
    app, status = instrumented("/failing", timeout=0.2)
    status.add_field("refused", _refused)
    status.add_field("slow", _sleeps(2.0), critical=False)
    assert app.test_client().get("/failing").status_code == 503

    spans = by_name(finished("/failing"))
    refused = spans[CHECK_SPAN + "refused"]
    assert refused["status"] == "ERROR"
    assert refused["description"] == "ConnectionRefusedError: to db.internal:5432 as admin"
    assert refused["attributes"]["error.type"] == "ConnectionRefusedError"
    assert refused["attributes"]["health_check.result"] == "failing"
    slow = spans[CHECK_SPAN + "slow"]
    assert slow["attributes"]["health_check.result"] == "timed_out"
    assert slow["attributes"]["error.type"] == "timeout"
    assert slow["status"] == "ERROR"


def test_hidden_errors_keep_their_text_out_of_spans() -> None:
    app, status = instrumented("/hidden", expose_errors=False)
    status.add_field("refused", _refused)
    assert app.test_client().get("/hidden").status_code == 503

    (run,) = check_spans(finished("/hidden"))
    assert run["status"] == "ERROR"
    assert run["attributes"]["error.type"] == "ConnectionRefusedError"
    assert run["description"] is None
    assert "db.internal" not in repr(run)
    assert run["events"] == []  # no exception event: its message would carry the text


def test_a_cached_run_opens_no_span() -> None:
    app, status = instrumented("/cached", cache_ttl=60)
    status.add_field("lookup", lambda: "ok")
    client = app.test_client()
    for _ in range(3):
        assert client.get("/cached").status_code == 200
    assert len(check_spans(finished("/cached"))) == 1
    assert len([span for span in finished("/cached") if span["name"] == "GET /cached"]) == 3


def test_a_joined_run_opens_no_span_and_a_run_started_ahead_is_a_root() -> None:
    release = threading.Event()

    def slow() -> str:
        release.wait(5)
        time.sleep(0.01)  # long enough to be run ahead for the requests that joined it
        return "ok"

    app, status = instrumented("/joined")
    status.add_field("slow", slow)
    client = app.test_client()
    answers: list[int] = []
    first = threading.Thread(target=lambda: answers.append(client.get("/joined").status_code))
    first.start()
    wait_for(lambda: status_run_started(app))
    second = threading.Thread(target=lambda: answers.append(client.get("/joined").status_code))
    second.start()
    wait_for(lambda: joined(app))
    release.set()
    first.join()
    second.join()
    assert answers == [200, 200]

    # The shared run, then the run started ahead for the requests that come back together.
    runs = wait_for(lambda: len(check_spans(finished("/joined"))) >= 2 and finished("/joined"))
    shared, ahead = check_spans(runs)[:2]
    requests = [span for span in runs if span["name"] == "GET /joined"]
    assert len(requests) == 2
    assert shared["parent_id"] in {request["span_id"] for request in requests}
    assert ahead["parent_id"] is None
    assert ahead["trace_id"] not in {request["trace_id"] for request in requests}


def status_run_started(app: Flask) -> bool:
    state = _evaluator(app)._states.get("slow")
    return state is not None and state.latest is not None


def joined(app: Flask) -> bool:
    latest = _evaluator(app)._states["slow"].latest
    return latest is not None and latest.joined > 0


def _evaluator(app: Flask) -> Any:
    (route,) = app.extensions["flask_status"]
    return route.evaluator


def test_a_background_run_is_a_root_span() -> None:
    app, status = instrumented("/background")
    status.add_field("ticker", lambda: "ok", interval=0.2, wait_first=True)
    client = app.test_client()
    assert client.get("/background").status_code == 200
    runs = wait_for(
        lambda: check_spans(finished("/background"))[1:] and check_spans(finished("/background"))
    )
    assert all(run["parent_id"] is None for run in runs)
    request = by_name(finished("/background"))["GET /background"]
    assert request["trace_id"] not in {run["trace_id"] for run in runs}
    status.add_field("ticker", "stopped")  # replaced: its background task ends
    client.get("/background")


def test_another_process_s_stored_result_opens_no_span(redis_port: int) -> None:
    """Two apps of one name and URL stand in for two processes sharing a store."""
    runs = 0

    def counted() -> str:
        nonlocal runs
        runs += 1
        return "ok"

    url = f"redis://127.0.0.1:{redis_port}/0"
    prefix = f"telemetry:{time.time()}"
    ran, reader = (
        instrumented("/shared", cache_ttl=60, store=RedisStore(url, prefix=prefix))
        for _ in range(2)
    )
    for _, status in (ran, reader):
        status.add_field("lookup", counted)
    assert ran[0].test_client().get("/shared").status_code == 200
    assert reader[0].test_client().get("/shared").status_code == 200
    assert runs == 1

    spans = finished("/shared")
    assert len(check_spans(spans)) == 1
    assert len([span for span in spans if span["name"] == "GET /shared"]) == 2


@pytest.mark.parametrize("how", ["argument", "config"])
def test_telemetry_off_opens_no_span_and_counts_no_run(how: str) -> None:
    app = Flask("telemetry_off")
    FlaskInstrumentor().instrument_app(app)
    if how == "config":
        app.config["STATUS_TELEMETRY"] = False
        status = FlaskStatus(app, "/off-" + how)
    else:
        status = FlaskStatus(app, "/off-" + how, telemetry=False)
    status.add_field("quiet", lambda: "ok")
    assert app.test_client().get("/off-" + how).status_code == 200
    assert [span["name"] for span in finished("/off-" + how)] == [f"GET /off-{how}"]
    assert not [point for point in metric_points("health_check.runs") if _on(point, "/off-" + how)]


def test_the_setting_is_checked() -> None:
    with pytest.raises(TypeError, match="telemetry"):
        FlaskStatus(Flask("bad"), telemetry="no")  # type: ignore[arg-type]
    app = Flask("bad_config")
    app.config["STATUS_TELEMETRY"] = "off"
    with pytest.raises(TypeError, match="STATUS_TELEMETRY"):
        FlaskStatus(app)


def test_metrics_count_runs_not_requests() -> None:
    app, status = instrumented("/telemetry-metrics", cache_ttl=60)
    status.add_field("up", lambda: "ok")
    status.add_field("down", _refused, critical=False)
    client = app.test_client()
    for _ in range(4):  # one run each, then the cache
        assert client.get("/telemetry-metrics").status_code == 200

    gauge = {
        attributes["health_check.name"]: value
        for attributes, value in metric_points("health_check.status")
        if attributes["health_check.route"] == "/telemetry-metrics"
    }
    assert gauge == {"up": 1, "down": 0}
    runs = {
        (attributes["health_check.name"], attributes["health_check.result"]): value
        for attributes, value in metric_points("health_check.runs")
        if _on((attributes, value), "/telemetry-metrics")
    }
    assert runs == {("up", "ok"): 1, ("down", "failing"): 1}
    durations = [
        point
        for point in metric_points("health_check.duration")
        if _on(point, "/telemetry-metrics")
    ]
    assert sorted(value for _, value in durations) == [1, 1]  # one measurement per check


def test_without_the_api_the_route_serves_as_before() -> None:
    """In a process where ``opentelemetry`` cannot be imported (the otel extra is left out)."""
    script = """
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, Blocked())
from flask import Flask
from flask_status import FlaskStatus, telemetry
app = Flask("no_otel")
status = FlaskStatus(app, telemetry=True)
status.add_field("up", lambda: "ok")
response = app.test_client().get("/api/status")
print(telemetry.AVAILABLE, response.status_code, response.get_json()["up"])
"""
    done = run_script(script)
    assert done.stdout.split() == ["False", "200", "ok"]


@pytest.mark.parametrize("guard", [None, token_required, token_required_async])
def test_under_the_asgi_middleware_runs_are_children_of_the_request_span(
    guard: Callable[..., Any] | None,
) -> None:
    """In process, every path of a status request through StatusMiddleware: on the loop, and
    inside a sync authenticator's wrapper (in a worker thread) or an async one's."""
    app = Flask("telemetry_asgi")
    url = f"/asgi-{getattr(guard, '__name__', 'open')}"
    FlaskStatus(app, url, authenticator=guard).add_field("up", lambda: "ok")
    asgi_app = OpenTelemetryMiddleware(StatusMiddleware(WsgiToAsgi(app), app))  # type: ignore[no-untyped-call]

    async def get() -> int:
        transport = httpx.ASGITransport(app=asgi_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get(url, headers=TOKEN)
            return response.status_code

    assert anyio.run(get) == 200
    spans = finished(url)
    (run,) = check_spans(spans)
    request = next(span for span in spans if span["kind"] == "SERVER")
    assert run["parent_id"] == request["span_id"]


# -- real servers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "app"),
    [
        ("uvicorn", "otel_app:create_asgi"),
        ("uvicorn", "otel_app:create_flask_instrumented_asgi"),
        ("gunicorn", "otel_app:create_wsgi()"),
    ],
    ids=["asgi-middleware", "flask-instrumentor-under-status-middleware", "gunicorn-gthread"],
)
def test_parentage_on_a_real_server(server: str, app: str, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    process: ServerProcess
    if server == "uvicorn":
        process = uvicorn(app, log, "--factory", "--reset-contextvars")
    else:
        process = gunicorn(app, log, worker_class="gthread", threads=4)
    with process:
        assert process.fetch("/api/status").status == 200
        spans = wait_for(lambda: _two_background_runs(process.fetch("/spans").json()))
    request = next(
        span for span in spans if span["kind"] == "SERVER" and "/api/status" in span["name"]
    )
    runs = {span["attributes"]["health_check.name"]: span for span in check_spans(spans)}
    for key in ("sync", "async"):
        assert runs[key]["parent_id"] == request["span_id"], (key, spans)
        # The check's own span nests under its run's.
        assert any(
            span["name"] == "query" and span["parent_id"] == runs[key]["span_id"] for span in spans
        )
    background = _background_runs(spans)
    assert background and all(span["parent_id"] is None for span in background)


def _background_runs(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        span
        for span in check_spans(spans)
        if span["attributes"]["health_check.name"] == "background"
    ]


def _two_background_runs(spans: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    return spans if len(_background_runs(spans)) >= 2 else None


# -- helpers --------------------------------------------------------------------------------


def _refused() -> None:
    raise ConnectionRefusedError("to db.internal:5432 as admin")


def _sleeps(seconds: float) -> Callable[[], str]:
    def check() -> str:
        time.sleep(seconds)
        return "late"

    return check


def _on(point: tuple[dict[str, Any], Any], route: str) -> bool:
    return point[0].get("health_check.route") == route


def test_an_sdk_configured_after_the_route_gets_its_spans_and_metrics() -> None:
    """In a process of its own: the global providers are still the API's when the route is
    made, as in an app that configures the SDK at the end of its factory."""
    script = """
from flask import Flask
from flask_status import FlaskStatus
app = Flask("late_sdk")
FlaskStatus(app).add_field("up", lambda: "ok")
from otel_memory import check_spans, configure, finished_spans, metric_points
configure()
app.test_client().get("/api/status")
print([span["name"] for span in check_spans(finished_spans())])
print([value for _, value in metric_points("health_check.status")])
"""
    done = run_script(script)
    assert done.stdout.splitlines() == ["['status check up']", "[1]"]


def test_an_sdk_configured_after_the_route_served_records_the_next_runs() -> None:
    """In a process of its own: the route serves requests before any provider is set (its runs
    record nothing), then the app sets the SDK; the next run has its span, with the check's
    own span nested in it, and its measurement."""
    script = """
from flask import Flask
from opentelemetry import trace
from flask_status import FlaskStatus
app = Flask("late_sdk")
tracer = trace.get_tracer("late_sdk")
def up():
    with tracer.start_as_current_span("query"):
        return "ok"
FlaskStatus(app).add_field("up", up)
client = app.test_client()
print([client.get("/api/status").status_code for _ in range(2)])
from otel_memory import configure, finished_spans, metric_points
configure()
print(client.get("/api/status").status_code)
spans = {span["name"]: span for span in finished_spans()}
print(sorted(spans))
print(spans["query"]["parent_id"] == spans["status check up"]["span_id"])
print([value for _, value in metric_points("health_check.duration")])
"""
    done = run_script(script)
    assert done.stdout.splitlines() == [
        "[200, 200]",
        "200",
        "['query', 'status check up']",
        "True",
        "[1]",  # the run after the SDK was set: one measurement
    ]


def test_a_tracer_provider_named_in_the_environment_is_used() -> None:
    """In a process of its own: ``OTEL_PYTHON_TRACER_PROVIDER`` names the SDK's provider, which
    the API loads when first asked; a check sees its run's span, recording, as the current one."""
    script = """
import os
os.environ["OTEL_PYTHON_TRACER_PROVIDER"] = "sdk_tracer_provider"
from flask import Flask
from opentelemetry import trace
from flask_status import FlaskStatus
app = Flask("environment_provider")
def up():
    return trace.get_current_span().is_recording()
FlaskStatus(app).add_field("up", up)
print(app.test_client().get("/api/status").get_json()["up"])
"""
    assert run_script(script).stdout.split() == ["True"]


def test_metrics_alone_are_recorded_without_a_tracer_provider() -> None:
    """In a process of its own whose app set a meter provider and no tracer provider."""
    script = """
from flask import Flask
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from flask_status import FlaskStatus
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
app = Flask("metrics_only")
status = FlaskStatus(app)
status.add_field("up", lambda: "ok")
status.add_field("down", lambda: 1 / 0, critical=False)
print(app.test_client().get("/api/status").status_code)
points = {}
for resource in reader.get_metrics_data().resource_metrics:
    for scope in resource.scope_metrics:
        for metric in scope.metrics:
            for point in metric.data.data_points:
                name = point.attributes["health_check.name"]
                value = getattr(point, "value", None)
                points[metric.name, name] = point.count if value is None else value
print(sorted(points.items()))
"""
    done = run_script(script)
    assert done.stdout.splitlines() == [
        "200",
        "[(('health_check.duration', 'down'), 1), (('health_check.duration', 'up'), 1),"
        " (('health_check.runs', 'down'), 1), (('health_check.runs', 'up'), 1),"
        " (('health_check.status', 'down'), 0), (('health_check.status', 'up'), 1)]",
    ]


def test_a_skipped_run_has_its_span_and_is_counted() -> None:
    app, status = instrumented("/telemetry-skipped")
    status.add_field("broker", _refused)
    status.add_field("workers", lambda: "ok", depends_on="broker", critical=False)
    assert app.test_client().get("/telemetry-skipped").status_code == 503

    skipped = by_name(finished("/telemetry-skipped"))[CHECK_SPAN + "workers"]
    assert skipped["attributes"]["health_check.result"] == "skipped"
    assert skipped["attributes"]["health_check.critical"] is False
    assert skipped["status"] == "UNSET"  # the broker's span says what failed
    assert "error.type" not in skipped["attributes"]
    request = by_name(finished("/telemetry-skipped"))["GET /telemetry-skipped"]
    assert skipped["parent_id"] == request["span_id"]  # the request started it
    runs = {
        attributes["health_check.name"]: attributes["health_check.result"]
        for attributes, _ in metric_points("health_check.runs")
        if attributes["health_check.route"] == "/telemetry-skipped"
    }
    assert runs == {"broker": "failing", "workers": "skipped"}


def test_the_status_gauge_reads_what_the_field_shows_thresholds_applied() -> None:
    app, status = instrumented("/telemetry-threshold")
    failing = threading.Event()

    def flaky() -> str:
        if failing.is_set():
            raise ConnectionRefusedError("flaky")
        return "ok"

    status.add_field("flaky", flaky, failure_threshold=3)
    client = app.test_client()
    assert client.get("/telemetry-threshold").status_code == 200
    failing.set()
    assert client.get("/telemetry-threshold").status_code == 200  # held back: 1 failure of 3

    def gauge() -> list[Any]:
        points = metric_points("health_check.status")
        return [
            value
            for attributes, value in points
            if attributes["health_check.route"] == "/telemetry-threshold"
        ]

    assert gauge() == [1]
    for _ in range(2):
        client.get("/telemetry-threshold")
    assert gauge() == [0]


def test_a_broken_span_processor_costs_spans_not_fields() -> None:
    """In a process of its own, whose SDK has a processor that raises as a span starts: the
    checks still run and report, a skipped field included, and the failure is logged."""
    script = """
import json
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
class Broken(SpanProcessor):
    def on_start(self, span, parent_context=None):
        raise RuntimeError("processor broken")
provider = TracerProvider()
provider.add_span_processor(Broken())
trace.set_tracer_provider(provider)
from flask import Flask
from flask_status import FlaskStatus
app = Flask("broken_processor")
status = FlaskStatus(app)
status.add_field("sync", lambda: "ok")
async def check():
    return "ok"
status.add_field("async", check)
status.add_field("dependent", lambda: "ok", depends_on="brokr", critical=False)
response = app.test_client().get("/api/status")
print(response.status_code, json.dumps(response.get_json(), sort_keys=True))
"""
    done = run_script(script)
    code, body = done.stdout.split(" ", 1)
    assert code == "200"
    answer = json.loads(body)
    assert (answer["sync"], answer["async"], answer["status"]) == ("ok", "ok", "DEGRADED")
    assert answer["dependent"]["error"].startswith("depends_on: no field 'brokr'")
    assert "status telemetry failed for field 'sync'" in done.stderr


def test_a_tracer_that_raises_leaves_no_skip_unfinished(monkeypatch: pytest.MonkeyPatch) -> None:
    app, status = instrumented("/telemetry-broken-tracer")
    status.add_field("broker", _refused, critical=False)
    status.add_field("workers", lambda: "never run", depends_on="broker", critical=False)
    client = app.test_client()
    assert client.get("/telemetry-broken-tracer").status_code == 200
    (route,) = app.extensions[EXTENSION_KEY]
    assert route.evaluator.telemetry is not None

    def broken(item: Any) -> Any:
        raise RuntimeError("the tracer is broken")

    monkeypatch.setattr(route.evaluator.telemetry, "start", broken)
    answers: list[Any] = []

    def ask() -> None:
        answers.append(client.get("/telemetry-broken-tracer"))

    for _ in range(2):  # a run left unfinished would hold the next request for good
        asking = threading.Thread(target=ask, daemon=True)
        asking.start()
        asking.join(5)
        assert not asking.is_alive()
    assert [answer.status_code for answer in answers] == [200, 200]
    assert answers[1].get_json()["workers"] == {"error": "skipped: broker is failing"}
