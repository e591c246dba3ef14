"""The app of the sharing scenario, served by gunicorn as ``store_app:app``.

Its check appends the time of each execution to the file named by ``BENCH_EXECUTIONS``; with
``BENCH_STORE`` set, results are shared through that Redis.
"""

from __future__ import annotations

import os
import time

from flask import Flask

from flask_status import FlaskStatus

#: Seconds a result stays fresh.
CACHE_TTL = 2.0

app = Flask("bench_store")


@app.get("/bare")
def bare() -> str:
    return "ok"


def database() -> str:
    with open(os.environ["BENCH_EXECUTIONS"], "a") as log:  # one short append: atomic
        log.write(f"{time.time()}\n")
    return "up"


status = FlaskStatus(app, store=os.environ.get("BENCH_STORE") or None, timeout=1)
status.add_field("database", database, cache_ttl=CACHE_TTL)
