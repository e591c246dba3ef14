"""The scenario of a fleet sharing its results through Redis (12): gunicorn processes serving
``store_app``, without and with the store, through an outage of redis-server, and the cost of
reading a result from the store."""

from __future__ import annotations

import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, replace
from pathlib import Path

import peers
import servers
import store_app
from apps import URL
from flask import Flask
from report import CONTENDERS, OURS, Row, Target, judged, seconds
from servers import BenchError

from flask_status import FlaskStatus
from flask_status.route import EXTENSION_KEY

FLEET_PODS, FLEET_WORKERS = 2, 4
FLEET_PROBES, FLEET_SECONDS, FLEET_CLIENTS = 400, 10.0, 20
SHARING_TITLE = (
    f"12. Sharing through Redis: {FLEET_PODS} gunicorn processes x {FLEET_WORKERS} workers, "
    f"`cache_ttl={store_app.CACHE_TTL:g}`, {FLEET_PROBES} probes over {FLEET_SECONDS:g} s from "
    f"{FLEET_CLIENTS} clients"
)
PERIOD_TARGET = Target("≤", 1, " per period", what="executions")
READ_TARGET = Target("≤", 1.5, "x local cache", what="p50")


@dataclass(frozen=True)
class FleetRun:
    """What a fleet did under load: when its check ran, and how its answers went."""

    executions: list[float]
    answers: int
    failed: int  # answers not 200 with the field "up"
    slowest: float
    ended: float  # Unix time the probes ended

    def most_per_period(self) -> int:
        """The most executions within one cache period."""
        times, period = self.executions, store_app.CACHE_TTL
        return max((sum(1 for t in times if s <= t < s + period) for s in times), default=0)


class RedisProcess:
    """redis-server on a free port of 127.0.0.1, without persistence; restarts keep the port."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = servers.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""],
            cwd=tempfile.gettempdir(),
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + servers.START_SECONDS
        while time.monotonic() < deadline:
            with suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
                return
            time.sleep(0.05)
        raise BenchError("redis-server did not start")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
            self._process = None


@peers.needs(peers.redis_server, SHARING_TITLE)
def through_redis(redis_server: str) -> list[Row]:
    """The check's executions across a fleet, without and with the store; an outage; the cost
    of reading a result from the store."""
    redis = RedisProcess(redis_server)
    redis.start()
    try:
        alone = run_fleet("")
        shared = run_fleet(redis.url)
        restarted: list[float] = []

        def outage() -> None:
            time.sleep(3)
            redis.stop()
            time.sleep(3)
            redis.start()
            restarted.append(time.time())

        down = run_fleet(redis.url, outage)
        local, from_store = store_read_latency(redis.url)
    finally:
        redis.stop()
    fleet = f"{FLEET_PODS * FLEET_WORKERS} workers"
    # Sharing is back when, from one period after the restart, the fleet runs the check about
    # once a period again (alone, its 8 workers would run it 8 times).
    since = restarted[0] + store_app.CACHE_TTL
    after = [t for t in down.executions if t >= since]
    periods = max(0.0, down.ended - since) / store_app.CACHE_TTL
    resumed = len(after) <= periods + 1
    return [
        fleet_row(f"without a store: {fleet}", alone, None),
        fleet_row(f"{CONTENDERS[OURS]}, `store=` Redis: {fleet}", shared, PERIOD_TARGET),
        Row(
            SHARING_TITLE,
            f"{CONTENDERS[OURS]}: redis-server stopped 3 s in, restarted 3 s later",
            f"{down.failed} of {down.answers} answers failed; slowest {seconds(down.slowest)}; "
            f"from one period after the restart, {len(after)} executions in {periods:.1f} "
            "periods",
            "",
            "0 failed, slowest ≤ 1 s timeout, shared again",
            "PASS" if down.failed == 0 and down.slowest <= 1.0 and resumed else "FAIL",
        ),
        judged(
            SHARING_TITLE,
            f"{CONTENDERS[OURS]}: a probe served from the store, against the local cache",
            f"p50 {seconds(from_store)} against {seconds(local)}",
            f"{from_store / local:.2f}x local cache",
            from_store / local,
            READ_TARGET,
        ),
    ]


def fleet_row(contender: str, run: FleetRun, target: Target | None) -> Row:
    most = run.most_per_period()
    measured = (
        f"{len(run.executions)} executions, at most {most} per {store_app.CACHE_TTL:g} s; "
        f"{run.answers - run.failed} of {run.answers} answers correct"
    )
    row = judged(SHARING_TITLE, contender, measured, "", most, target)
    return row if run.failed == 0 else replace(row, result="FAIL (wrong answers)")


def run_fleet(store: str, during: Callable[[], None] | None = None) -> FleetRun:
    """The fleet under :data:`FLEET_PROBES` probes; ``during`` runs meanwhile."""
    with tempfile.TemporaryDirectory() as directory, ExitStack() as stack:
        executions = Path(directory) / "executions"
        environment = {"BENCH_STORE": store, "BENCH_EXECUTIONS": str(executions)}
        bases = [
            stack.enter_context(
                servers.gunicorn(
                    "store_app:app",
                    f"fleet-{pod}",
                    "-w",
                    str(FLEET_WORKERS),
                    environment=environment,
                )
            )
            for pod in range(FLEET_PODS)
        ]
        executions.write_text("")  # the runs of start-up do not count
        answers, failed, slowest = probe_fleet(bases, during)
        ended = time.time()
        times = sorted(float(line) for line in executions.read_text().split())
    return FleetRun(times, answers, failed, slowest, ended)


def probe_fleet(bases: list[str], during: Callable[[], None] | None) -> tuple[int, int, float]:
    """Probes from :data:`FLEET_CLIENTS` threads spread over :data:`FLEET_SECONDS`; the
    answers, the failed ones, and the slowest."""
    per_client = FLEET_PROBES // FLEET_CLIENTS
    pause = FLEET_SECONDS / per_client
    durations: list[float] = []
    failed: list[str] = []

    def client(index: int) -> None:
        for n in range(per_client):
            url = bases[(index + n) % len(bases)] + URL
            sent = time.perf_counter()
            try:
                database = servers.get_json(url).get("database")
            except (OSError, ValueError) as exc:
                database = repr(exc)
            took = time.perf_counter() - sent
            durations.append(took)
            if database != "up":
                failed.append(str(database))
            time.sleep(max(0.0, pause - took))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(FLEET_CLIENTS)]
    for thread in threads:
        thread.start()
    if during is not None:
        during()
    for thread in threads:
        thread.join()
    return len(durations), len(failed), max(durations, default=0.0)


def store_read_latency(url: str, rounds: int = 5, requests: int = 200) -> tuple[float, float]:
    """p50 of a probe served from the local cache, and of one whose process has no result of
    its own and reads the store (test client, one process)."""
    app = Flask("bench_store_read")
    FlaskStatus(app, store=url, cache_ttl=60).add_field("database", lambda: "up")
    client = app.test_client()
    evaluator = app.extensions[EXTENSION_KEY][0].evaluator
    local: list[float] = []
    from_store: list[float] = []
    for _ in range(50):
        client.get(URL)
    for _ in range(rounds):
        for times, forget in ((local, False), (from_store, True)):
            for _ in range(requests):
                if forget:
                    evaluator.after_fork()  # as a new process: nothing of its own
                sent = time.perf_counter()
                client.get(URL)
                times.append(time.perf_counter() - sent)
    return statistics.median(local), statistics.median(from_store)
