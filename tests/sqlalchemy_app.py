"""A Flask-SQLAlchemy app whose checks use ``db.session``: on request, in the background, run
ahead of the requests that joined a run, and one that hangs until released. It reports its
pool and its scoped sessions at ``/pool``, so a test can tell that every check gave its
connection back. Served in-process (WSGI) and by a real uvicorn (``create_asgi_app``).
"""

from __future__ import annotations

import os
import threading
import time

from asgiref.wsgi import WsgiToAsgi
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text

from flask_status import FlaskStatus, checks
from flask_status.asgi import StatusMiddleware

#: Environment variable naming the SQLite file.
DATABASE_ENV = "SQLALCHEMY_APP_DATABASE"
#: Connections the pool holds at most: a leak shows as a pool that runs dry.
POOL_SIZE = 7
#: Seconds the hung check waits for ``/release`` at most.
HANG_SECONDS = 20.0


def create_app(database: str | None = None) -> Flask:
    app = Flask("sqlalchemy_app")
    path = database or os.environ[DATABASE_ENV]
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{path}"
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {
        "pool_size": POOL_SIZE,
        "max_overflow": 0,
        "pool_timeout": 2,
    }
    db = SQLAlchemy(app)
    released = threading.Event()
    hung = {"returned": 0}

    def select_one() -> int:
        return int(db.session.execute(text("SELECT 1")).scalar_one())

    def database() -> int:
        time.sleep(0.005)  # long enough to be run ahead of the requests that joined it
        return select_one()

    def hangs() -> int:
        value = select_one()  # checks a connection out, then hangs holding it
        released.wait(HANG_SECONDS)
        hung["returned"] += 1
        return value

    status = FlaskStatus(app)
    status.add_field("database", database)
    status.add_field("background", select_one, interval=0.1, wait_first=True)
    status.add_field("ready_made", checks.sqlalchemy(db), interval=0.1, wait_first=True)
    status.add_field("hangs", hangs, timeout=0.2, critical=False)

    @app.get("/hello")
    def hello() -> ResponseReturnValue:
        return jsonify(select_one())

    @app.get("/pool")
    def pool() -> ResponseReturnValue:
        # The registry of scoped sessions, one per app context that used db.session; this
        # request's own is not made until something uses db.session here.
        sessions = db.session.registry.registry  # type: ignore[attr-defined]
        return jsonify(
            checked_out=db.engine.pool.checkedout(),  # type: ignore[attr-defined]
            sessions=len(sessions),
            hung_returned=hung["returned"],
        )

    @app.post("/release")
    def release() -> ResponseReturnValue:
        released.set()
        return jsonify(True)

    return app


def create_asgi_app() -> StatusMiddleware:
    app = create_app()
    return StatusMiddleware(WsgiToAsgi(app), app)
