"""``make bench``: every scenario and contender, measured in one run, as one table.

In the in-process scenarios, each contender runs in a worker process of its own
(``worker.py``), in its own virtualenv where it needs one. This script asks the workers for one
round at a time and alternates the contenders round by round (the order rotates too), so that
the load of this shared machine falls on all of them alike; a contender's round is paired with
a round of the bare route right beside it. The scenarios on real servers (``servers.py``)
alternate their contenders' rounds the same way. Figures are medians over the rounds, and
ratios are medians of per-round ratios. The table is printed and written to
``benchmarks/results.md``, which git ignores: ``README.md`` holds the results a person recorded.
Timing targets are reported, never enforced: this script fails only if a benchmark breaks.
"""

from __future__ import annotations

import json
import operator
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any

import peers
import servers
import store_app
from apps import (
    BACKGROUND,
    BARE_URL,
    BLOCK_SECONDS,
    BLOCK_TIMEOUT,
    ONE_SLOW,
    RUNS_URL,
    SLOW_MIXED,
    TRIVIAL_MIXED,
    URL,
    Fields,
)
from servers import LOGS, BenchError, Load

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.md"
#: What a run took on 2 cores shared with other work, once the peers' virtualenvs were there.
EXPECTED_MINUTES = 8

OURS = "flask-status"
OURS_COUNTED = "flask-status-counted"  # ours, with each check counting its runs
OURS_HOOKED = "flask-status-hooked"  # ours, in an app with a no-op request hook
BARE = "bare"
OBVIOUS = "obvious"
HEALTHCHECK = "py-healthcheck"
ORIGINAL = "flask-status-1.0.1"
STARLETTE = "starlette"
ASYNCIO_VIEW = "asyncio-view"

CONTENDERS = {
    OURS: "flask-status (this project)",
    BARE: "bare Flask route",
    OBVIOUS: "obvious design: async view + anyio",
    HEALTHCHECK: "py-healthcheck 1.3.3 ²",
    ORIGINAL: "Flask-Status 1.0.1 ¹",
    STARLETTE: "Starlette endpoint + anyio task group ⁴",
    ASYNCIO_VIEW: "Flask async view + `asyncio.gather`, `WsgiToAsgi` ⁴",
}

FOOTNOTES = [
    "¹ Flask-Status 1.0.1 calls each field's function once, inside `add_field`, and serves "
    "that value on every request: it measures nothing per request (its 32 fields of 100 ms "
    "ran once, at setup). It has no async fields, so it is given sync ones.",
    "² py-healthcheck runs its checks one after another, with caching off "
    "(`success_ttl=0, failed_ttl=0`). It has no async checks, so it is given sync ones.",
    "³ Every uvicorn runs with `--reset-contextvars`: without it, on kept-alive connections, "
    "asgiref's `WsgiToAsgi` (seen with asgiref 3.9.2 to 3.13.0 under uvicorn 0.54.0) fails "
    "about half of the requests to Flask routes with `RuntimeError: CurrentThreadExecutor "
    "already quit or is broken`. wrk keeps its connections alive.",
    "⁴ What a user would write instead, each served by a uvicorn of its own: a Starlette "
    "endpoint running the checks in an anyio task group, sync ones through "
    "`anyio.to_thread.run_sync(abandon_on_cancel=True)`, each under `anyio.move_on_after`; and "
    "a Flask `async def` view behind `WsgiToAsgi` running them with `asyncio.gather`, sync ones "
    "through `asyncio.to_thread`, each under `asyncio.wait_for`. Ours is the status route under "
    "`StatusMiddleware(WsgiToAsgi(app), app)`.",
    "The obvious design is a Flask `async def` view that runs every field in one anyio task "
    "group, sync ones through `anyio.to_thread.run_sync(abandon_on_cancel=True)`, each under "
    "`anyio.move_on_after(timeout)`.",
]


# -- targets -------------------------------------------------------------------------------

_COMPARE = {"≤": operator.le, "<": operator.lt, "≥": operator.ge}


