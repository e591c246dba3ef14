"""The scenarios under wrk's load on uvicorn (5, 9 and 10): requests/s and latencies.

A scenario's servers all run while it lasts, but only one is loaded at a time; the rounds of its
contenders alternate (``servers.alternate``).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from operator import attrgetter

import peers
import servers
from apps import BACKGROUND, BARE_URL, RUNS_URL, SLOW_MIXED, TRIVIAL_MIXED, URL, Fields
from report import (
    ASYNCIO_VIEW,
    BARE,
    CONTENDERS,
    OURS,
    OURS_COUNTED,
    STARLETTE,
    STARLETTE_BARE,
    Row,
    Target,
    judged,
    median_ratio,
    seconds,
)
from servers import BenchError, Load

CONSTANTS = Fields(constant=10)

LOAD_ROUNDS = 3
LOAD_SECONDS = 3
LOAD = f"wrk, {servers.CONNECTIONS} kept-alive connections, {LOAD_ROUNDS} rounds x {LOAD_SECONDS} s"


def load_row(
    scenario: str,
    contender: str,
    loads: list[Load],
    base: list[Load],
    base_name: str,
    target: Target | None = None,
    by: str = "rate",
    with_cpu: bool = False,
) -> Row:
    """Median requests/s and latencies (and CPU time per request, ``with_cpu``), and the
    median of per-round ratios to ``base``'s of requests/s (``by="rate"``) or of median
    latency (``by="p50"``)."""
    ratio = median_ratio(loads, base, attrgetter(by))
    rate = statistics.median(load.rate for load in loads)
    p50 = statistics.median(load.p50 for load in loads)
    p99 = statistics.median(load.p99 for load in loads)
    measured = f"{rate:,.0f} requests/s, latency p50 {seconds(p50)}, p99 {seconds(p99)}"
    if with_cpu:
        measured += f", CPU {seconds(_median_cpu(loads))} / request"
    shown = f"{ratio:.2f}x {base_name}" if by == "rate" else f"{by} {ratio:.2f}x {base_name}"
    return judged(scenario, contender, measured, shown, ratio, target)


# -- 5. ASGI throughput --------------------------------------------------------------------

ASGI_TITLE = f"5. ASGI throughput: uvicorn, 10 trivial fields ({LOAD})"
ASGI_TARGET = Target("≥", 1.0, "x bare")


@peers.needs(peers.wrk, ASGI_TITLE)
def asgi_throughput(wrk: str) -> list[Row]:
    """Requests/s of the status route and of a bare route, on one uvicorn process."""
    with servers.uvicorn(OURS, TRIVIAL_MIXED, "uvicorn-asgi-throughput") as base:
        urls = {BARE: base + BARE_URL, OURS: base + URL}
        loads = servers.alternate(wrk, urls, LOAD_ROUNDS, LOAD_SECONDS)
    ours = f"{CONTENDERS[OURS]}: 5 sync + 5 async, `StatusMiddleware`"
    return [
        load_row(
            ASGI_TITLE,
            f"{CONTENDERS[BARE]} through `WsgiToAsgi` ³",
            loads[BARE],
            loads[BARE],
            "bare",
        ),
        load_row(ASGI_TITLE, ours, loads[OURS], loads[BARE], "bare", ASGI_TARGET),
    ]


# -- 9. Under load, beside what a user would write -----------------------------------------

UNDER_LOAD_TITLE = f"9. Under load: uvicorn ³, ours and what a user would write ({LOAD})"
#: The contenders, each served by a uvicorn of its own.
UNDER_LOAD = {
    OURS: f"{CONTENDERS[OURS]}, `StatusMiddleware` ⁴",
    STARLETTE: CONTENDERS[STARLETTE],
    ASYNCIO_VIEW: CONTENDERS[ASYNCIO_VIEW],
    STARLETTE_BARE: CONTENDERS[STARLETTE_BARE],
}
HAND_WRITTEN = [OURS, STARLETTE, ASYNCIO_VIEW]


@dataclass(frozen=True)
class LoadSet:
    """A set of fields served by some contenders, ours held to a target against ``base``."""

    what: str  # the fields, as the table shows them
    fields: Fields
    contenders: list[str]
    base: str  # the contender whose requests/s the ratios are to
    base_name: str  # as the ratios name it
    target: Target
    #: Ours' CPU time per request (µs), where it is held to one.
    cpu_target: Target | None = None


UNDER_LOAD_SETS = [
    LoadSet(
        "5 sync + 5 async",
        TRIVIAL_MIXED,
        HAND_WRITTEN,
        STARLETTE,
        "Starlette",
        Target("≥", 3, "x Starlette"),
        Target("≤", 550, " µs", what="CPU"),
    ),
    LoadSet(
        "one 50 ms async + 2 sync + 2 async",
        SLOW_MIXED,
        HAND_WRITTEN,
        STARLETTE,
        "Starlette",
        Target("≥", 1.0, "x Starlette"),
    ),
    LoadSet(
        "10 constants",
        CONSTANTS,
        [OURS, STARLETTE_BARE],
        STARLETTE_BARE,
        "bare Starlette",
        Target("≥", 0.5, "x bare Starlette"),
    ),
]


@peers.needs(peers.wrk, UNDER_LOAD_TITLE)
def under_load(wrk: str) -> list[Row]:
    """Requests/s, latency and CPU time per request of ours and of the other designs, side by
    side, per set of fields."""
    rows = []
    for number, one in enumerate(UNDER_LOAD_SETS):
        with servers.uvicorns(one.contenders, one.fields, f"uvicorn-{number}") as urls:
            loads = servers.alternate(wrk, urls, LOAD_ROUNDS, LOAD_SECONDS)
        rows += [
            load_row(
                UNDER_LOAD_TITLE,
                f"{UNDER_LOAD[name]}: {one.what}",
                loads[name],
                loads[one.base],
                one.base_name,
                one.target if name == OURS else None,
                with_cpu=True,
            )
            for name in one.contenders
        ]
        if one.cpu_target is not None:
            rows.append(cpu_row(one, loads[OURS], loads[one.base]))
    return rows


def cpu_row(one: LoadSet, ours: list[Load], base: list[Load]) -> Row:
    """Ours' CPU time per request (median of rounds), held to ``one.cpu_target``."""
    cpu, base_cpu = _median_cpu(ours), _median_cpu(base)
    return judged(
        UNDER_LOAD_TITLE,
        f"{CONTENDERS[OURS]}: CPU of its uvicorn process: {one.what}",
        f"CPU {seconds(cpu)} / request ({one.base_name}: {seconds(base_cpu)})",
        f"CPU {cpu / base_cpu:.2f}x {one.base_name}",
        cpu * 1e6,
        one.cpu_target,
    )


