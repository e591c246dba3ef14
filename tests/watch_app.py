"""Apps serving live status streams, for tests/test_watch.py: real servers run these.

The ``flag`` check reads a file the test writes (``WATCH_FLAG_FILE``): ``down`` fails it,
anything else is its value. ``app.config`` comes from ``WATCH_*`` environment variables
(``WATCH_STATUS_MAX_WATCHERS=2`` sets ``STATUS_MAX_WATCHERS``).
"""

from __future__ import annotations

import os
from pathlib import Path

from asgiref.wsgi import WsgiToAsgi
from flask import Flask
from helpers import token_required, token_required_async
from served_app import base_app

from flask_status import FlaskStatus, drain
from flask_status.asgi import StatusMiddleware

FLAG_ENV = "WATCH_FLAG_FILE"
TOKEN = "s3cret"


def flag() -> str:
    text = Path(os.environ[FLAG_ENV]).read_text().strip() or "up"
    if text == "down":
        raise RuntimeError("the flag is down")
    return text


def create_app() -> Flask:
    app = base_app("watch_app")
    app.config.from_prefixed_env("WATCH")
    status = FlaskStatus(app, is_authorized=lambda request: request.args.get("token") == TOKEN)
    status.add_field("flag", flag)
    status.add_field("version", "1.0")
    for url, authenticator in (
        ("/api/guarded", token_required),
        ("/api/guarded-async", token_required_async),
    ):
        guarded = FlaskStatus(app, url=url, authenticator=authenticator, show_details="always")
        guarded.add_field("flag", flag)

    @app.post("/drain-now")
    def drain_now() -> str:
        drain()
        return "draining"

    return app


def create_asgi_app() -> StatusMiddleware:
    app = create_app()
    return StatusMiddleware(WsgiToAsgi(app), app)  # type: ignore[no-untyped-call]


def create_bare_asgi_app() -> WsgiToAsgi:
    return WsgiToAsgi(create_app())  # type: ignore[no-untyped-call]


def create_wrapped_asgi_app() -> StatusMiddleware:
    """``app.wsgi_app`` wrapped in WSGI middleware: status requests go through it, in threads."""
    from werkzeug.middleware.proxy_fix import ProxyFix

    app = create_app()
    app.wsgi_app = ProxyFix(app.wsgi_app)  # type: ignore[method-assign]
    return StatusMiddleware(WsgiToAsgi(app), app)  # type: ignore[no-untyped-call]
