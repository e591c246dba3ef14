"""The scenarios on Flask's test client (1 to 4, 6, 7 and 13), in worker processes.

Each contender runs in a worker process of its own (``worker.py``), in its own virtualenv where
it needs one. A scenario asks the workers for one round at a time and alternates the contenders
round by round (the order rotates too), so that the load of this shared machine falls on all of
them alike; a contender's round is paired with a round of the bare route right beside it.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import IO, Any

import peers
from apps import TRIVIAL_MIXED, Fields
from report import (
    BARE,
    CONTENDERS,
    HEALTHCHECK,
    OBVIOUS,
    ORIGINAL,
    OURS,
    OURS_OTEL_SDK,
    OURS_TELEMETRY_OFF,
    Row,
    Target,
    judged,
    median_ratio,
    not_run,
    seconds,
)
from servers import HERE, LOGS, BenchError

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


@contextmanager
def workers(
    scenarios: list[Scenario],
) -> Iterator[tuple[dict[str, WorkerProcess], dict[str, str]]]:
    """A worker per contender of ``scenarios``, and why each missing one could not be started;
    the workers are closed on exit."""
    pythons: dict[str, Path] = {}
    missing: dict[str, str] = {}
    for name in dict.fromkeys(cell.contender for scenario in scenarios for cell in scenario.cells):
        peer = peers.PEERS.get(name)
        try:
            pythons[name] = peer.python() if peer else Path(sys.executable)
        except peers.Unavailable as exc:
            missing[name] = str(exc)
    started = {name: WorkerProcess(name, python) for name, python in pythons.items()}
    try:
        yield started, missing
    finally:
        for worker in started.values():
            worker.close()


# -- scenarios -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One round of one cell."""

    per_request: float  # mean seconds
    longest: float  # seconds of its slowest request
    cpu_per_request: float  # mean CPU seconds of the worker process (all its threads)


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
    #: The contender every other one's rounds are paired with (when it is among the cells).
    reference: str = BARE

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
        return rows + [not_run(title, CONTENDERS[name], why) for name, why in why_not.items()]

    def _measure(
        self, cells: list[Cell], names: list[str], workers: dict[str, WorkerProcess]
    ) -> tuple[list[list[Sample]], list[list[Sample]]]:
        """Rounds of every cell in turn, each round starting one cell later than the last.

        When the reference (the bare route) is among the cells, each round of another cell is
        paired with a round of the reference right beside it (before or after, alternately),
        so that a ratio compares two figures taken under the same load. Returns each cell's
        samples and the reference's samples taken beside them.
        """
        bare = next((i for i, cell in enumerate(cells) if cell.contender == self.reference), None)
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
            sample = Sample(
                answer["total"] / cell.requests, answer["max"], answer["cpu"] / cell.requests
            )
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


def typical(samples: list[Sample]) -> float:
    """The median over rounds of the mean time per request."""
    return statistics.median(sample.per_request for sample in samples)


def versus_bare(cell: Cell, samples: list[Sample], bare: list[Sample]) -> tuple[str, str, float]:
    """Median time per request; the median of per-round ratios to the bare route."""
    ratio = median_ratio(samples, bare, attrgetter("per_request"))
    return f"{seconds(typical(samples))} / request", f"{ratio:.2f}x bare", ratio


def versus_telemetry_off(
    cell: Cell, samples: list[Sample], off: list[Sample]
) -> tuple[str, str, float]:
    """Median time and CPU time per request; the median of per-round ratios of CPU time to
    ``telemetry=False``'s (held to the target), and of time.

    What telemetry costs is CPU: on a shared machine a round's time also holds the time other
    processes took the cores, which the CPU time of the worker process leaves out.
    """
    cpu = median_ratio(samples, off, attrgetter("cpu_per_request"))
    wall = median_ratio(samples, off, attrgetter("per_request"))
    cpu_typical = statistics.median(sample.cpu_per_request for sample in samples)
    measured = f"{seconds(typical(samples))} / request, CPU {seconds(cpu_typical)}"
    return measured, f"CPU {cpu:.2f}x, time {wall:.2f}x telemetry off", cpu


