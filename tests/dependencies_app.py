"""An app whose checks depend on each other, for ``test_dependencies.py``: served through the
Flask test client (the WSGI portal path) and by uvicorn under StatusMiddleware.

Each status URL is a FlaskStatus of its own, for one situation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from asgiref.wsgi import WsgiToAsgi
from flask import Flask

from flask_status import FlaskStatus
from flask_status.asgi import StatusMiddleware

#: How long each check of the ``/chain`` route takes.
STEP_SECONDS = 0.1
#: Timeout of ``/hung``'s hung checks; their dependents' is ``DEPENDENT_TIMEOUT`` or the same.
HUNG_TIMEOUT = 0.3
DEPENDENT_TIMEOUT = 0.5
#: ``/deadline``: the parent takes ``PARENT_SECONDS``, the child ``CHILD_SECONDS``; both have
#: ``DEADLINE_TIMEOUT``, which the child misses only because its deadline counts from the
#: request's start.
PARENT_SECONDS = 0.3
CHILD_SECONDS = 0.9
DEADLINE_TIMEOUT = 1.0


def timed_async(seconds: float) -> Callable[[], Any]:
    """An async check that takes ``seconds`` and reports when it started and ended."""

    async def check() -> dict[str, float]:
        started = time.time()
        await asyncio.sleep(seconds)
        return {"started": started, "ended": time.time()}

    return check


def timed_sync(seconds: float) -> Callable[[], Any]:
    """A sync check that takes ``seconds`` and reports when it started and ended."""

    def check() -> dict[str, float]:
        started = time.time()
        time.sleep(seconds)
        return {"started": started, "ended": time.time()}

    return check


def refused() -> Any:
    raise ConnectionError("connection refused")


async def hangs() -> Any:
    await asyncio.sleep(60)


def hangs_sync() -> Any:
    time.sleep(2)  # abandoned at its deadline; its thread ends on its own


def create_app() -> Flask:
    app = Flask("dependencies_app")

    @app.get("/hello")
    def hello() -> str:
        return "hello"

    chain = FlaskStatus(app, url="/chain")
    chain.add_field("a", timed_async(STEP_SECONDS))
    chain.add_field("b", timed_sync(STEP_SECONDS), depends_on="a")
    chain.add_field("c", timed_async(STEP_SECONDS), depends_on=["b"])

    broken = FlaskStatus(app, url="/broken")
    broken.add_field("broker", refused, critical=False)
    broken.add_field("workers", timed_async(0), depends_on="broker")
    broken.add_field("tasks", timed_async(0), depends_on="workers", critical=False)
    broken.add_field("queue", "up")

    hung = FlaskStatus(app, url="/hung")
    hung.add_field("hung", hangs, timeout=HUNG_TIMEOUT, critical=False)
    hung.add_field("waiter", timed_async(0), depends_on="hung", timeout=DEPENDENT_TIMEOUT)
    hung.add_field("hung_sync", hangs_sync, timeout=HUNG_TIMEOUT, critical=False)
    # The same timeout as its parent: both deadlines fall at the same instant.
    hung.add_field("same_deadline", timed_async(0), depends_on="hung_sync", timeout=HUNG_TIMEOUT)

    deadline = FlaskStatus(app, url="/deadline", timeout=DEADLINE_TIMEOUT)
    deadline.add_field("parent", timed_async(PARENT_SECONDS))
    deadline.add_field("child", timed_async(CHILD_SECONDS), depends_on="parent", critical=False)

    missing = FlaskStatus(app, url="/missing")
    missing.add_field("workers", timed_async(0), depends_on="brokr", critical=False)
    missing.add_field("broker", "up")
    return app


def create_asgi_app() -> StatusMiddleware:
    app = create_app()
    return StatusMiddleware(WsgiToAsgi(app), app)  # type: ignore[no-untyped-call]
