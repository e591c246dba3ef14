"""What the worker-thread hops of ``StatusMiddleware`` cost: an app's own code (hooks, teardown
functions, signal receivers) runs in worker threads, never on the server's event loop.

    .venv/bin/python benchmarks/asgi_hop.py [--requests 100] [--rounds 40]

Three apps, each with one trivial async check: one with no code of its own (no thread), one
with Flask-SQLAlchemy on SQLite (its ``teardown_appcontext``: one hop, after the checks), one
with a no-op ``before_request`` hook (two hops, before and after). Each is timed in-process
(requests sent one after another to the ASGI app on one asyncio loop) and under a real uvicorn
(one kept-alive connection, requests one after another). Short rounds alternate between the
apps, so that the load of a shared machine falls on all of them alike. For each app: the median
latency over all its requests, its cost over the app without code (the median over rounds of
the difference of the two apps' medians in the round), and the CPU time the serving process
spent per request (all its threads; a loaded machine stretches latencies, not CPU time).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import servers
from apps import STATUS_GET_SCOPE, URL
from asgiref.wsgi import WsgiToAsgi
from flask import Flask

from flask_status import FlaskStatus
from flask_status.asgi import StatusMiddleware

HERE = Path(__file__).resolve().parent
#: Environment variable naming the app uvicorn serves (a key of ``APPS``).
APP_ENV = "ASGI_HOP_APP"


async def ok() -> str:
    return "ok"


def no_app_code() -> Flask:
    app = Flask("no_app_code")
    FlaskStatus(app).add_field("check", ok)
    return app


def flask_sqlalchemy() -> Flask:
    from flask_sqlalchemy import SQLAlchemy

    app = no_app_code()
    database = Path(tempfile.mkdtemp()) / "hop.db"
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{database}"
    SQLAlchemy(app)
    return app


def before_request_hook() -> Flask:
    app = no_app_code()
    app.before_request(lambda: None)
    return app


APPS: dict[str, Callable[[], Flask]] = {
    "no app code": no_app_code,
    "Flask-SQLAlchemy (a teardown)": flask_sqlalchemy,
    "a before_request hook": before_request_hook,
}


def create() -> StatusMiddleware:
    """The app uvicorn serves: ``uvicorn --factory asgi_hop:create``."""
    app = APPS[os.environ[APP_ENV]]()
    return StatusMiddleware(WsgiToAsgi(app), app)  # type: ignore[no-untyped-call]


@dataclass
class Timings:
    """One app's requests: the latency of each, by round, and the CPU time they took."""

    rounds: list[list[float]] = field(default_factory=list)
    cpu_seconds: float = 0.0

    def add(self, latencies: list[float], cpu_seconds: float) -> None:
        self.rounds.append(latencies)
        self.cpu_seconds += cpu_seconds


async def in_process(asgi_app: Any, requests: int) -> tuple[list[float], float]:
    """Latencies of ``requests`` status requests sent one after another to the ASGI app, and
    the CPU time of this process meanwhile."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    latencies = []
    cpu_started = time.process_time()
    for _ in range(requests):
        started = time.perf_counter()
        await asgi_app(dict(STATUS_GET_SCOPE), receive, send)
        latencies.append(time.perf_counter() - started)
    cpu_seconds = time.process_time() - cpu_started
    if set(statuses) != {200}:
        raise RuntimeError(f"answers: {set(statuses)}")
    return latencies, cpu_seconds


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Uvicorn:
    """uvicorn serving one of ``APPS`` on 127.0.0.1, and a kept-alive connection to it."""

    def __init__(self, name: str) -> None:
        self.port = free_port()
        argv = [
            sys.executable, "-m", "uvicorn", "asgi_hop:create", "--factory",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--no-access-log", "--reset-contextvars", "--log-level", "warning",
            "--timeout-keep-alive", "600",  # the connection idles while the others are timed
        ]  # fmt: skip
        env = {**os.environ, APP_ENV: name}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(argv, cwd=HERE, env=env, start_new_session=True)
        self.connection = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                self.get(connection)
                return connection
            except OSError:
                connection.close()
                time.sleep(0.05)
        raise RuntimeError("uvicorn did not start")

    @staticmethod
    def get(connection: http.client.HTTPConnection) -> None:
        connection.request("GET", URL)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"answer: {response.status}")

    def latencies(self, requests: int) -> tuple[list[float], float]:
        """Latencies of ``requests`` requests, and the CPU time of the server meanwhile."""
        latencies = []
        cpu_started = self.cpu_seconds()
        for _ in range(requests):
            started = time.perf_counter()
            self.get(self.connection)
            latencies.append(time.perf_counter() - started)
        return latencies, self.cpu_seconds() - cpu_started

    def cpu_seconds(self) -> float:
        """User and system time of the server process so far (Linux: from /proc)."""
        return servers.cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.connection.close()
        self.process.terminate()
        self.process.wait(10)


def report(where: str, timings: dict[str, Timings]) -> None:
    print(f"\n{where}: latency per request, median (p90); cost over no app code; CPU per request")
    base = [statistics.median(latencies) for latencies in timings["no app code"].rounds]
    for name, timed in timings.items():
        times = [latency for latencies in timed.rounds for latency in latencies]
        median = statistics.median(times)
        p90 = statistics.quantiles(times, n=10)[-1]
        cost = statistics.median(
            statistics.median(latencies) - without
            for latencies, without in zip(timed.rounds, base, strict=True)
        )
        cpu = timed.cpu_seconds / len(times)
        print(
            f"  {name:30} {median * 1e6:5.0f} µs ({p90 * 1e6:5.0f} µs)"
            f"  {cost * 1e6:+5.0f} µs  {cpu * 1e6:5.0f} µs"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100, help="requests per app and round")
    parser.add_argument("--rounds", type=int, default=40)
    options = parser.parse_args()

    apps = {name: create_app() for name, create_app in APPS.items()}
    served = {name: StatusMiddleware(WsgiToAsgi(app), app) for name, app in apps.items()}  # type: ignore[no-untyped-call]
    timings = {name: Timings() for name in APPS}

    async def measure() -> None:
        for asgi_app in served.values():  # warm up
            await in_process(asgi_app, 200)
        for _ in range(options.rounds):
            for name, asgi_app in served.items():
                timings[name].add(*await in_process(asgi_app, options.requests))

    asyncio.run(measure())
    report("in-process, one asyncio loop", timings)

    servers = {name: Uvicorn(name) for name in APPS}
    try:
        timings = {name: Timings() for name in APPS}
        for server in servers.values():
            server.latencies(200)  # warm up
        for _ in range(options.rounds):
            for name, server in servers.items():
                timings[name].add(*server.latencies(options.requests))
    finally:
        for server in servers.values():
            server.stop()
    report("uvicorn, one kept-alive connection", timings)


if __name__ == "__main__":
    main()
