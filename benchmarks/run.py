"""``make bench``: every scenario and contender, measured in one run, as one table.

Each contender runs in a worker process of its own (``worker.py``), in its own virtualenv where
it needs one. This script asks the workers for one round at a time and alternates the
contenders round by round (the order rotates too), so that the load of this shared machine
falls on all of them alike; a contender's round is paired with a round of the bare route
right beside it. Figures are medians over the rounds, and ratios are medians of per-pair
ratios. The table is printed and written into ``benchmarks/README.md``.
Timing targets are reported, never enforced: this script fails only if a benchmark breaks.
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import IO, Any

import peers
from apps import BARE_URL, TRIVIAL_MIXED, URL, Fields

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
LOGS = peers.VENVS / "logs"
BEGIN = "<!-- results: written by benchmarks/run.py, do not edit below -->"
END = "<!-- end of results -->"

OURS = "flask-status"
BARE = "bare"
OBVIOUS = "obvious"
HEALTHCHECK = "py-healthcheck"
ORIGINAL = "flask-status-1.0.1"

CONTENDERS = {
    OURS: "flask-status (this project)",
    BARE: "bare Flask route",
    OBVIOUS: "obvious design: async view + anyio",
    HEALTHCHECK: "py-healthcheck 1.3.3 ²",
    ORIGINAL: "Flask-Status 1.0.1 ¹",
}

FOOTNOTES = [
    "¹ Flask-Status 1.0.1 calls each field's function once, inside `add_field`, and serves "
    "that value on every request: it measures nothing per request (its 32 fields of 100 ms "
    "ran once, at setup). It has no async fields, so it is given sync ones.",
    "² py-healthcheck runs its checks one after another, with caching off "
    "(`success_ttl=0, failed_ttl=0`). It has no async checks, so it is given sync ones.",
    "³ wrk opens a connection per request: on kept-alive connections, asgiref's `WsgiToAsgi` "
    "(seen with asgiref 3.9.2 to 3.13.0 under uvicorn 0.54.0) fails about half of the bare "
    "route's requests with `RuntimeError: CurrentThreadExecutor already quit or is broken`.",
    "The obvious design is a Flask `async def` view that runs every field in one anyio task "
    "group, sync ones through `anyio.to_thread.run_sync(abandon_on_cancel=True)`, each under "
    "`anyio.move_on_after(timeout)`.",
]


class BenchError(Exception):
    """The benchmark itself broke (a worker died, a route answered wrongly)."""


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
    judged: bool = False  # held to the scenario's target


@dataclass(frozen=True)
class Row:
    scenario: str
    contender: str
    measured: str
    ratio: str = ""
    target: str = ""
    result: str = ""


#: Turns a cell's samples (and the bare route's, taken beside them) into
#: ``(measured, ratio, target met)``.
Judge = Callable[[Cell, list[Sample], list[Sample]], tuple[str, str, bool]]


@dataclass
class Scenario:
    """Cells measured in interleaved rounds, each judged into a table row."""

    title: str
    target: str
    cells: list[Cell]
    rounds: int
    judge: Judge
    not_run: dict[str, str] = field(default_factory=dict)  # contender -> why

    def run(self, workers: dict[str, WorkerProcess], missing: dict[str, str]) -> list[Row]:
        cells = [cell for cell in self.cells if cell.contender in workers]
        names = [f"{self.title} #{index}" for index in range(len(cells))]
        for name, cell in zip(names, cells, strict=False):
            answer = workers[cell.contender].ask(
                op="setup", cell=name, builder=cell.contender, fields=asdict(cell.fields)
            )
            if answer["status"] != cell.expect:
                raise BenchError(f"{name} ({cell.contender}) answered {answer}")
        try:
            samples, beside = self._measure(cells, names, workers)
        finally:
            for name, cell in zip(names, cells, strict=False):
                workers[cell.contender].ask(op="teardown", cell=name)
        title = f"{self.title} ({self.rounds} rounds)"
        rows = []
        for cell, cell_samples, bare_samples in zip(cells, samples, beside, strict=False):
            measured, ratio, met = self.judge(cell, cell_samples, bare_samples)
            rows.append(
                Row(
                    title,
                    f"{CONTENDERS[cell.contender]}: {cell.what}",
                    measured,
                    ratio,
                    self.target if cell.judged else "",
                    ("PASS" if met else "FAIL") if cell.judged else "",
                )
            )
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


def versus_bare(limit: float) -> Judge:
    """Median time per request; the median of per-round ratios to the bare route."""

    def judge(cell: Cell, samples: list[Sample], bare: list[Sample]) -> tuple[str, str, bool]:
        ratio = statistics.median(
            mine.per_request / base.per_request for mine, base in zip(samples, bare, strict=False)
        )
        typical = statistics.median(sample.per_request for sample in samples)
        return f"{seconds(typical)} / request", f"{ratio:.2f}x bare", ratio <= limit

    return judge


def versus_slowest_field(limit: float) -> Judge:
    """Median time per request, as a multiple of how long one field takes."""

    def judge(cell: Cell, samples: list[Sample], _: list[Sample]) -> tuple[str, str, bool]:
        typical = statistics.median(sample.per_request for sample in samples)
        ratio = typical / cell.fields.seconds
        return f"{seconds(typical)} / request", f"{ratio:.2f}x slowest field", ratio <= limit

    return judge


def slowest_answer(limit: float) -> Judge:
    """The slowest answer of all rounds, in seconds and as a multiple of the timeout."""

    def judge(cell: Cell, samples: list[Sample], _: list[Sample]) -> tuple[str, str, bool]:
        longest = max(sample.longest for sample in samples)
        typical = statistics.median(sample.per_request for sample in samples)
        measured = f"slowest {seconds(longest)}, mean {seconds(typical)}"
        return measured, f"{longest / cell.fields.timeout:.2f}x timeout", longest <= limit

    return judge


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
            "≤ 1.3x slowest field",
            [
                Cell(OURS, concurrency, "16 sync + 16 async", 3, judged=True),
                Cell(OBVIOUS, concurrency, "16 sync + 16 async", 3),
                Cell(HEALTHCHECK, concurrency_sync, "32 sync", 1),
                Cell(ORIGINAL, concurrency_sync, "32 sync", 3),
            ],
            rounds=5,
            judge=versus_slowest_field(1.3),
        ),
        Scenario(
            "2. Overhead: 10 trivial fields, test client",
            "≤ 3x bare",
            [
                Cell(BARE, Fields(), "no fields", 500),
                Cell(OURS, TRIVIAL_MIXED, mixed, 500, judged=True),
                Cell(OURS, trivial_sync, sync_only, 500, judged=True),
                Cell(OBVIOUS, TRIVIAL_MIXED, mixed, 200),  # 10 times slower: fewer requests
                Cell(OBVIOUS, trivial_sync, sync_only, 200),
                Cell(HEALTHCHECK, trivial_sync, sync_only, 500),
                Cell(ORIGINAL, trivial_sync, sync_only, 500),
            ],
            rounds=9,
            judge=versus_bare(3.0),
        ),
        Scenario(
            "3. Overhead: 10 constant fields, test client",
            "≤ 1.3x bare",
            [
                Cell(BARE, Fields(), "no fields", 1000),
                Cell(OURS, constants, "10 constants", 1000, judged=True),
                Cell(ORIGINAL, constants, "10 constants", 1000),
            ],
            rounds=9,
            judge=versus_bare(1.3),
            not_run={HEALTHCHECK: "it has no constant fields"},
        ),
        Scenario(
            "4. Timeout precision: timeout 100 ms, 30 requests in a row",
            "slowest ≤ 150 ms",
            [
                Cell(OURS, hung, "1 hung sync + 1 hung async", 30, expect=503, judged=True),
                Cell(OBVIOUS, hung, "1 hung sync + 1 hung async", 30, expect=503),
            ],
            rounds=3,
            judge=slowest_answer(0.150),
            not_run={
                HEALTHCHECK: "it has no timeouts: a hung check hangs the request",
                ORIGINAL: "a hung field hangs `add_field`, at setup",
            },
        ),
        Scenario(
            "6. Scale: 200 fields of 100 ms",
            "≤ 1.5x slowest field",
            [
                Cell(OURS, scale, "100 sync + 100 async", 2, judged=True),
                Cell(OBVIOUS, scale, "100 sync + 100 async", 2),
            ],
            rounds=5,
            judge=versus_slowest_field(1.5),
            not_run={HEALTHCHECK: "sequential: 200 x 100 ms = 20 s a request, see 1."},
        ),
    ]


# -- ASGI throughput -----------------------------------------------------------------------

ASGI_TITLE = "5. ASGI throughput: uvicorn, 10 trivial fields"
ASGI_TARGET = "≥ 1.0x bare"
LOAD_ROUNDS = 5
LOAD_SECONDS = 3
LOAD_CONNECTIONS = 16


def asgi_throughput() -> list[Row]:
    """Requests/s of the status route and of a bare route, on one uvicorn process, with wrk."""
    try:
        wrk = peers.wrk()
    except peers.Unavailable as exc:
        return [Row(ASGI_TITLE, CONTENDERS[OURS], f"not run: {exc}", "", ASGI_TARGET, "—")]
    rates: dict[str, list[float]] = {BARE: [], OURS: []}
    LOGS.mkdir(parents=True, exist_ok=True)
    with (
        socket.create_server(("127.0.0.1", 0), backlog=1024) as listener,
        (LOGS / "uvicorn.log").open("w") as log,
    ):
        base = f"http://127.0.0.1:{listener.getsockname()[1]}"
        urls = {BARE: base + BARE_URL, OURS: base + URL}
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "asgi_app:app", "--app-dir", str(HERE)),
                *("--fd", str(listener.fileno()), "--no-access-log", "--log-level", "warning"),
            ],
            cwd=HERE,
            pass_fds=(listener.fileno(),),
            stdout=log,
            stderr=log,
        )
        try:
            for url in urls.values():
                _wait_for_ok(url, server)
                _load(wrk, url, 1)  # warm-up
            for round_number in range(LOAD_ROUNDS):
                order = [BARE, OURS] if round_number % 2 == 0 else [OURS, BARE]
                for name in order:
                    rates[name].append(_load(wrk, urls[name], LOAD_SECONDS))
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    ratio = statistics.median(
        mine / bare for mine, bare in zip(rates[OURS], rates[BARE], strict=False)
    )
    load = f"wrk -c{LOAD_CONNECTIONS}, a connection per request, {LOAD_ROUNDS} x {LOAD_SECONDS} s"
    return [
        Row(
            ASGI_TITLE,
            f"{CONTENDERS[BARE]} through `WsgiToAsgi` ³",
            f"{statistics.median(rates[BARE]):,.0f} requests/s ({load})",
            "1.00x bare",
        ),
        Row(
            ASGI_TITLE,
            f"{CONTENDERS[OURS]}: 5 sync + 5 async, `StatusMiddleware`",
            f"{statistics.median(rates[OURS]):,.0f} requests/s",
            f"{ratio:.2f}x bare",
            ASGI_TARGET,
            "PASS" if ratio >= 1.0 else "FAIL",
        ),
    ]


def _wait_for_ok(url: str, server: subprocess.Popen[bytes]) -> None:
    """Wait (10 s at most) until ``url`` answers 200."""
    for _ in range(100):
        if server.poll() is not None:
            raise BenchError(f"uvicorn exited; its log: {LOGS / 'uvicorn.log'}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"{url} did not answer 200 within 10 s")


def _load(wrk: str, url: str, duration: int) -> float:
    """Requests/s that wrk gets from ``url`` over ``duration`` seconds."""
    # A connection per request, for the reason given in the footnotes.
    command = [wrk, "-t1", f"-c{LOAD_CONNECTIONS}", f"-d{duration}s", "-H", "Connection: close"]
    command.append(url)
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in output or "Socket errors" in output:
        raise BenchError(f"{url} answered errors under load:\n{output}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not found:
        raise BenchError(f"no Requests/sec in wrk's output:\n{output}")
    return float(found.group(1))


# -- memory --------------------------------------------------------------------------------

MEMORY_TITLE = "7. Memory: 100,000 requests, 10 trivial fields, test client"
MEMORY_TARGET = "< 5 MB growth"


def memory(requests: int = 100_000, warmup: int = 10_000, samples: int = 10) -> list[Row]:
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
        Row(
            MEMORY_TITLE,
            f"{CONTENDERS[OURS]}: 5 sync + 5 async",
            measured,
            "",
            MEMORY_TARGET,
            "PASS" if growth < 5 else "FAIL",
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
        f"{name} {version(name)}" for name in ("flask", "werkzeug", "anyio", "uvicorn")
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
            "(their order rotates each round), and each round of a contender is paired with a "
            "round of the bare route right beside it; figures are medians over rounds, ratios "
            "are medians of the per-pair ratios.",
            table(rows),
            "\n".join(f"- {note}" for note in FOOTNOTES),
        ]
    )


def write_readme(text: str) -> None:
    """Replace the results section of README.md (or add one) with ``text``."""
    current = README.read_text() if README.exists() else ""
    section = f"{BEGIN}\n\n{text}\n\n{END}\n"
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        current = head + section + rest.split(END, 1)[1].lstrip("\n")
    else:
        current = current.rstrip("\n") + ("\n\n" if current else "") + section
    README.write_text(current)


def main() -> None:
    started, clock, load = datetime.now(timezone.utc), time.monotonic(), os.getloadavg()[0]
    print("preparing the contenders ...", file=sys.stderr, flush=True)
    workers, missing = start_workers()
    rows: list[Row] = []
    try:
        for scenario in scenarios():
            print(f"{scenario.title} ...", file=sys.stderr, flush=True)
            rows += scenario.run(workers, missing)
    finally:
        for worker in workers.values():
            worker.close()
    print(f"{ASGI_TITLE} ...", file=sys.stderr, flush=True)
    rows += asgi_throughput()
    print(f"{MEMORY_TITLE} ...", file=sys.stderr, flush=True)
    rows += memory()
    text = report(rows, started, time.monotonic() - clock, load)
    print(text)
    write_readme(text)
    print(f"\nwritten to {README}", file=sys.stderr)


if __name__ == "__main__":
    main()
