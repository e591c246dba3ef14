"""StatusMiddleware speaks the ASGI lifespan protocol: real uvicorn and hypercorn, clean logs,
background checks started at startup and stopped at shutdown."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import served_app
from asgiref.wsgi import WsgiToAsgi
from flask import Flask
from helpers import ServerProcess
from servers import hypercorn, uvicorn

from flask_status import lifecycle
from flask_status.asgi import StatusMiddleware


@pytest.fixture(autouse=True)
def not_draining(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lifespan shutdown drains this process: undone after each test."""
    monkeypatch.setattr(lifecycle, "_draining", False)


#: What a server logs when an app does not speak lifespan, or fails at it.
LIFESPAN_TROUBLE = ("lifespan", "Traceback", "Task was destroyed", "Exception ignored")


def launch_uvicorn(log: Path) -> ServerProcess:
    return uvicorn("served_app:create_background_asgi_app", log, "--factory")


def launch_hypercorn(log: Path) -> ServerProcess:
    return hypercorn("served_app:create_background_asgi_app()", log)


@pytest.mark.parametrize("launch", [launch_uvicorn, launch_hypercorn], ids=["uvicorn", "hypercorn"])
def test_background_checks_run_from_startup_to_shutdown(
    tmp_path: Path, launch: Callable[[Path], ServerProcess]
) -> None:
    log = tmp_path / "server.log"
    with launch(log) as server:
        time.sleep(3 * served_app.BACKGROUND_INTERVAL)  # no status request yet
        first = server.fetch("/api/status").json()
        assert first["status"] == "OK"
        assert first["runs"] >= 2, first  # ran since startup, not since the first request
        time.sleep(3 * served_app.BACKGROUND_INTERVAL)
        assert server.fetch("/api/status").json()["runs"] > first["runs"]
        stopped = time.monotonic()
        # uvicorn ends by raising the signal again, as a process stopped by it would.
        assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        assert time.monotonic() - stopped < 5  # no background run held the exit

    text = log.read_text()
    trouble = [line for line in text.splitlines() if any(w in line for w in LIFESPAN_TROUBLE)]
    assert trouble == [], text


class LifespanApp:
    """An ASGI app that speaks lifespan, recording the events it got."""

    def __init__(self, fail_startup: bool = False) -> None:
        self.events: list[str] = []
        self.fail_startup = fail_startup

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            self.events.append(message["type"])
            if message["type"] == "lifespan.startup":
                if self.fail_startup:
                    await send({"type": "lifespan.startup.failed", "message": "no database"})
                    return
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return


async def lifespan(asgi_app: Any) -> list[dict[str, Any]]:
    """Drive the lifespan protocol as a server does; what the app sent back."""
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asgi_app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    return sent


def test_lifespan_events_are_passed_on_to_a_wrapped_app_that_speaks_it() -> None:
    inner = LifespanApp()
    sent = anyio.run(lifespan, StatusMiddleware(inner, Flask(__name__)))
    assert inner.events == ["lifespan.startup", "lifespan.shutdown"]
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]


def test_a_wrapped_apps_failed_startup_is_reported() -> None:
    sent = anyio.run(lifespan, StatusMiddleware(LifespanApp(fail_startup=True), Flask(__name__)))
    assert sent == [{"type": "lifespan.startup.failed", "message": "no database"}]


def test_an_app_without_lifespan_support_still_starts_and_stops() -> None:
    app = Flask(__name__)
    sent = anyio.run(lifespan, StatusMiddleware(WsgiToAsgi(app), app))
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
