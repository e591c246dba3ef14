"""What every scenario reports: rows of one table, each held to its target where it has one.

The contenders' names and labels, the targets and rows, how figures are shown, and the text
``run.py`` prints and writes to ``results.md``.
"""

from __future__ import annotations

import operator
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import version
from typing import TypeVar

OURS = "flask-status"
OURS_COUNTED = "flask-status-counted"  # ours, with each check counting its runs
OURS_HOOKED = "flask-status-hooked"  # ours, in an app with a no-op request hook
OURS_TELEMETRY_OFF = "flask-status-telemetry-off"  # ours, with telemetry=False
OURS_OTEL_SDK = "flask-status-otel-sdk"  # ours, in an app that configured the OpenTelemetry SDK
BARE = "bare"
OBVIOUS = "obvious"
HEALTHCHECK = "py-healthcheck"
ORIGINAL = "flask-status-1.0.1"
STARLETTE = "starlette"
STARLETTE_BARE = "starlette-bare"
ASYNCIO_VIEW = "asyncio-view"

CONTENDERS = {
    OURS: "flask-status (this project)",
    OURS_TELEMETRY_OFF: "flask-status, `telemetry=False`",
    OURS_OTEL_SDK: "flask-status, OpenTelemetry SDK + in-memory exporter ⁵",
    BARE: "bare Flask route",
    OBVIOUS: "obvious design: async view + anyio",
    HEALTHCHECK: "py-healthcheck 1.3.3 ²",
    ORIGINAL: "Flask-Status 1.0.1 ¹",
    STARLETTE: "Starlette endpoint + anyio task group ⁴",
    STARLETTE_BARE: "bare Starlette route ⁴",
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
    "through `asyncio.to_thread`, each under `asyncio.wait_for`. With constants, the floor: a "
    "bare Starlette route answering the same JSON document as ours, its values written in. Ours "
    "is the status route under `StatusMiddleware(WsgiToAsgi(app), app)`; CPU is its uvicorn "
    "process's (user + system, all threads, from `/proc/<pid>/stat`) over each round, per "
    "request answered.",
    "⁵ In a worker process of its own (the SDK's global providers are set once per process, "
    "and must not reach the other contenders): spans go through a `BatchSpanProcessor` (as "
    "production apps configure it: export leaves the request path) to an "
    "`InMemorySpanExporter` (emptied every 1,000 spans: an exporter that sends them keeps "
    "none), metrics to an `InMemoryMetricReader`. "
    "The other rows of scenario 15 have `opentelemetry-api` installed and no SDK configured: "
    "its no-op providers.",
    "The obvious design is a Flask `async def` view that runs every field in one anyio task "
    "group, sync ones through `anyio.to_thread.run_sync(abandon_on_cancel=True)`, each under "
    "`anyio.move_on_after(timeout)`.",
]

T = TypeVar("T")

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
    scenario: str  # its title, which starts with its number: "3. Overhead: ..."
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


def not_run(scenario: str, contender: str, why: str) -> Row:
    return Row(scenario, contender, f"not run: {why}")


def median_ratio(mine: Sequence[T], theirs: Sequence[T], figure: Callable[[T], float]) -> float:
    """The median of per-round ratios of ``figure``, ``mine`` and ``theirs`` paired round by
    round."""
    return statistics.median(
        figure(one) / figure(other) for one, other in zip(mine, theirs, strict=True)
    )


def seconds(value: float) -> str:
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def number(scenario: str) -> int:
    """The number a scenario's title starts with."""
    return int(scenario.split(".")[0])


def table(rows: list[Row]) -> str:
    lines = [
        "| scenario | contender: fields | measured (median of rounds) | ratio | target | result |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    shown = ""
    for row in sorted(rows, key=lambda row: number(row.scenario)):
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


def report(
    rows: list[Row],
    command: str,
    started: datetime,
    duration: float,
    load: float,
    tables: Sequence[str] = (),
) -> str:
    """The table of ``rows``, after a paragraph saying how, when and where it was measured
    (by ``command``), and before the footnotes; then the scenarios' own ``tables``."""
    when = started.strftime("%Y-%m-%d %H:%M UTC")
    return "\n\n".join(
        [
            f"Measured by {command} on {when}, "
            f"in one run of {duration / 60:.1f} minutes. Machine: {machine()}; "
            f"load average {load:.2f} at the start. Rounds of the contenders alternate "
            "(their order rotates each round); in the in-process scenarios, each round of a "
            "contender is paired with a round of the bare route right beside it. Figures are "
            "medians over rounds, ratios are medians of the per-round ratios.",
            table(rows),
            "\n".join(f"- {note}" for note in FOOTNOTES),
            *tables,
        ]
    )
