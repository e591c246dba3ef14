"""The apps uvicorn serves in the scenarios on real servers: ``uvicorn --factory asgi_app:create``.

The environment says which app to make: ``BENCH_APP`` names it (a key of ``APPS``) and
``BENCH_FIELDS`` holds the fields it checks, as the JSON of an ``apps.Fields``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from apps import BARE_URL, URL, Checks, Fields, answer, build, gather_with_anyio
from asgiref.wsgi import WsgiToAsgi
from flask import jsonify
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from flask_status.asgi import StatusMiddleware


def flask_status(fields: Fields) -> Any:
    """This project's status route, served natively by ``StatusMiddleware``, and a bare Flask
    route beside it, passed on to ``WsgiToAsgi``."""
    flask_app, _ = build("flask-status", fields)

    @flask_app.get(BARE_URL)
    def bare() -> Any:
        return jsonify({"status": "OK"})

    return StatusMiddleware(WsgiToAsgi(flask_app), flask_app)


def starlette(fields: Fields) -> Any:
    """A plain Starlette endpoint running the checks in an anyio task group."""
    checks = Checks(fields)

    async def status(request: Request) -> JSONResponse:
        document, code = answer(await gather_with_anyio(checks))
        return JSONResponse(document, status_code=code)

    return Starlette(routes=[Route(URL, status)])


def asyncio_view(fields: Fields) -> Any:
    """A Flask ``async def`` view gathering the checks with ``asyncio.gather``."""
    flask_app, _ = build("asyncio-view", fields)
    return WsgiToAsgi(flask_app)


APPS: dict[str, Callable[[Fields], Any]] = {
    "flask-status": flask_status,
    "starlette": starlette,
    "asyncio-view": asyncio_view,
}


def create() -> Any:
    return APPS[os.environ["BENCH_APP"]](Fields(**json.loads(os.environ["BENCH_FIELDS"])))
