"""Readiness over a process's life: the startup gate, draining, and gunicorn's SIGTERM."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import served_app
from clients import MakeClient
from flask import Flask
from helpers import TOKEN, ServerProcess, http_fetch, token_required
from servers import gunicorn

from flask_status import FlaskStatus, drain, lifecycle, mark_started

pytest_plugins = ["reliability_fixtures"]


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting and draining are states of the process: each test begins with neither."""
    monkeypatch.setattr(lifecycle, "_started", False)
    monkeypatch.setattr(lifecycle, "_draining", False)


def test_a_readiness_route_is_starting_until_the_app_says_so(make_client: MakeClient) -> None:
    app = Flask(__name__)
    ready = FlaskStatus(app, url="/readyz", readiness=True, started_by="app")
    ready.add_field("db", lambda: "up")
    live = FlaskStatus(app, url="/livez")
    live.add_field("db", lambda: "up")
    client = make_client(app)

    starting = client.get("/readyz")
    assert (starting.status, starting.json()) == (503, {"status": "STARTING"})
    assert client.get("/livez").status == 200  # liveness has no gate
    mark_started()
    assert client.get("/readyz").json() == {"db": "up", "status": "OK"}


def test_a_readiness_route_is_starting_until_its_gate_fields_succeed(
    make_client: MakeClient,
) -> None:
    app = Flask(__name__)
    ready = FlaskStatus(app, url="/readyz", readiness=True, started_by=["cache"])
    results = iter([ConnectionError("warming"), "warm", ConnectionError("evicted")])

    def cache() -> str:
        result = next(results)
        if isinstance(result, Exception):
            raise result
        return result

    ready.add_field("cache", cache, critical=False)
    client = make_client(app)

    first = client.get("/readyz")
    assert (first.status, first.json()["status"]) == (503, "STARTING")
    assert client.get("/readyz").json() == {"cache": "warm", "status": "OK"}
    # Once open, the gate stays open: a later failure is an ordinary (here non-critical) one.
    assert client.get("/readyz").json()["status"] == "DEGRADED"


