"""The scenarios that time each probe's answer on a real server (8 and 11): requests in a row to
``gunicorn -k gevent``, and bursts of concurrent probes to uvicorn; and the memory of live
status streams open on uvicorn (13)."""

from __future__ import annotations

import socket
import statistics
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from operator import attrgetter

import servers
from apps import BLOCK_SECONDS, BLOCK_TIMEOUT, ONE_SLOW, TRIVIAL_MIXED, URL
from report import CONTENDERS, OURS, OURS_HOOKED, Row, Target, judged, median_ratio, seconds
from servers import BenchError

# -- 8. gevent worker ----------------------------------------------------------------------

GEVENT_REQUESTS = 10
GEVENT_TITLE = (
    f"8. gevent worker: `gunicorn -k gevent -w 1`, a sync check blocking "
    f"{BLOCK_SECONDS:g} s below the monkey patching, timeout {BLOCK_TIMEOUT * 1e3:g} ms, "
    f"{GEVENT_REQUESTS} requests in a row"
)
GEVENT_TARGET = Target("≤", (BLOCK_TIMEOUT + 0.05) * 1e3, " ms", what="each")


def gevent_worker() -> list[Row]:
    """Wall time of status requests in a row, each on a connection of its own."""
    with servers.gunicorn_gevent() as base:
        answers = [servers.timed_get(base + URL, timeout=10) for _ in range(GEVENT_REQUESTS)]
    times = [took for took, _ in answers]
    statuses = Counter(status for _, status in answers)
    slowest = max(times)
    seen = ", ".join(f"{status} x{count}" for status, count in statuses.items())
    measured = f"slowest {seconds(slowest)}, median {seconds(statistics.median(times))}; {seen}"
    result = GEVENT_TARGET.result(slowest * 1e3) if set(statuses) == {200} else "FAIL (not 200)"
    return [
        Row(
            GEVENT_TITLE,
            f"{CONTENDERS[OURS]}: 1 blocking sync (not critical) + 1 trivial async",
            measured,
            f"{slowest / BLOCK_TIMEOUT:.2f}x timeout",
            str(GEVENT_TARGET),
            result,
        )
    ]


# -- 11. A request hook --------------------------------------------------------------------

BURST = 150
HOOK_ROUNDS = 5
HOOK_TITLE = (
    f"11. A request hook: uvicorn ³, one {ONE_SLOW.slow_seconds * 1e3:g} ms async check, "
    f"bursts of {BURST} concurrent probes ({HOOK_ROUNDS} rounds)"
)
HOOK_TARGET = Target("≤", 1.3, "x without", what="p50")


@dataclass(frozen=True)
class Burst:
    """The answers to one burst of concurrent probes."""

    p50: float
    slowest: float


def burst(url: str) -> Burst:
    """A burst of ``BURST`` concurrent probes of ``url``; every answer must be 200."""
    answers = servers.burst(url, BURST)
    statuses = Counter(answer.status for answer in answers)
    if set(statuses) != {200}:
        raise BenchError(f"{url} answered a burst with {dict(statuses)}")
    times = [answer.seconds for answer in answers]
    return Burst(statistics.median(times), max(times))


def request_hook() -> list[Row]:
    """Bursts of probes to our status route, in an app without and with a request hook."""
    names = {OURS: "no hook", OURS_HOOKED: "a no-op `@app.before_request` hook"}
    with servers.uvicorns(names, ONE_SLOW, "uvicorn") as urls:
        bursts = servers.interleave(urls, HOOK_ROUNDS, burst, warm_up=burst)
    rows = []
    for name, what in names.items():
        ratio = median_ratio(bursts[name], bursts[OURS], attrgetter("p50"))
        p50 = statistics.median(sample.p50 for sample in bursts[name])
        slowest = statistics.median(sample.slowest for sample in bursts[name])
        rows.append(
            judged(
                HOOK_TITLE,
                f"{CONTENDERS[OURS]}, `StatusMiddleware`: {what}",
                f"latency p50 {seconds(p50)}, slowest {seconds(slowest)}",
                f"p50 {ratio:.2f}x without",
                ratio,
                HOOK_TARGET if name == OURS_HOOKED else None,
            )
        )
    return rows


# -- 13. Live status streams ---------------------------------------------------------------

WATCHERS = 16
WATCH_ROUNDS = 3
WATCH_TITLE = (
    f"16. Live status streams: uvicorn ³, {TRIVIAL_MIXED.sync} sync + {TRIVIAL_MIXED.async_} "
    f"async trivial checks, {WATCHERS} streams (`?watch`) open at once ({WATCH_ROUNDS} rounds)"
)


def open_stream(host: str, port: int) -> socket.socket:
    """A live status stream, once its first document has come."""
    stream = socket.create_connection((host, port), timeout=10)
    stream.sendall(f"GET {URL}?watch HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    received = b""
    while b"data:" not in received or not received.endswith(b"\n\n\r\n"):
        chunk = stream.recv(65536)
        if not chunk:
            raise BenchError(f"the stream ended before its first document: {received[:300]!r}")
        received += chunk
    if not received.startswith(b"HTTP/1.1 200"):
        raise BenchError(f"the stream was refused: {received[:300]!r}")
    return stream


def watchers() -> list[Row]:
    """The server's resident memory with no stream open, then with :data:`WATCHERS`."""
    growths = []
    with servers.uvicorn("flask-status-watched", TRIVIAL_MIXED, "uvicorn-watched") as base:
        host, port = base.removeprefix("http://").split(":")

        def rss() -> float:
            return float(servers.get_json(base + "/rss")["rss_kib"])

        with ExitStack() as warm_up:  # first imports, buffers, the loop's threads
            for _ in range(WATCHERS):
                warm_up.enter_context(open_stream(host, int(port)))
        for _ in range(WATCH_ROUNDS):
            time.sleep(0.5)  # the closed streams' slots and tasks are gone
            before = rss()
            with ExitStack() as streams:
                for _ in range(WATCHERS):
                    streams.enter_context(open_stream(host, int(port)))
                growths.append(rss() - before)
    per_stream = statistics.median(growths) / WATCHERS
    return [
        Row(
            WATCH_TITLE,
            f"{CONTENDERS[OURS]}, `StatusMiddleware`",
            f"RSS growth with {WATCHERS} streams open: median {statistics.median(growths):.0f} "
            f"KiB (rounds: {', '.join(f'{growth:.0f}' for growth in growths)} KiB)",
            f"{per_stream:.1f} KiB per stream",
        )
    ]
