"""The app the load test serves with uvicorn: one status route per kind of answer."""

from __future__ import annotations

import asyncio
import time

from asgiref.wsgi import WsgiToAsgi
from flask import Flask

from flask_status import FlaskStatus
from flask_status.asgi import StatusMiddleware

#: Each route and the status code every answer from it must have.
EXPECTED = {
    "/healthy": 200,
    "/degraded": 200,
    "/down": 503,
    "/slow": 200,
    "/hello": 200,  # not a status route: passed on to the Flask app
}

app = Flask(__name__)


@app.get("/hello")
def hello() -> str:
    return "hello"


def database() -> dict[str, int]:
    return {"rows": 3}


async def cache() -> str:
    await asyncio.sleep(0.001)
    return "reachable"


def broken() -> None:
    raise ConnectionError("dependency unreachable")


async def broken_async() -> None:
    await asyncio.sleep(0.001)
    raise TimeoutError("no answer")


def slow_sync() -> str:
    time.sleep(0.05)
    return "done"


async def slow_async() -> str:
    await asyncio.sleep(0.05)
    return "done"


healthy = FlaskStatus(app, url="/healthy")
healthy.add_field("database", database)
healthy.add_field("cache", cache)
healthy.add_field("version", "2.0.0")

degraded = FlaskStatus(app, url="/degraded")
degraded.add_field("database", database)
degraded.add_field("mail", broken, critical=False)
degraded.add_field("search", broken_async, critical=False)

down = FlaskStatus(app, url="/down")
down.add_field("cache", cache)
down.add_field("database", broken)

slow = FlaskStatus(app, url="/slow", timeout=0.5)
slow.add_field("report", slow_sync)
slow.add_field("index", slow_async)

asgi_app = StatusMiddleware(WsgiToAsgi(app), app)
