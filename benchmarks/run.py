"""``make bench``: every scenario and contender, measured in one run, as one table.

Each group of scenarios has a module of its own: ``in_process`` (Flask's test client, in worker
processes), ``under_wrk`` (wrk's load on uvicorn), ``probes`` (probes timed one by one on real
servers) and ``sharing`` (a fleet sharing results through Redis). Their contenders' rounds
alternate, so that the load of this shared machine falls on all of them alike. Figures are
medians over the rounds, and ratios are medians of per-round ratios. The table is printed and
written to ``benchmarks/results.md``, which git ignores: ``README.md`` holds the results a person
recorded. Timing targets are reported, never enforced: this script fails only if a benchmark
breaks.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial

import in_process
import probes
import sharing
import under_wrk
from report import Row, report
from servers import HERE

RESULTS = HERE / "results.md"
#: What a run took on 2 cores shared with other work, once the peers' virtualenvs were there.
EXPECTED_MINUTES = 8

#: The scenarios a full run measures after the in-process ones, in this order: the memory
#: scenario, the longest, last.
AFTER_IN_PROCESS: list[tuple[str, Callable[[], list[Row]]]] = [
    (under_wrk.ASGI_TITLE, under_wrk.asgi_throughput),
    (probes.GEVENT_TITLE, probes.gevent_worker),
    (under_wrk.UNDER_LOAD_TITLE, under_wrk.under_load),
    (under_wrk.BACKGROUND_TITLE, under_wrk.background_checks),
    (probes.HOOK_TITLE, probes.request_hook),
    (sharing.SHARING_TITLE, sharing.through_redis),
    (in_process.MEMORY_TITLE, in_process.memory),
]


def main() -> None:
    started, clock, load = datetime.now(timezone.utc), time.monotonic(), os.getloadavg()[0]
    say(
        f"make bench takes up to {EXPECTED_MINUTES:g} minutes on 2 cores, less when they "
        "are idle (a minute more the first time, to create the peers' virtualenvs)"
    )
    rows: list[Row] = []
    tested = in_process.scenarios()
    say("preparing the contenders ...")
    with in_process.workers(tested) as (workers, missing):
        for scenario in tested:
            rows += stage(scenario.title, partial(scenario.run, workers, missing))
    for title, measure in AFTER_IN_PROCESS:
        rows += stage(title, measure)
    duration = time.monotonic() - clock
    command = "`make bench` (`.venv/bin/python benchmarks/run.py`)"
    text = report(rows, command, started, duration, load)
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
