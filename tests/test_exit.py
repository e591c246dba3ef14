"""A sync check hung past its deadline does not hold the process's exit: under every server
form the README lists, the server exits within 5 s of SIGTERM or SIGINT, and quietly. Under an
ASGI server, sync checks run in daemon threads of the process's own loop."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import served_app
from clients import Answer, asgi_get, middleware
from flask import Flask, current_app, request
from helpers import TESTS_DIR, ServerProcess
from servers import gunicorn, hypercorn, uvicorn

from flask_status import FlaskStatus
from flask_status.loop import portal_loop

#: Seconds within which the server must exit after its signal.
EXIT_LIMIT = 5.0
#: Each server's own grace for requests in flight, well past EXIT_LIMIT (gunicorn's default):
#: an exit within the limit is then the process's own, not a grace period running out.
GRACE = "30"

WSGI_APP = "served_app:create_stuck_app()"
ASGI_APP = "served_app:create_stuck_asgi_app()"


def waitress(log: Path) -> ServerProcess:
    argv = [
        sys.executable, "-m", "waitress",
        "--listen=127.0.0.1:{port}",
        "--call", WSGI_APP.removesuffix("()"),
    ]  # fmt: skip
    return ServerProcess(argv, TESTS_DIR, log)


SERVER_FORMS: dict[str, Callable[[Path], ServerProcess]] = {
    "gunicorn-sync": lambda log: gunicorn(WSGI_APP, log, "--graceful-timeout", GRACE),
    "gunicorn-gthread": lambda log: gunicorn(
        WSGI_APP, log, "--graceful-timeout", GRACE, worker_class="gthread", threads=4
    ),
    "gunicorn-gevent": lambda log: gunicorn(
        WSGI_APP, log, "--graceful-timeout", GRACE, worker_class="gevent"
    ),
    "gunicorn-uvicorn-worker": lambda log: gunicorn(
        ASGI_APP,
        log,
        "--graceful-timeout",
        GRACE,
        worker_class="flask_status.uvicorn_worker.UvicornWorker",
    ),
    "uvicorn": lambda log: uvicorn(
        ASGI_APP.removesuffix("()"),
        log,
        "--factory",
        "--reset-contextvars",
        "--timeout-graceful-shutdown",
        GRACE,
    ),
    "hypercorn": lambda log: hypercorn(ASGI_APP, log, "--graceful-timeout", GRACE),
    "waitress": waitress,
}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("form", SERVER_FORMS)
def test_a_hung_sync_check_does_not_hold_the_exit(
    form: str, sig: signal.Signals, tmp_path: Path
) -> None:
    server = SERVER_FORMS[form](tmp_path / "server.log")
    with server:
        reply = server.fetch("/api/stuck")
        assert (reply.status, reply.json()) == (200, served_app.STUCK_BODY), reply.body
        # The check now blocks in its thread, for a minute.
        signalled = time.monotonic()
        server.signal(sig)
        code = server.wait()  # killed after 10 s
        seconds = time.monotonic() - signalled

    log = server.log()
    assert seconds < EXIT_LIMIT, f"exited {seconds:.1f}s after {sig.name}\n{log[-3000:]}"
    assert code in (0, -sig), f"exit code {code}\n{log[-3000:]}"
    assert "Traceback" not in log, log[-3000:]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sync_checks_awaited_on_a_loop_in_the_main_thread_run_in_daemon_threads(
    backend: str,
) -> None:
    """As on an ASGI server's loop: in a thread that does not hold the exit, in the app and
    request context of the request."""
    app = Flask("daemons")
    seen: dict[str, Any] = {}

    def where() -> str:
        thread = threading.current_thread()
        seen.update(daemon=thread.daemon, app=current_app.name, path=request.path)
        return "ok"

    FlaskStatus(app).add_field("where", where)

    answer = anyio.run(asgi_get, middleware(app), "/api/status", backend=backend)

    assert (answer.status, answer.json()) == (200, {"status": "OK", "where": "ok"})
    assert seen == {"daemon": True, "app": "daemons", "path": "/api/status"}


def test_a_sync_check_is_abandoned_when_the_process_loop_stops() -> None:
    """The request answers then, not at the check's deadline, and the next request gets a
    new loop."""
    app = Flask("stopping")
    started, release = threading.Event(), threading.Event()

    def blocked() -> str:
        started.set()
        release.wait(10)
        return "returned"

    FlaskStatus(app).add_field("blocked", blocked, timeout=5, critical=False)
    asgi_app = middleware(app)

    async def stop_the_loop_while_it_runs() -> Answer:
        answers: list[Answer] = []

        async def get() -> None:
            answers.append(await asgi_get(asgi_app, "/api/status"))

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(get)
            assert await anyio.to_thread.run_sync(started.wait, 5)
            await anyio.to_thread.run_sync(portal_loop.stop)
        return answers[0]

    began = time.monotonic()
    answer = anyio.run(stop_the_loop_while_it_runs)
    seconds = time.monotonic() - began
    release.set()

    assert answer.status == 200
    assert "error" in answer.json()["blocked"]
    assert seconds < 4, f"answered after {seconds:.1f}s, at the deadline"
    deadline = time.monotonic() + 10
    while (body := anyio.run(asgi_get, asgi_app, "/api/status").json())["blocked"] != "returned":
        assert time.monotonic() < deadline, body  # "timed out" until the old thread returned
        time.sleep(0.05)


def test_a_background_checks_teardown_at_the_loops_stop_starts_no_other_loop() -> None:
    """A stopping loop tears down the app context of a background check it cancelled in its
    own worker threads: no new loop (nobody would stop it) is started for that."""
    app = Flask("stopping-background")
    started = threading.Event()
    torn_down: list[str] = []

    async def slow() -> str:
        started.set()
        await anyio.sleep(30)
        return "done"

    FlaskStatus(app).add_field("slow", slow, interval=60, timeout=1, critical=False)
    app.teardown_appcontext(lambda error: torn_down.append(threading.current_thread().name))
    app.test_client().get("/api/status")  # starts the background check
    assert started.wait(5)

    portal_loop.stop(timeout=5)  # the run is shielded up to its deadline, then torn down

    deadline = time.monotonic() + 10
    while "flask-status-loop" in {thread.name for thread in threading.enumerate()}:
        assert time.monotonic() < deadline, "an event loop still runs after the stop"
        time.sleep(0.05)
    assert torn_down.count("AnyIO worker thread") == 1  # the check's, not the request's
