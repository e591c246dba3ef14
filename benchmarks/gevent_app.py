"""The app of the gevent scenario, served by ``gunicorn -k gevent -w 1 gevent_app:app``.

gunicorn's gevent worker monkey-patches the standard library before it imports this module.
The status route has one sync check that blocks below the patching, as a C extension's
blocking call would: ``time.sleep`` as it was before the patching, for ``BLOCK_SECONDS``,
under a timeout far shorter (``BLOCK_TIMEOUT``); and one trivial async check.
"""

from __future__ import annotations

from typing import Any

import gevent.monkey
from apps import BARE_URL, BLOCK_SECONDS, BLOCK_TIMEOUT
from flask import Flask, jsonify

from flask_status import FlaskStatus

app = Flask("bench_gevent")
status = FlaskStatus(app)


def blocking() -> bool:
    gevent.monkey.get_original("time", "sleep")(BLOCK_SECONDS)
    return True


async def trivial() -> bool:
    return True


status.add_field("blocking", blocking, timeout=BLOCK_TIMEOUT, critical=False)
status.add_field("trivial", trivial)


@app.get(BARE_URL)
def bare() -> Any:
    return jsonify({"status": "OK"})