@dataclass(frozen=True)
class Target:
    """A goal a measure is reported against: ``measure <op> limit``, maybe with a stretch goal."""

    op: str  # "≤", "<" or "≥"
    limit: float
    unit: str  # follows each number: "x bare", " ms"
    stretch: float | None = None
    what: str = ""  # precedes the comparison: "slowest"

    def __str__(self) -> str:
        text = f"{self.what} {self.op} {self.limit:g}{self.unit}".lstrip()
        if self.stretch is None:
            return text
        return f"{text} (stretch {self.stretch:g}{self.unit})"

    def result(self, value: float) -> str:
        compare = _COMPARE[self.op]
        if not compare(value, self.limit):
            return "FAIL"
        if self.stretch is not None and compare(value, self.stretch):
            return "PASS, stretch met"
        return "PASS"


@dataclass(frozen=True)
class Row:
    scenario: str
    contender: str
    measured: str
    ratio: str = ""
    target: str = ""
    result: str = ""


def judged(
    scenario: str, contender: str, measured: str, ratio: str, value: float, target: Target | None
) -> Row:
    """A row, with its target and result when it is held to ``target``."""
    if target is None:
        return Row(scenario, contender, measured, ratio)
    return Row(scenario, contender, measured, ratio, str(target), target.result(value))


# -- workers ---------------------------------------------------------------------------------


class WorkerProcess:
    """A ``worker.py`` process, asked one JSON command at a time."""

    def __init__(self, name: str, python: Path) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOGS / f"{name}.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [str(python), str(HERE / "worker.py")],
            cwd=HERE,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )

    def ask(self, **command: Any) -> dict[str, Any]:
        stdin, stdout = _pipes(self.process)
        stdin.write(json.dumps(command) + "\n")
        stdin.flush()
        answer = stdout.readline()
        if not answer:
            raise BenchError(f"worker {self.name} stopped; its log: {self.log_path}")
        return json.loads(answer)  # type: ignore[no-any-return]

    def close(self) -> None:
        _pipes(self.process)[0].close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def _pipes(process: subprocess.Popen[str]) -> tuple[IO[str], IO[str]]:
    assert process.stdin is not None and process.stdout is not None
    return process.stdin, process.stdout


def start_workers() -> tuple[dict[str, WorkerProcess], dict[str, str]]:
    """A worker per contender, and why each missing one could not be started."""
    pythons: dict[str, Path] = {name: Path(sys.executable) for name in (OURS, BARE, OBVIOUS)}
    missing: dict[str, str] = {}
    for name, peer in peers.PEERS.items():
        try:
            pythons[name] = peer.python()
        except peers.Unavailable as exc:
            missing[name] = str(exc)
    return {name: WorkerProcess(name, python) for name, python in pythons.items()}, missing


# -- in-process scenarios ------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One round of one cell."""

    per_request: float  # mean seconds
    longest: float  # seconds of its slowest request


@dataclass(frozen=True)
class Cell:
    """One contender serving one set of fields in a scenario."""

    contender: str
    fields: Fields
    what: str  # the fields, as the table shows them
    requests: int  # per round
    expect: int = 200  # the status code every answer must have
    target: Target | None = None  # the goal it is held to, if any


#: Turns a cell's samples (and the bare route's, taken beside them) into
#: ``(measured, ratio, the value held to the cell's target)``.
Judge = Callable[[Cell, list[Sample], list[Sample]], tuple[str, str, float]]


