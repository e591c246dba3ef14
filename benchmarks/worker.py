"""A benchmark worker: builds apps in this interpreter and times requests to them on command.

``run.py`` starts one worker per contender, each in the contender's virtualenv, and sends one
JSON command per line on stdin; each answer is one JSON line on stdout:

- ``{"op": "setup", "cell": ..., "builder": ..., "fields": {...}}``: build the app and warm it
  up; answers the status code and body of one request.
- ``{"op": "round", "cell": ..., "requests": n}``: ``n`` requests in a row; answers their total
  and longest time in seconds, the CPU time the process spent on them (all its threads), and
  the status codes seen.
- ``{"op": "teardown", "cell": ...}``: release the app's hung checks and drop it.
- ``{"op": "memory", "builder": ..., "fields": {...}, "warmup": n, "requests": n, "samples": k}``:
  resident memory (kB) after ``warmup`` requests, then every ``requests / samples`` requests.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from typing import Any

from apps import URL, Checks, Fields, build
from flask import Flask

WARMUP_REQUESTS = 50


class Worker:
    """The apps this process serves, by cell name, and the commands that time them."""

    def __init__(self) -> None:
        self.cells: dict[str, tuple[Flask, Checks]] = {}

    def setup(self, cell: str, builder: str, fields: dict[str, Any]) -> dict[str, Any]:
        app, checks = build(builder, Fields(**fields))
        self.cells[cell] = (app, checks)
        client = app.test_client()
        response = client.get(URL)
        if not checks.fields.seconds and not _hangs(checks):  # slow apps are not worth warming
            for _ in range(WARMUP_REQUESTS):
                client.get(URL)
        return {"status": response.status_code, "body": response.get_data(as_text=True)}

    def round(self, cell: str, requests: int) -> dict[str, Any]:
        client = self.cells[cell][0].test_client()
        statuses = set()
        longest = 0.0
        cpu = time.process_time()
        started = time.perf_counter()
        for _ in range(requests):
            sent = time.perf_counter()
            statuses.add(client.get(URL).status_code)
            longest = max(longest, time.perf_counter() - sent)
        return {
            "total": time.perf_counter() - started,
            "cpu": time.process_time() - cpu,
            "max": longest,
            "statuses": sorted(statuses),
        }

    def teardown(self, cell: str) -> dict[str, Any]:
        _, checks = self.cells.pop(cell)
        checks.release.set()
        return {}

    def memory(
        self, builder: str, fields: dict[str, Any], warmup: int, requests: int, samples: int
    ) -> dict[str, Any]:
        app, _ = build(builder, Fields(**fields))
        client = app.test_client()
        started = time.perf_counter()
        for _ in range(warmup):
            client.get(URL)
        readings = [_rss_kb()]
        for _ in range(samples):
            for _ in range(requests // samples):
                client.get(URL)
            readings.append(_rss_kb())
        return {"rss_kb": readings, "seconds": time.perf_counter() - started}


def _hangs(checks: Checks) -> bool:
    return bool(checks.fields.hung_sync or checks.fields.hung_async)


def _rss_kb() -> int:
    """Resident memory of this process, after a full collection."""
    gc.collect()
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    # Answers go to the original stdout; anything a library prints goes to stderr instead.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout = sys.stderr
    worker = Worker()
    for line in sys.stdin:
        command = json.loads(line)
        operation = getattr(worker, command.pop("op"))
        answers.write(json.dumps(operation(**command)) + "\n")
        answers.flush()


if __name__ == "__main__":
    main()
