"""The cost of running an ASGI server's sync checks in the process loop's daemon threads.

anyio's worker threads take the daemon flag of their loop's thread. An ASGI server's loop runs
in the main thread, whose worker threads Python waits for at exit, so there a sync check runs in
a worker thread of the process's own loop (a daemon thread), reached through its portal: a hop.
A loop in a daemon thread runs sync checks in worker threads of its own, as every loop did
before. This script awaits the same status requests, in-process through ``StatusMiddleware``,
on a loop in the main thread (the hop) and on a loop in a daemon thread (direct), rounds
alternating, and prints the median time per request of each::

    .venv/bin/python benchmarks/thread_hop.py
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
from asgiref.wsgi import WsgiToAsgi
from flask import Flask

from flask_status import FlaskStatus
from flask_status.asgi import StatusMiddleware

ROUNDS = 7
REQUESTS = 300
CONCURRENCY = (1, 10)


def sync_check() -> bool:
    return True


async def async_check() -> bool:
    return True


def status_app(sync: int, async_: int) -> StatusMiddleware:
    app = Flask(__name__)
    status = FlaskStatus(app)
    for number in range(sync):
        status.add_field(f"sync{number}", sync_check)
    for number in range(async_):
        status.add_field(f"async{number}", async_check)
    return StatusMiddleware(WsgiToAsgi(app), app)  # type: ignore[no-untyped-call]


async def request(app: StatusMiddleware) -> None:
    scope = {"type": "http", "method": "GET", "path": "/api/status", "headers": []}
    answer: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        answer.append(message)

    await app(scope, receive, send)
    assert answer[0]["status"] == 200, answer


async def requests(app: StatusMiddleware, concurrency: int) -> float:
    """Seconds per request, ``concurrency`` requests at a time."""

    async def some() -> None:
        for _ in range(REQUESTS // concurrency):
            await request(app)

    started = time.perf_counter()
    async with anyio.create_task_group() as task_group:
        for _ in range(concurrency):
            task_group.start_soon(some)
    return (time.perf_counter() - started) / REQUESTS


def in_daemon_thread(measure: Callable[[], float]) -> float:
    seconds: list[float] = []
    thread = threading.Thread(target=lambda: seconds.append(measure()), daemon=True)
    thread.start()
    thread.join()
    return seconds[0]


def main() -> None:
    for sync, async_ in ((1, 0), (5, 5)):
        app = status_app(sync, async_)
        for concurrency in CONCURRENCY:

            def measure(app: StatusMiddleware = app, concurrency: int = concurrency) -> float:
                return anyio.run(requests, app, concurrency)

            hop: list[float] = []
            direct: list[float] = []
            measure()  # warm up: the process loop starts, the checks become quick
            for _ in range(ROUNDS):
                hop.append(measure())
                direct.append(in_daemon_thread(measure))
            hop_us, direct_us = statistics.median(hop) * 1e6, statistics.median(direct) * 1e6
            print(
                f"{sync} sync + {async_} async, {concurrency:2d} at a time: "
                f"hop {hop_us:5.0f} µs per request, direct {direct_us:5.0f} µs, "
                f"+{hop_us - direct_us:.0f} µs ({hop_us / direct_us:.2f}x)"
            )


if __name__ == "__main__":
    main()