@dataclass
class Scenario:
    """Cells measured in interleaved rounds, each judged into a table row."""

    title: str
    cells: list[Cell]
    rounds: int
    judge: Judge
    not_run: dict[str, str] = field(default_factory=dict)  # contender -> why

    def run(self, workers: dict[str, WorkerProcess], missing: dict[str, str]) -> list[Row]:
        cells = [cell for cell in self.cells if cell.contender in workers]
        names = [f"{self.title} #{index}" for index in range(len(cells))]
        for name, cell in zip(names, cells, strict=True):
            answer = workers[cell.contender].ask(
                op="setup", cell=name, builder=cell.contender, fields=asdict(cell.fields)
            )
            if answer["status"] != cell.expect:
                raise BenchError(f"{name} ({cell.contender}) answered {answer}")
        try:
            samples, beside = self._measure(cells, names, workers)
        finally:
            for name, cell in zip(names, cells, strict=True):
                workers[cell.contender].ask(op="teardown", cell=name)
        title = f"{self.title} ({self.rounds} rounds)"
        rows = [
            judged(
                title,
                f"{CONTENDERS[cell.contender]}: {cell.what}",
                *self.judge(cell, cell_samples, bare_samples),
                cell.target,
            )
            for cell, cell_samples, bare_samples in zip(cells, samples, beside, strict=True)
        ]
        why_not = {c.contender: missing[c.contender] for c in self.cells if c.contender in missing}
        why_not.update(self.not_run)
        return rows + [
            Row(title, CONTENDERS[name], f"not run: {why}") for name, why in why_not.items()
        ]

    def _measure(
        self, cells: list[Cell], names: list[str], workers: dict[str, WorkerProcess]
    ) -> tuple[list[list[Sample]], list[list[Sample]]]:
        """Rounds of every cell in turn, each round starting one cell later than the last.

        When the bare route is among the cells, each round of another cell is paired with a
        round of the bare route right beside it (before or after, alternately), so that a
        ratio compares two figures taken under the same load. Returns each cell's samples and
        the bare route's samples taken beside them.
        """
        bare = next((i for i, cell in enumerate(cells) if cell.contender == BARE), None)
        others = [i for i in range(len(cells)) if i != bare]
        samples: list[list[Sample]] = [[] for _ in cells]
        beside: list[list[Sample]] = [[] for _ in cells]

        def measure(index: int) -> Sample:
            cell = cells[index]
            answer = workers[cell.contender].ask(
                op="round", cell=names[index], requests=cell.requests
            )
            if answer["statuses"] != [cell.expect]:
                raise BenchError(f"{names[index]} answered {answer['statuses']}")
            sample = Sample(answer["total"] / cell.requests, answer["max"])
            samples[index].append(sample)
            return sample

        for round_number in range(self.rounds):
            for offset in range(len(others)):
                index = others[(round_number + offset) % len(others)]
                if bare is None:
                    measure(index)
                elif round_number % 2 == 0:
                    beside[index].append(measure(bare))
                    measure(index)
                else:
                    measure(index)
                    beside[index].append(measure(bare))
        if bare is not None:
            beside[bare] = samples[bare]
        return samples, beside


def versus_bare(cell: Cell, samples: list[Sample], bare: list[Sample]) -> tuple[str, str, float]:
    """Median time per request; the median of per-round ratios to the bare route."""
    ratio = statistics.median(
        mine.per_request / base.per_request for mine, base in zip(samples, bare, strict=True)
    )
    typical = statistics.median(sample.per_request for sample in samples)
    return f"{seconds(typical)} / request", f"{ratio:.2f}x bare", ratio


def versus_slowest_field(
    cell: Cell, samples: list[Sample], _: list[Sample]
) -> tuple[str, str, float]:
    """Median time per request, as a multiple of how long one field takes."""
    typical = statistics.median(sample.per_request for sample in samples)
    ratio = typical / cell.fields.seconds
    return f"{seconds(typical)} / request", f"{ratio:.2f}x slowest field", ratio


def slowest_answer(cell: Cell, samples: list[Sample], _: list[Sample]) -> tuple[str, str, float]:
    """The slowest answer of all rounds (in ms, for the target), and as a multiple of the
    timeout."""
    longest = max(sample.longest for sample in samples)
    typical = statistics.median(sample.per_request for sample in samples)
    measured = f"slowest {seconds(longest)}, mean {seconds(typical)}"
    return measured, f"{longest / cell.fields.timeout:.2f}x timeout", longest * 1e3


CONCURRENCY_TARGET = Target("≤", 1.1, "x slowest field")
MIXED_TARGET = Target("≤", 5, "x bare", stretch=4)
SYNC_TARGET = Target("≤", 4, "x bare", stretch=3)
CONSTANTS_TARGET = Target("≤", 1.3, "x bare")
HUNG_TARGET = Target("≤", 130, " ms", what="slowest")
SCALE_TARGET = Target("≤", 1.2, "x slowest field")


