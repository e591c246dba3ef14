"""The app of the sharing scenario, served by gunicorn as ``store_app:app``.

Its check appends the time of each execution to the file named by ``BENCH_EXECUTIONS``; with
``BENCH_STORE`` set, results are shared through that Redis. With ``BENCH_STATE`` set (the events
scenario), the check is up while that file says ``up``, and each change event is appended to
the file named by ``BENCH_EVENTS``.
"""

from __future__ import annotations

import os
import time

from flask import Flask

from flask_status import ChangeEvent, FlaskStatus

#: Seconds a result stays fresh.
CACHE_TTL = 2.0

app = Flask("bench_store")


@app.get("/bare")
def bare() -> str:
    return "ok"


def database() -> str:
    with open(os.environ["BENCH_EXECUTIONS"], "a") as log:  # one short append: atomic
        log.write(f"{time.time()}\n")
    state = os.environ.get("BENCH_STATE")
    if state:
        with open(state) as text:
            if text.read().strip() != "up":
                raise ConnectionError("refused")
    return "up"


status = FlaskStatus(app, store=os.environ.get("BENCH_STORE") or None, timeout=1)
status.add_field("database", database, cache_ttl=CACHE_TTL)


def announce(event: ChangeEvent) -> None:
    with open(os.environ["BENCH_EVENTS"], "a") as log:
        log.write(f"{event.key} {event.old} {event.new}\n")


if os.environ.get("BENCH_EVENTS"):
    status.on_change(announce)
