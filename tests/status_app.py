"""A Flask app with several status routes, request hooks and an error handler.

The WSGI tests use :func:`create_app` in-process; the ASGI tests serve :func:`create_asgi_app`
(or :func:`create_plain_asgi_app`) with a real uvicorn process, so both paths run the same app.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from asgiref.wsgi import WsgiToAsgi
from flask import Flask, Response, abort, current_app, g, jsonify, request
from flask_sqlalchemy import SQLAlchemy
from helpers import CallCounter, sleeping, sleeping_async
from sqlalchemy import text

from flask_status import FlaskStatus
from flask_status.asgi import StatusMiddleware

APP_NAME = "status_app"
TOKEN_COOKIE = "token"
GOOD_TOKEN = "s3cret"
#: How long the checks of ``/api/status`` take.
CHECK_SECONDS = 0.2
#: Environment variable naming the SQLite file of the app a uvicorn process serves.
DATABASE_ENV = "STATUS_APP_DATABASE"
#: The error a field checking a dependency that is down shows.
REFUSED = {"error": "ConnectionRefusedError: connection refused"}


def check_token() -> None:
    """Flask-Status 1.0.1's README authenticator logic: 401 without a token, 403 for a bad one."""
    token = request.cookies.get(TOKEN_COOKIE)
    if not token:
        abort(401)
    if token != GOOD_TOKEN:
        abort(403)


def login_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """A sync authenticator: calls the view and returns its result."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        check_token()
        return view(*args, **kwargs)

    return wrapper


def login_required_async(view: Callable[..., Any]) -> Callable[..., Any]:
    """An async authenticator: awaits the view."""

    @wraps(view)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        check_token()
        return await view(*args, **kwargs)

    return wrapper


#: Status routes behind an authenticator; their field ``calls`` counts how often checks ran.
AUTHENTICATORS = {"/private": login_required, "/private-async": login_required_async}


def summary_for_anonymous(view: Callable[..., Any]) -> Callable[..., Any]:
    """An authenticator that edits the view's answer: callers without X-User get the status only."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        response = view(*args, **kwargs)
        if "X-User" not in request.headers:
            response.set_data(json.dumps({"status": response.get_json()["status"]}))
        return response

    return wrapper


def context_checks(db: SQLAlchemy) -> dict[str, Callable[[], Any]]:
    """Sync checks reading every Flask context a check may rely on."""
    return {
        "app": lambda: current_app.name,
        "user": lambda: g.user,
        "probe": lambda: request.headers["X-Probe"],
        "query": lambda: request.args["q"],
        "database": lambda: db.session.execute(text("SELECT name FROM services")).scalar_one(),
    }


def as_async(check: Callable[[], Any]) -> Callable[[], Any]:
    """The same check as a coroutine function that suspends once before reading the context."""

    async def async_check() -> Any:
        await asyncio.sleep(0)
        return check()

    return async_check


def refused() -> None:
    """A dependency that is down."""
    raise ConnectionRefusedError("connection refused")


def create_app(database: str | Path) -> Flask:
    """The app, with its Flask-SQLAlchemy database in the SQLite file ``database``."""
    app = Flask(APP_NAME)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{database}"
    db = SQLAlchemy(app)
    with app.app_context():
        db.session.execute(text("CREATE TABLE IF NOT EXISTS services (name TEXT)"))
        db.session.execute(text("DELETE FROM services"))
        db.session.execute(text("INSERT INTO services VALUES ('sqlite')"))
        db.session.commit()

    counters = {url: CallCounter() for url in AUTHENTICATORS}

    @app.before_request
    def load_user() -> None:
        if request.headers.get("X-Throttle"):
            abort(429)
        g.user = request.headers.get("X-User", "anonymous")

    @app.after_request
    def served_by(response: Response) -> Response:
        response.headers["X-Served-By"] = APP_NAME
        return response

    @app.errorhandler(429)
    def throttled(_: Exception) -> tuple[Response, int]:
        return jsonify(error="throttled"), 429

    @app.get("/hello")
    def hello() -> str:
        return "hello"

    @app.get("/calls")
    def call_counts() -> Response:
        return jsonify({url: counter.calls for url, counter in counters.items()})

    main = FlaskStatus(app, timeout=2)
    main.add_field("version", "2.0.0")
    main.add_field("sync_check", sleeping(CHECK_SECONDS))
    main.add_field("async_check", sleeping_async(CHECK_SECONDS))

    down = FlaskStatus(app, url="/api/down", message={"service": APP_NAME})
    down.add_field("database", refused)
    down.add_field("cache", "warm")

    # Cancelled at its timeout, so a request never leaves it running.
    FlaskStatus(app, url="/api/hung", timeout=0.2).add_field("queue", sleeping_async(60))

    checks = context_checks(db)
    sync_context = FlaskStatus(app, url="/ctx/sync")
    async_context = FlaskStatus(app, url="/ctx/async")
    for key, check in checks.items():
        sync_context.add_field(key, check)
        async_context.add_field(key, as_async(check))

    for url, authenticator in AUTHENTICATORS.items():
        private = FlaskStatus(app, url=url, authenticator=authenticator)
        private.add_field("calls", counters[url])
    summary = FlaskStatus(app, url="/summary", authenticator=summary_for_anonymous)
    summary.add_field("database", "sqlite")
    summary.add_field("mail", refused, critical=False)
    return app


def create_asgi_app() -> StatusMiddleware:
    """The app behind StatusMiddleware: status routes on the server's event loop."""
    app = create_app(os.environ[DATABASE_ENV])
    return StatusMiddleware(WsgiToAsgi(app), app)  # type: ignore[no-untyped-call]


def create_plain_asgi_app() -> WsgiToAsgi:
    """The app behind WsgiToAsgi alone: every request on asgiref's WSGI thread."""
    return WsgiToAsgi(create_app(os.environ[DATABASE_ENV]))  # type: ignore[no-untyped-call]