def _median_cpu(loads: list[Load]) -> float:
    figures = [load.cpu_per_request for load in loads]
    if None in figures:
        raise BenchError("a server's CPU time was not read")
    return statistics.median(figure for figure in figures if figure is not None)


# -- 10. Background checks -----------------------------------------------------------------

BACKGROUND_ROUNDS = 2
BACKGROUND_SECONDS = 6
BACKGROUND_CONNECTIONS = 10
BACKGROUND_TITLE = (
    f"10. Background checks: uvicorn ³, {BACKGROUND.sync + BACKGROUND.async_} checks of "
    f"{BACKGROUND.seconds * 1e3:g} ms every "
    f"{BACKGROUND.interval:g} s (wrk, {BACKGROUND_CONNECTIONS} kept-alive connections, "
    f"{BACKGROUND_ROUNDS} rounds x {BACKGROUND_SECONDS} s)"
)
BACKGROUND_P50_TARGET = Target("≤", 2, "x bare", what="p50")
BACKGROUND_P99_TARGET = Target("<", 50, " ms", what="p99")
BACKGROUND_RUNS_TARGET = Target("≤", 1, " run from wall time / interval", what="each check")


@peers.needs(peers.wrk, BACKGROUND_TITLE)
def background_checks(wrk: str) -> list[Row]:
    """Probes of background checks beside a bare route on one uvicorn, and how many times
    each check ran meanwhile (counted by the app, read at ``RUNS_URL``)."""
    with servers.uvicorn(OURS_COUNTED, BACKGROUND, "uvicorn-background", lifespan="on") as base:
        urls = {BARE: base + BARE_URL, OURS: base + URL}
        before, started = servers.get_json(base + RUNS_URL), time.monotonic()
        loads = servers.alternate(
            wrk, urls, BACKGROUND_ROUNDS, BACKGROUND_SECONDS, BACKGROUND_CONNECTIONS
        )
        after, elapsed = servers.get_json(base + RUNS_URL), time.monotonic() - started
    ours = (
        f"{CONTENDERS[OURS]}, `StatusMiddleware`: {BACKGROUND.sync} sync + {BACKGROUND.async_} "
        "async in the background"
    )
    p99 = statistics.median(load.p99 for load in loads[OURS])
    return [
        load_row(
            BACKGROUND_TITLE,
            f"{CONTENDERS[BARE]} through `WsgiToAsgi`, same server",
            loads[BARE],
            loads[BARE],
            "bare",
            by="p50",
        ),
        load_row(
            BACKGROUND_TITLE, ours, loads[OURS], loads[BARE], "bare", BACKGROUND_P50_TARGET, "p50"
        ),
        judged(
            BACKGROUND_TITLE,
            f"{CONTENDERS[OURS]}: the same probes' p99",
            f"p99 {seconds(p99)}",
            "",
            p99 * 1e3,
            BACKGROUND_P99_TARGET,
        ),
        runs_row(
            {key: after[key] - before.get(key, 0) for key in after},
            elapsed,
            sum(load.rate for load in loads[OURS]) * BACKGROUND_SECONDS,
        ),
    ]


def runs_row(runs: dict[str, int], elapsed: float, probes: float) -> Row:
    """How many times each background check ran in ``elapsed`` seconds, against
    ``elapsed / interval``."""
    assert BACKGROUND.interval is not None
    expected = elapsed / BACKGROUND.interval
    fewest, most = min(runs.values()), max(runs.values())
    off = max(abs(count - expected) for count in runs.values())
    counted = f"{fewest}" if fewest == most else f"{fewest} to {most}"
    return judged(
        BACKGROUND_TITLE,
        f"{CONTENDERS[OURS]}: runs of each of its {len(runs)} checks, counted by the app",
        f"{counted} runs per check in {elapsed:.1f} s (expected {expected:.1f} ± 1), "
        f"while it answered about {probes:,.0f} probes",
        f"{fewest / expected:.2f}x to {most / expected:.2f}x wall time / interval",
        off,
        BACKGROUND_RUNS_TARGET,
    )