def test_a_started_by_key_that_is_no_field_says_so(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A typo in ``started_by`` is not an endless STARTING: the answer, the log (once) and
    ``flask status`` name it. Fields come after the constructor: it is found on request."""
    app = Flask(__name__)
    ready = FlaskStatus(app, url="/readyz", readiness=True, started_by=["databse"])
    ready.add_field("database", lambda: "up")
    client = make_client(app)
    expected = {
        "status": "STARTING",
        "started_by": {"error": "no field 'databse' (fields: database)"},
    }

    with caplog.at_level(logging.INFO, logger=app.logger.name):
        answers = [client.get("/readyz") for _ in range(3)]
    assert [(answer.status, answer.json()) for answer in answers] == [(503, expected)] * 3
    [logged] = [record for record in caplog.records if "databse" in record.getMessage()]
    assert logged.levelname == "ERROR"
    assert "started_by" in logged.getMessage()

    command = app.test_cli_runner().invoke(args=["status"])
    assert (command.exit_code, json.loads(command.output)) == (1, expected)

    ready.add_field("databse", lambda: "up")  # the key it names, added late: the gate works
    assert client.get("/readyz").json() == {"database": "up", "databse": "up", "status": "OK"}


@pytest.mark.parametrize("key", ["status", "cached", "drain", "db/primary"])
def test_a_started_by_key_no_field_can_have_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match=f"started_by names {key!r}, which no field can have"):
        FlaskStatus(readiness=True, started_by=["database", key])


def test_draining_fails_readiness_without_running_checks(make_client: MakeClient) -> None:
    app = Flask(__name__)
    ran: list[str] = []
    ready = FlaskStatus(app, url="/readyz", readiness=True)
    ready.add_field("db", lambda: ran.append("db") or "up")
    FlaskStatus(app, url="/livez")
    client = make_client(app)

    assert client.get("/readyz").status == 200
    drain()
    draining = client.get("/readyz")
    assert (draining.status, draining.json()) == (503, {"status": "DRAINING"})
    health_json = client.get("/readyz", headers={"Accept": "application/health+json"})
    assert health_json.json() == {"status": "fail", "output": "draining", "checks": {}}
    assert client.get("/livez").status == 200
    assert ran == ["db"]


def test_the_drain_trigger_is_guarded_like_the_status_route(tmp_path: Path) -> None:
    app = Flask(__name__)
    drain_file = tmp_path / "draining"
    FlaskStatus(
        app, url="/readyz", readiness=True, authenticator=token_required, drain_file=str(drain_file)
    )
    client = app.test_client()

    assert client.post("/readyz/drain").status_code == 401
    assert not lifecycle.draining(str(drain_file))
    answer = client.post("/readyz/drain", headers=TOKEN)
    assert (answer.status_code, answer.get_json()) == (200, {"status": "DRAINING"})
    assert answer.headers["Cache-Control"] == "no-store"
    assert drain_file.exists()
    assert client.get("/readyz", headers=TOKEN).status_code == 503


def test_a_drain_file_that_cannot_be_created_is_refused_at_setup(tmp_path: Path) -> None:
    """Else the drain trigger would fail, and only its own process would drain."""
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match="drain_file") as refused:
        FlaskStatus(readiness=True, drain_file=str(missing / "drain"))
    assert f"directory {str(missing)!r} does not exist" in str(refused.value)

    app = Flask(__name__)
    app.config["STATUS_DRAIN_FILE"] = str(missing / "drain")
    with pytest.raises(ValueError, match="STATUS_DRAIN_FILE") as refused:
        FlaskStatus(app, readiness=True)
    assert str(missing) in str(refused.value)
    assert [rule.endpoint for rule in app.url_map.iter_rules()] == ["static"]  # nothing added

    with pytest.raises(ValueError, match=r"drain_file .* is a directory"):
        FlaskStatus(readiness=True, drain_file=str(tmp_path))


def test_a_drain_file_that_cannot_be_made_at_drain_time_is_said_not_a_500() -> None:
    """/proc passes the setup checks (it exists, and root may write) but takes no new file:
    the trigger drains its own process and says that the others were not told."""
    app = Flask(__name__)
    FlaskStatus(
        app,
        url="/readyz",
        readiness=True,
        drain_file="/proc/flask-status-drain",
        drain_trigger=True,
    ).add_field("db", lambda: "up")
    client = app.test_client()

    answer = client.post("/readyz/drain")

    assert answer.status_code == 503
    body = answer.get_json()
    assert body["status"] == "DRAINING"
    assert body["error"].startswith("drain_file: ") and "only this process drains" in body["error"]
    assert client.get("/readyz").status_code == 503  # this process drains all the same


@pytest.mark.parametrize(
    ("drain_trigger", "authenticator", "served"),
    [
        (None, None, False),  # open to anyone: not served unless asked for
        (None, token_required, True),
        (True, None, True),
        (False, token_required, False),
    ],
)
def test_the_drain_trigger_is_served_when_guarded_or_asked_for(
    tmp_path: Path, drain_trigger: bool | None, authenticator: Any, served: bool
) -> None:
    app = Flask(__name__)
    drain_file = tmp_path / "draining"
    FlaskStatus(
        app,
        url="/readyz",
        readiness=True,
        authenticator=authenticator,
        drain_trigger=drain_trigger,
        drain_file=str(drain_file),
    )
    answer = app.test_client().get("/readyz/drain", headers=TOKEN)
    assert answer.status_code == (200 if served else 404)
    assert lifecycle.draining() is served
    assert drain_file.exists() is served


def test_the_drain_trigger_setting_comes_from_app_config_too() -> None:
    app = Flask(__name__)
    app.config["STATUS_DRAIN_TRIGGER"] = True
    FlaskStatus(app, url="/readyz", readiness=True)
    assert app.test_client().post("/readyz/drain").status_code == 200

    app = Flask(__name__)
    app.config["STATUS_DRAIN_TRIGGER"] = "yes"
    with pytest.raises(TypeError, match="STATUS_DRAIN_TRIGGER"):
        FlaskStatus(app, url="/readyz", readiness=True)


def test_drain_trigger_needs_a_readiness_route() -> None:
    with pytest.raises(ValueError, match=r"drain_trigger .* readiness=True"):
        FlaskStatus(Flask(__name__), drain_trigger=True)


def test_drain_is_a_reserved_key_on_a_readiness_route() -> None:
    with pytest.raises(ValueError, match='"drain" is reserved'):
        FlaskStatus(Flask(__name__), readiness=True).add_field("drain", 1)


@pytest.mark.parametrize("started_by", ["app", ["db"]])
def test_started_by_needs_a_readiness_route(started_by: Any) -> None:
    with pytest.raises(ValueError, match="readiness=True"):
        FlaskStatus(Flask(__name__), started_by=started_by)


# -- real gunicorn ---------------------------------------------------------------------------


def fetch(server: ServerProcess, path: str) -> Any:
    return http_fetch(server.port, path)


@pytest.fixture
def drain_file(tmp_path: Path) -> Path:
    return tmp_path / "draining"


@pytest.fixture
def lifecycle_server(tmp_path: Path, drain_file: Path) -> Iterator[ServerProcess]:
    with gunicorn(
        "served_app:create_lifecycle_app()",
        tmp_path / "gunicorn.log",
        workers=2,
        threads=4,
        worker_class="gthread",
        env={served_app.DRAIN_FILE_ENV: str(drain_file)},
    ) as server:
        yield server


def test_prestop_drain_then_sigterm_under_gunicorn(
    lifecycle_server: ServerProcess, drain_file: Path
) -> None:
    """The preStop pattern: the hook creates the drain file (``touch``, from an exec hook),
    readiness fails on every worker while requests in flight and new ordinary ones complete,
    then SIGTERM stops the server cleanly."""
    # No authenticator: the drain trigger is not served, so no one else can drain the server.
    assert fetch(lifecycle_server, "/readyz/drain").status == 404
    assert not drain_file.exists()
    assert fetch(lifecycle_server, "/readyz").status == 200
    slow: list[Any] = []
    in_flight = threading.Thread(target=lambda: slow.append(fetch(lifecycle_server, "/slow")))
    in_flight.start()
    time.sleep(0.2)  # the slow request is being served

    drain_file.touch()
    readiness = [fetch(lifecycle_server, "/readyz") for _ in range(10)]
    assert {reply.status for reply in readiness} == {503}
    assert len({reply.headers["x-pid"] for reply in readiness}) == 2, "both workers answered"
    assert fetch(lifecycle_server, "/livez").status == 200
    assert all(fetch(lifecycle_server, "/hello").status == 200 for _ in range(5))
    in_flight.join(10)
    assert [reply.status for reply in slow] == [200]

    assert lifecycle_server.stop(signal.SIGTERM) == 0


#: How long :func:`drain_on_sigterm` drains in the tests below, and the graceful timeout they
#: give gunicorn: a worker that has not stopped by then is killed.
DRAIN_SECONDS = 3.0
LATE_SECONDS = 10
DRAIN_WORKERS = 2


@pytest.mark.parametrize(
    ("worker_class", "app", "exit_line"),
    [
        ("sync", "served_app:create_lifecycle_app()", "Worker exiting"),
        ("gthread", "served_app:create_lifecycle_app()", "Worker exiting"),
        ("gevent", "served_app:create_lifecycle_app()", "Worker exiting"),
        (
            "flask_status.uvicorn_worker.UvicornWorker",
            "served_app:create_lifecycle_asgi_app()",
            "Finished server process",
        ),
    ],
)
def test_drain_on_sigterm_keeps_serving_with_readiness_failing(
    tmp_path: Path, worker_class: str, app: str, exit_line: str
) -> None:
    """After SIGTERM each worker answers readiness 503 DRAINING and serves every other route
    for the given seconds, then stops on its own, before gunicorn would kill it."""
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(
        "from flask_status.gunicorn import drain_on_sigterm\n"
        f"post_worker_init = drain_on_sigterm(seconds={DRAIN_SECONDS})\n"
    )
    server = gunicorn(
        app,
        tmp_path / "gunicorn.log",
        "-c", str(config),
        "--graceful-timeout", str(LATE_SECONDS),  # replaces the shorter one of gunicorn()
        worker_class=worker_class,
        workers=DRAIN_WORKERS,
    )  # fmt: skip
    with server:
        # Every worker serves, and so has its hook in place (uvicorn's takes it on its first tick).
        serving: set[str] = set()
        deadline = time.monotonic() + 20
        while len(serving) < DRAIN_WORKERS:
            assert time.monotonic() < deadline, f"only workers {serving} answered"
            reply = fetch(server, "/readyz")
            assert reply.status == 200
            serving.add(reply.headers["x-pid"])
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        # Each worker logs once it drains.
        while server.log().count("draining for") < DRAIN_WORKERS:
            assert time.monotonic() < started + DRAIN_SECONDS / 2, server.log()
            time.sleep(0.02)
        probes = []
        while time.monotonic() < started + DRAIN_SECONDS - 1:  # a second short of its end
            probes.append([fetch(server, path) for path in ("/readyz", "/livez", "/hello")])
        assert probes
        for readiness, liveness, hello in probes:
            assert (readiness.status, readiness.json()) == (503, {"status": "DRAINING"})
            assert (liveness.status, hello.status) == (200, 200)
        assert server.wait() == 0
        stopped = time.monotonic() - started
    log = server.log()
    assert DRAIN_SECONDS <= stopped < LATE_SECONDS, log
    assert log.count(exit_line) == DRAIN_WORKERS, log
    assert "Traceback" not in log
    assert "ERROR" not in log


def test_background_checks_restart_in_each_forked_worker(tmp_path: Path) -> None:
    """Started at import in the gunicorn master (``--preload``): each worker runs its own."""
    with gunicorn(
        "served_app:create_preload_background_app()",
        tmp_path / "gunicorn.log",
        workers=2,
        preload=True,
    ) as server:
        seen: dict[str, int] = {}
        deadline = time.monotonic() + 20
        while len(seen) < 2 and time.monotonic() < deadline:
            reply = fetch(server, "/api/status")
            assert reply.status == 200, reply.body
            seen[reply.headers["x-pid"]] = reply.json()["pid"]
        assert len(seen) == 2, "both workers answered"
        assert all(int(pid) == value for pid, value in seen.items()), seen