def scenarios() -> list[Scenario]:
    slow = 0.1
    concurrency = Fields(sync=16, async_=16, seconds=slow)
    concurrency_sync = Fields(sync=32, seconds=slow)
    trivial_sync = Fields(sync=10)
    constants = Fields(constant=10)
    hung = Fields(hung_sync=1, hung_async=1, timeout=0.1)
    scale = Fields(sync=100, async_=100, seconds=slow)
    mixed, sync_only = "5 sync + 5 async", "10 sync"
    return [
        Scenario(
            "1. Concurrency: 32 fields of 100 ms",
            [
                Cell(OURS, concurrency, "16 sync + 16 async", 5, target=CONCURRENCY_TARGET),
                Cell(OBVIOUS, concurrency, "16 sync + 16 async", 5),
                Cell(HEALTHCHECK, concurrency_sync, "32 sync", 1),  # 3.2 s a request
                Cell(ORIGINAL, concurrency_sync, "32 sync", 5),
            ],
            rounds=3,
            judge=versus_slowest_field,
        ),
        Scenario(
            "2. Overhead: 10 trivial fields, test client",
            [
                Cell(BARE, Fields(), "no fields", 400),
                Cell(OURS, TRIVIAL_MIXED, mixed, 400, target=MIXED_TARGET),
                Cell(OURS, trivial_sync, sync_only, 400, target=SYNC_TARGET),
                Cell(OBVIOUS, TRIVIAL_MIXED, mixed, 50),  # 10 times slower: fewer requests
                Cell(OBVIOUS, trivial_sync, sync_only, 50),
                Cell(HEALTHCHECK, trivial_sync, sync_only, 400),
                Cell(ORIGINAL, trivial_sync, sync_only, 400),
            ],
            rounds=7,
            judge=versus_bare,
        ),
        Scenario(
            "3. Overhead: 10 constant fields, test client",
            [
                Cell(BARE, Fields(), "no fields", 500),
                Cell(OURS, constants, "10 constants", 500, target=CONSTANTS_TARGET),
                Cell(ORIGINAL, constants, "10 constants", 500),
            ],
            rounds=7,
            judge=versus_bare,
            not_run={HEALTHCHECK: "it has no constant fields"},
        ),
        Scenario(
            "4. Timeout precision: timeout 100 ms, 30 requests in a row",
            [
                Cell(OURS, hung, "1 hung sync + 1 hung async", 30, 503, HUNG_TARGET),
                Cell(OBVIOUS, hung, "1 hung sync + 1 hung async", 30, 503),
            ],
            rounds=3,
            judge=slowest_answer,
            not_run={
                HEALTHCHECK: "it has no timeouts: a hung check hangs the request",
                ORIGINAL: "a hung field hangs `add_field`, at setup",
            },
        ),
        Scenario(
            "6. Scale: 200 fields of 100 ms",
            [
                Cell(OURS, scale, "100 sync + 100 async", 2, target=SCALE_TARGET),
                Cell(OBVIOUS, scale, "100 sync + 100 async", 2),
            ],
            rounds=5,
            judge=versus_slowest_field,
            not_run={HEALTHCHECK: "sequential: 200 x 100 ms = 20 s a request, see 1."},
        ),
    ]


# -- on real servers -----------------------------------------------------------------------

LOAD_ROUNDS = 3
LOAD_SECONDS = 3
LOAD = f"wrk, {servers.CONNECTIONS} kept-alive connections, {LOAD_ROUNDS} rounds x {LOAD_SECONDS} s"

ASGI_TITLE = f"5. ASGI throughput: uvicorn, 10 trivial fields ({LOAD})"
ASGI_TARGET = Target("≥", 1.0, "x bare")


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


UNDER_LOAD_TITLE = f"9. Under load: uvicorn ³, ours and what a user would write ({LOAD})"
#: The contenders, each served by a uvicorn of its own.
UNDER_LOAD = {
    OURS: f"{CONTENDERS[OURS]}, `StatusMiddleware` ⁴",
    STARLETTE: CONTENDERS[STARLETTE],
    ASYNCIO_VIEW: CONTENDERS[ASYNCIO_VIEW],
}
#: ``(the fields as the table shows them, the fields, the target of ours)``
UNDER_LOAD_SETS = [
    ("5 sync + 5 async", TRIVIAL_MIXED, Target("≥", 1.5, "x Starlette", stretch=2)),
    ("one 50 ms async + 2 sync + 2 async", SLOW_MIXED, Target("≥", 1.0, "x Starlette")),
]


