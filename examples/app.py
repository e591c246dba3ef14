"""Example app served by ``make run``: open http://127.0.0.1:5000/api/status."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from asgiref.wsgi import WsgiToAsgi
from flask import Flask

from flask_status import FlaskStatus
from flask_status.asgi import StatusMiddleware

DATABASE = Path(__file__).with_name("example.db")

app = Flask(__name__)
status = FlaskStatus(app, timeout=0.8)


@app.get("/")
def index() -> str:
    return "Hello! The status endpoint is at /api/status\n"


def database() -> dict[str, object]:
    """A real query against an embedded SQLite database."""
    started = time.perf_counter()
    with sqlite3.connect(DATABASE) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS visits (at REAL)")
        connection.execute("INSERT INTO visits VALUES (?)", (time.time(),))
        (count,) = connection.execute("SELECT count(*) FROM visits").fetchone()
    return {"visits": count, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


async def cache() -> str:
    """An async check, e.g. a ping to a cache server."""
    await asyncio.sleep(0.01)
    return "reachable"


def slow_report() -> str:
    """A slow sync check: runs in a worker thread, concurrently with the others."""
    time.sleep(0.3)
    return "done"


def mail_server() -> bool:
    """A non-critical dependency that is down: the status becomes DEGRADED, still HTTP 200."""
    raise ConnectionRefusedError("smtp.example.invalid:25 refused the connection")


status.add_field("version", "2.0.0")
status.add_field("database", database)
status.add_field("cache", cache)
status.add_field("report", slow_report)
status.add_field("mail", mail_server, critical=False)

#: Served by uvicorn: status routes on the event loop, everything else through WsgiToAsgi.
asgi_app = StatusMiddleware(WsgiToAsgi(app), app)
