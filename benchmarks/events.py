"""The scenario of change events (13): how many a fleet announces for a shared check that
flips, with and without the store; and what having a listener costs a request."""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from contextlib import ExitStack, suppress
from pathlib import Path

import peers
import servers
import store_app
from apps import URL
from flask import Flask
from report import CONTENDERS, OURS, Row, Target, judged, seconds
from sharing import FLEET_PODS, FLEET_WORKERS, RedisProcess

from flask_status import FlaskStatus

FLIPS = 3
#: Seconds each state lasts: every worker probes several times per cache period meanwhile.
STATE_SECONDS = 1.5 * store_app.CACHE_TTL
CLIENTS = 16
EVENTS_TITLE = (
    f"14. Change events: a shared check flipping {FLIPS} times on {FLEET_PODS} gunicorn "
    f"processes x {FLEET_WORKERS} workers (`cache_ttl={store_app.CACHE_TTL:g}`); a request's "
    "cost with a listener"
)
FLEET_TARGET = Target("≤", FLIPS + 1, " field events", what="announced")
COST_TARGET = Target("≤", 1.05, "x without", what="p50")


@peers.needs(peers.redis_server, EVENTS_TITLE)
def change_events(redis_server: str) -> list[Row]:
    redis = RedisProcess(redis_server)
    redis.start()
    try:
        alone = announced("")
        shared = announced(redis.url)
    finally:
        redis.stop()
    ratio, without, with_listener = listener_cost()
    fleet = f"{FLEET_PODS * FLEET_WORKERS} workers"
    return [
        fleet_row(f"without a store: {fleet}, each announcing its own", alone, None),
        fleet_row(f"{CONTENDERS[OURS]}, `store=` Redis: {fleet}", shared, FLEET_TARGET),
        judged(
            EVENTS_TITLE,
            f"{CONTENDERS[OURS]}: a request running its check, with an `on_change` listener",
            f"p50 {seconds(with_listener)} against {seconds(without)} without",
            f"{ratio:.2f}x without",
            ratio,
            COST_TARGET,
        ),
    ]


def fleet_row(contender: str, events: list[str], target: Target | None) -> Row:
    fields = [line for line in events if line.startswith("database ")]
    measured = f"{len(fields)} field events, {len(events) - len(fields)} overall"
    return judged(EVENTS_TITLE, contender, measured, "", len(fields), target)


def announced(store: str) -> list[str]:
    """The events a fleet announces while its check is up, down, up, down."""
    with tempfile.TemporaryDirectory() as directory, ExitStack() as stack:
        state, events = Path(directory) / "state", Path(directory) / "events"
        state.write_text("up")
        events.write_text("")
        environment = {
            "BENCH_STORE": store,
            "BENCH_EXECUTIONS": str(Path(directory) / "executions"),
            "BENCH_STATE": str(state),
            "BENCH_EVENTS": str(events),
        }
        bases = [
            stack.enter_context(
                servers.gunicorn(
                    "store_app:app",
                    f"events-{pod}",
                    "-w",
                    str(FLEET_WORKERS),
                    environment=environment,
                )
            )
            for pod in range(FLEET_PODS)
        ]
        stop = threading.Event()

        def client(index: int) -> None:
            while not stop.is_set():
                with suppress(OSError, ValueError):  # a 503 while the check is down
                    servers.get_json(bases[index % len(bases)] + URL)
                time.sleep(0.05)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        try:
            for flip in range(FLIPS + 1):
                state.write_text("down" if flip % 2 else "up")
                time.sleep(STATE_SECONDS)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        time.sleep(1.0)  # the last events, delivered off the request path
        return events.read_text().splitlines()


def listener_cost(rounds: int = 9, requests: int = 300) -> tuple[float, float, float]:
    """What an ``on_change`` listener costs a request whose check runs each time (test client,
    one process): the median of per-round ratios of p50s, and the p50s without and with it.
    Rounds alternate, and which goes first swaps each round."""
    clients = []
    for listen in (False, True):
        app = Flask(f"bench_events_{listen}")
        status = FlaskStatus(app)
        status.add_field("database", lambda: "up")
        if listen:
            status.on_change(lambda event: None)
        clients.append(app.test_client())
    medians: list[list[float]] = [[], []]
    for client in clients:
        for _ in range(50):
            client.get(URL)
    for number in range(rounds):
        for which in (0, 1) if number % 2 else (1, 0):
            times = []
            for _ in range(requests):
                sent = time.perf_counter()
                clients[which].get(URL)
                times.append(time.perf_counter() - sent)
            medians[which].append(statistics.median(times))
    without, with_listener = medians
    ratio = statistics.median(
        mine / theirs for mine, theirs in zip(with_listener, without, strict=True)
    )
    return ratio, statistics.median(without), statistics.median(with_listener)