def under_load(wrk: str) -> list[Row]:
    """Requests/s and latency of ours and of the other designs, side by side, per set of fields."""
    rows = []
    for number, (what, fields, target) in enumerate(UNDER_LOAD_SETS):
        with ExitStack() as stack:
            urls = {
                name: stack.enter_context(servers.uvicorn(name, fields, f"uvicorn-{number}-{name}"))
                + URL
                for name in UNDER_LOAD
            }
            loads = servers.alternate(wrk, urls, LOAD_ROUNDS, LOAD_SECONDS)
        rows += [
            load_row(
                UNDER_LOAD_TITLE,
                f"{label}: {what}",
                loads[name],
                loads[STARLETTE],
                "Starlette",
                target if name == OURS else None,
            )
            for name, label in UNDER_LOAD.items()
        ]
    return rows


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


BURST = 150
HOOK_ROUNDS = 5
HOOK_TITLE = (
    f"11. A request hook: uvicorn ³, one {ONE_SLOW.slow_seconds * 1e3:g} ms async check, "
    f"bursts of {BURST} concurrent probes ({HOOK_ROUNDS} rounds)"
)
HOOK_TARGET = Target("≤", 1.5, "x without", what="p50")


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
    with ExitStack() as stack:
        urls = {
            name: stack.enter_context(servers.uvicorn(name, ONE_SLOW, f"uvicorn-{name}")) + URL
            for name in names
        }
        bursts = servers.interleave(urls, HOOK_ROUNDS, burst, warm_up=burst)
    rows = []
    for name, what in names.items():
        ratio = statistics.median(
            mine.p50 / theirs.p50 for mine, theirs in zip(bursts[name], bursts[OURS], strict=True)
        )
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


def load_row(
    scenario: str,
    contender: str,
    loads: list[Load],
    base: list[Load],
    base_name: str,
    target: Target | None = None,
    by: str = "rate",
) -> Row:
    """Median requests/s and latencies, and the median of per-round ratios to ``base``'s of
    requests/s (``by="rate"``) or of median latency (``by="p50"``)."""
    ratio = statistics.median(
        getattr(mine, by) / getattr(theirs, by) for mine, theirs in zip(loads, base, strict=True)
    )
    rate = statistics.median(load.rate for load in loads)
    p50 = statistics.median(load.p50 for load in loads)
    p99 = statistics.median(load.p99 for load in loads)
    measured = f"{rate:,.0f} requests/s, latency p50 {seconds(p50)}, p99 {seconds(p99)}"
    shown = f"{ratio:.2f}x {base_name}" if by == "rate" else f"{by} {ratio:.2f}x {base_name}"
    return judged(scenario, contender, measured, shown, ratio, target)


def with_wrk(title: str, measure: Callable[[str], list[Row]]) -> list[Row]:
    """``measure(wrk)``, or a row saying why wrk could not be had."""
    try:
        wrk = peers.wrk()
    except peers.Unavailable as exc:
        return [Row(title, "every contender", f"not run: {exc}")]
    return measure(wrk)


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


# -- sharing through Redis -----------------------------------------------------------------

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


def sharing() -> list[Row]:
    """The check's executions across a fleet, without and with the store; an outage; the cost
    of reading a result from the store."""
    try:
        redis = RedisProcess(peers.debian_tool("redis-server", "redis-server"))
    except peers.Unavailable as exc:
        return [Row(SHARING_TITLE, "every contender", f"not run: {exc}")]
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
    from flask import Flask

    from flask_status import FlaskStatus
    from flask_status.extension import EXTENSION_KEY

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


# -- memory --------------------------------------------------------------------------------

#: Requests of the memory scenario, after its warm-up: at 1.5 to 3 ms a request on 2 shared
#: cores, 40,000 take one to two minutes (100,000 took five and a half).
MEMORY_REQUESTS = 100_000
MEMORY_TITLE = f"7. Memory: {MEMORY_REQUESTS:,} requests, 10 trivial fields, test client"
MEMORY_TARGET = Target("<", 1, " MB growth")