def versus_slowest_field(
    cell: Cell, samples: list[Sample], _: list[Sample]
) -> tuple[str, str, float]:
    """Median time per request, as a multiple of how long one field takes."""
    per_request = typical(samples)
    ratio = per_request / cell.fields.seconds
    return f"{seconds(per_request)} / request", f"{ratio:.2f}x slowest field", ratio


def versus_chain(cell: Cell, samples: list[Sample], _: list[Sample]) -> tuple[str, str, float]:
    """Median time per request, as a multiple of the chain's checks' durations added up."""
    per_request = typical(samples)
    ratio = per_request / (cell.fields.chain * cell.fields.seconds)
    return f"{seconds(per_request)} / request", f"{ratio:.2f}x the chain's sum", ratio


def slowest_answer(cell: Cell, samples: list[Sample], _: list[Sample]) -> tuple[str, str, float]:
    """The slowest answer of all rounds (in ms, for the target), and as a multiple of the
    timeout."""
    longest = max(sample.longest for sample in samples)
    measured = f"slowest {seconds(longest)}, mean {seconds(typical(samples))}"
    return measured, f"{longest / cell.fields.timeout:.2f}x timeout", longest * 1e3


CONCURRENCY_TARGET = Target("≤", 1.1, "x slowest field")
MIXED_TARGET = Target("≤", 4, "x bare", stretch=3.5)
SYNC_TARGET = Target("≤", 4, "x bare", stretch=3)
CONSTANTS_TARGET = Target("≤", 1.25, "x bare")
HUNG_TARGET = Target("≤", 130, " ms", what="slowest")
SCALE_TARGET = Target("≤", 1.2, "x slowest field")
CHAIN_TARGET = Target("≤", 1.1, "x the chain's sum")
API_ONLY_TARGET = Target("≤", 1.05, "x telemetry off", what="CPU")
SDK_TARGET = Target("≤", 1.5, "x telemetry off", what="CPU")


def scenarios() -> list[Scenario]:
    slow = 0.1
    concurrency = Fields(sync=16, async_=16, seconds=slow)
    concurrency_sync = Fields(sync=32, seconds=slow)
    trivial_sync = Fields(sync=10)
    constants = Fields(constant=10)
    hung = Fields(hung_sync=1, hung_async=1, timeout=0.1)
    scale = Fields(sync=100, async_=100, seconds=slow)
    chain = Fields(chain=3, seconds=0.05)
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
        Scenario(
            "13. Dependencies: a chain of 3 async checks of 50 ms",
            [Cell(OURS, chain, "3 deep, each depends on the one before", 10, target=CHAIN_TARGET)],
            rounds=5,
            judge=versus_chain,
            not_run={
                name: "no dependencies between checks" for name in (OBVIOUS, HEALTHCHECK, ORIGINAL)
            },
        ),
        Scenario(
            "15. OpenTelemetry: 10 trivial fields, test client",
            [
                # Short rounds, many of them: a pair of rounds is then taken under the same load.
                Cell(OURS_TELEMETRY_OFF, TRIVIAL_MIXED, mixed, 200),
                Cell(OURS, TRIVIAL_MIXED, f"API, no SDK: {mixed}", 200, target=API_ONLY_TARGET),
                Cell(OURS_OTEL_SDK, TRIVIAL_MIXED, mixed, 200, target=SDK_TARGET),
            ],
            rounds=21,
            judge=versus_telemetry_off,
            reference=OURS_TELEMETRY_OFF,
        ),
    ]


# -- memory --------------------------------------------------------------------------------

#: Requests of the memory scenario, after its warm-up: at 1.5 to 3 ms a request on 2 shared
#: cores, 100,000 take two and a half to five minutes (207 s in the run recorded in README.md),
#: which makes it the longest scenario: a full run measures it last.
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
