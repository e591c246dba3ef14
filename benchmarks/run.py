"""``make bench``: every scenario and contender, measured in one run, as one table.

Each group of scenarios has a module of its own: ``in_process`` (Flask's test client, in worker
processes), ``under_wrk`` (wrk's load on uvicorn), ``probes`` (probes timed one by one on real
servers), ``sharing`` (a fleet sharing results through Redis), ``events`` (change events) and
``costs`` (what a status request costs, stage by stage: a table of its own, printed after the
main one). Their contenders' rounds alternate, so that the load of this shared machine falls on
all of them alike. Figures are medians over the rounds, and ratios are medians of per-round ratios.
The table is printed and written to ``benchmarks/results.md``, which git ignores: ``README.md``
holds the results a person recorded. Timing targets are reported, never enforced: this script
fails only if a benchmark breaks.

``run.py 3 hook`` measures only the scenarios named (by number or name; ``--help`` lists them)
and prints their table, leaving ``results.md`` as the last full run wrote it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from typing import TypeVar

import costs
import events
import in_process
import probes
import sharing
import under_wrk
from report import Row, number, report
from servers import HERE

T = TypeVar("T")

RESULTS = HERE / "results.md"
#: What a run took on 2 cores shared with other work, once the peers' virtualenvs were there.
EXPECTED_MINUTES = 12

#: Each scenario's name on the command line, by number.
NAMES = {
    1: "concurrency",
    2: "overhead",
    3: "constants",
    4: "timeout",
    5: "asgi",
    6: "scale",
    7: "memory",
    8: "gevent",
    9: "under-load",
    10: "background",
    11: "hook",
    12: "sharing",
    13: "dependencies",
    14: "events",
    15: "telemetry",
    16: "watchers",
    17: "costs",
}

#: Scenarios whose figures do not fit the main table: each gives its rows of the main table
#: and a table of its own, printed after it. Measured right after the in-process scenarios.
WITH_TABLES: list[tuple[str, Callable[[], tuple[list[Row], str]]]] = [
    (costs.TITLE, costs.scenario),
]

#: The scenarios a full run measures after the in-process ones, in this order: the memory
#: scenario, the longest, last.
AFTER_IN_PROCESS: list[tuple[str, Callable[[], list[Row]]]] = [
    (under_wrk.ASGI_TITLE, under_wrk.asgi_throughput),
    (probes.GEVENT_TITLE, probes.gevent_worker),
    (under_wrk.UNDER_LOAD_TITLE, under_wrk.under_load),
    (under_wrk.BACKGROUND_TITLE, under_wrk.background_checks),
    (probes.HOOK_TITLE, probes.request_hook),
    (sharing.SHARING_TITLE, sharing.through_redis),
    (events.EVENTS_TITLE, events.change_events),
    (probes.WATCH_TITLE, probes.watchers),
    (in_process.MEMORY_TITLE, in_process.memory),
]


def main() -> None:
    arguments = sys.argv[1:]
    chosen = set(parse(arguments)) or set(NAMES)
    everything = chosen == set(NAMES)
    started, clock, load = datetime.now(timezone.utc), time.monotonic(), os.getloadavg()[0]
    if everything:
        say(
            f"make bench takes up to {EXPECTED_MINUTES:g} minutes on 2 cores, less when they "
            "are idle (a minute more the first time, to create the peers' virtualenvs)"
        )
    rows: list[Row] = []
    tested = [s for s in in_process.scenarios() if number(s.title) in chosen]
    if tested:
        say("preparing the contenders ...")
        with in_process.workers(tested) as (workers, missing):
            for scenario in tested:
                rows += stage(scenario.title, partial(scenario.run, workers, missing))
    tables: list[str] = []
    for title, measure_with_table in WITH_TABLES:
        if number(title) in chosen:
            found, text = stage(title, measure_with_table)
            rows += found
            tables += [text] if text else []
    for title, measure in AFTER_IN_PROCESS:
        if number(title) in chosen:
            rows += stage(title, measure)
    duration = time.monotonic() - clock
    invoked = " ".join([".venv/bin/python benchmarks/run.py", *arguments])
    command = f"`{invoked}`" if arguments else f"`make bench` (`{invoked}`)"
    text = report(rows, command, started, duration, load, tables)
    print(text)
    if everything:
        RESULTS.write_text(text + "\n")
        say(f"\ntook {duration / 60:.1f} minutes; written to {RESULTS}")
    else:
        say(f"\ntook {duration / 60:.1f} minutes; {RESULTS} is left as it was")


def parse(arguments: list[str]) -> list[int]:
    """The numbers of the scenarios named on the command line."""
    numbers = {str(key): key for key in NAMES} | {name: key for key, name in NAMES.items()}

    def scenario(argument: str) -> int:
        if argument not in numbers:
            raise argparse.ArgumentTypeError(f"no scenario {argument!r}")
        return numbers[argument]

    parser = argparse.ArgumentParser(
        description="Measure the benchmark's scenarios (all of them when none is named).",
        epilog="scenarios: " + ", ".join(f"{key} {name}" for key, name in NAMES.items()),
    )
    parser.add_argument(
        "scenarios", nargs="*", type=scenario, metavar="scenario", help="a number or a name"
    )
    return list(parser.parse_args(arguments).scenarios)


def stage(title: str, measure: Callable[[], T]) -> T:
    """``measure()``, saying what and how long it took."""
    say(f"{title} ...")
    clock = time.monotonic()
    measured = measure()
    say(f"  {time.monotonic() - clock:.0f} s")
    return measured


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