def memory(requests: int = MEMORY_REQUESTS, warmup: int = 5_000, samples: int = 10) -> list[Row]:
    """Resident memory growth over ``requests`` requests, in a fresh process."""
    worker = WorkerProcess("flask-status-memory", Path(sys.executable))
    try:
        answer = worker.ask(
            op="memory",
            builder=OURS,
            fields=asdict(TRIVIAL_MIXED),
            warmup=warmup,
            requests=requests,
            samples=samples,
        )
    finally:
        worker.close()
    rss = [kb / 1024 for kb in answer["rss_kb"]]
    growth, peak = rss[-1] - rss[0], max(rss) - rss[0]
    measured = (
        f"RSS {rss[0]:.1f} → {rss[-1]:.1f} MB: {growth:+.2f} MB (highest {peak:+.2f} MB) "
        f"after {warmup:,} warm-up requests; took {answer['seconds']:.0f} s"
    )
    return [
        judged(
            MEMORY_TITLE,
            f"{CONTENDERS[OURS]}: 5 sync + 5 async",
            measured,
            "",
            growth,
            MEMORY_TARGET,
        )
    ]


# -- report --------------------------------------------------------------------------------


def seconds(value: float) -> str:
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def table(rows: list[Row]) -> str:
    lines = [
        "| scenario | contender: fields | measured (median of rounds) | ratio | target | result |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    shown = ""
    for row in sorted(rows, key=lambda row: int(row.scenario.split(".")[0])):
        title = row.scenario if row.scenario != shown else ""
        shown = row.scenario
        cells = (title, row.contender, row.measured, row.ratio, row.target, row.result)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model")]
    cpu = next((model for model in models if not model.isdigit()), platform.machine())
    packages = ", ".join(
        f"{name} {version(name)}"
        for name in (
            *("flask", "werkzeug", "anyio", "asgiref", "uvicorn", "starlette"),
            *("gunicorn", "gevent"),
        )
    )
    return (
        f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, {packages}"
    )


def report(rows: list[Row], started: datetime, duration: float, load: float) -> str:
    when = started.strftime("%Y-%m-%d %H:%M UTC")
    return "\n\n".join(
        [
            f"Measured by `make bench` (`.venv/bin/python benchmarks/run.py`) on {when}, "
            f"in one run of {duration / 60:.1f} minutes. Machine: {machine()}; "
            f"load average {load:.2f} at the start. Rounds of the contenders alternate "
            "(their order rotates each round); in the in-process scenarios, each round of a "
            "contender is paired with a round of the bare route right beside it. Figures are "
            "medians over rounds, ratios are medians of the per-round ratios.",
            table(rows),
            "\n".join(f"- {note}" for note in FOOTNOTES),
        ]
    )


def main() -> None:
    started, clock, load = datetime.now(timezone.utc), time.monotonic(), os.getloadavg()[0]
    say(
        f"make bench takes up to {EXPECTED_MINUTES:g} minutes on 2 cores, less when they are "
        "idle (a minute more the first time, to create the peers' virtualenvs)"
    )
    say("preparing the contenders ...")
    workers, missing = start_workers()
    rows: list[Row] = []
    try:
        for scenario in scenarios():
            rows += stage(scenario.title, partial(scenario.run, workers, missing))
    finally:
        for worker in workers.values():
            worker.close()
    rows += stage(ASGI_TITLE, partial(with_wrk, ASGI_TITLE, asgi_throughput))
    rows += stage(GEVENT_TITLE, gevent_worker)
    rows += stage(UNDER_LOAD_TITLE, partial(with_wrk, UNDER_LOAD_TITLE, under_load))
    rows += stage(BACKGROUND_TITLE, partial(with_wrk, BACKGROUND_TITLE, background_checks))
    rows += stage(HOOK_TITLE, request_hook)
    rows += stage(SHARING_TITLE, sharing)
    rows += stage(MEMORY_TITLE, memory)
    duration = time.monotonic() - clock
    text = report(rows, started, duration, load)
    print(text)
    RESULTS.write_text(text + "\n")
    say(f"\ntook {duration / 60:.1f} minutes; written to {RESULTS}")


def stage(title: str, measure: Callable[[], list[Row]]) -> list[Row]:
    """``measure()``, saying what and how long it took."""
    say(f"{title} ...")
    clock = time.monotonic()
    rows = measure()
    say(f"  {time.monotonic() - clock:.0f} s")
    return rows


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
