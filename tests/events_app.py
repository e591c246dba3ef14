"""The app of the fleet test of change events (``test_events.py``), served by gunicorn.

Its field ``db`` is up while the file named by ``EVENTS_STATE_FILE`` says ``up``; its results
are shared through the Redis at ``EVENTS_REDIS_URL``, and every event any worker announces is
pushed to the Redis list ``EVENTS_LIST``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import redis
from flask import Flask

from flask_status import ChangeEvent, FlaskStatus

#: Seconds a result is shared for (the test probes every worker several times per period).
CACHE_TTL = 0.5


def create_app() -> Flask:
    app = Flask(__name__)
    app.get("/hello")(lambda: "hello")  # the servers' readiness path
    url = os.environ["EVENTS_REDIS_URL"]
    state = Path(os.environ["EVENTS_STATE_FILE"])
    status = FlaskStatus(app, store=url, cache_ttl=CACHE_TTL)

    def db() -> str:
        if state.read_text().strip() != "up":
            raise ConnectionError("refused")
        return "up"

    status.add_field("db", db)
    announced = redis.Redis.from_url(url)

    @status.on_change
    def record(event: ChangeEvent) -> None:
        entry = {"key": event.key, "old": event.old, "new": event.new, "pid": os.getpid()}
        announced.rpush(os.environ["EVENTS_LIST"], json.dumps(entry))

    return app
