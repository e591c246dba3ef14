"""The app of the ASGI throughput scenario, served by uvicorn as ``asgi_app:app``.

One Flask app, two routes on one server: the status route with the overhead scenario's
trivial fields, served natively by ``StatusMiddleware``, and a bare route passed on to
``WsgiToAsgi``.
"""

from __future__ import annotations

from typing import Any

from apps import BARE_URL, TRIVIAL_MIXED, build
from asgiref.wsgi import WsgiToAsgi
from flask import jsonify

from flask_status.asgi import StatusMiddleware

flask_app, _ = build("flask-status", TRIVIAL_MIXED)


@flask_app.get(BARE_URL)
def bare() -> Any:
    return jsonify({"status": "OK"})


app = StatusMiddleware(WsgiToAsgi(flask_app), flask_app)
