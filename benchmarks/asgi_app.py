"""The apps uvicorn serves in the scenarios on real servers: ``uvicorn --factory asgi_app:create``.

The environment says which app to make: ``BENCH_APP`` names it (a key of ``APPS``) and
``BENCH_FIELDS`` holds the fields it checks, as the JSON of an ``apps.Fields``.
"""

from __future__ import annotations

import inspect
import json
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from apps import BARE_URL, RUNS_URL, URL, Checks, Fields, answer, build, gather_with_anyio
from asgiref.wsgi import WsgiToAsgi
from flask import Flask, jsonify
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from flask_status.asgi import StatusMiddleware


def flask_status(fields: Fields) -> Any:
    """This project's status route, served natively by ``StatusMiddleware``, and a bare Flask
    route beside it, passed on to ``WsgiToAsgi``."""
    flask_app, _ = build("flask-status", fields)
    return served(flask_app)


def served(flask_app: Flask) -> Any:
    """``flask_app`` with a bare route, under ``StatusMiddleware(WsgiToAsgi(app), app)``."""

    @flask_app.get(BARE_URL)
    def bare() -> Any:
        return jsonify({"status": "OK"})

    return StatusMiddleware(WsgiToAsgi(flask_app), flask_app)


class CountedChecks(Checks):
    """Checks that count their runs, by field key."""

    def __init__(self, fields: Fields) -> None:
        super().__init__(fields)
        self.runs: Counter[str] = Counter()

    def named(self) -> list[tuple[str, Any]]:
        return [
            (key, self._counted(key, value) if callable(value) else value)
            for key, value in super().named()
        ]

    def _counted(self, key: str, check: Callable[[], Any]) -> Callable[[], Any]:
        if inspect.iscoroutinefunction(check):

            async def counted_async() -> Any:
                self.runs[key] += 1
                return await check()

            return counted_async

        def counted() -> Any:
            self.runs[key] += 1
            return check()

        return counted


def flask_status_counted(fields: Fields) -> Any:
    """Ours, with each check counting its runs, read at ``RUNS_URL`` (through ``WsgiToAsgi``)."""
    checks = CountedChecks(fields)
    flask_app, _ = build("flask-status", fields, checks)

    @flask_app.get(RUNS_URL)
    def runs() -> Any:
        return jsonify(checks.runs)

    return served(flask_app)


def flask_status_hooked(fields: Fields) -> Any:
    """Ours, in an app with a no-op ``before_request`` hook (which the middleware runs in a
    worker thread)."""
    flask_app, _ = build("flask-status", fields)

    @flask_app.before_request
    def no_op() -> None:
        return None

    return served(flask_app)


def starlette(fields: Fields) -> Any:
    """A plain Starlette endpoint running the checks in an anyio task group."""
    checks = Checks(fields)

    async def status(request: Request) -> JSONResponse:
        document, code = answer(await gather_with_anyio(checks))
        return JSONResponse(document, status_code=code)

    return Starlette(routes=[Route(URL, status)])


def starlette_bare(fields: Fields) -> Any:
    """A bare Starlette route answering the JSON document ours answers for ``fields``, which
    are constants, written in: the floor of a status route served natively."""
    checks = Checks(fields)
    document = {"status": "OK", **dict(checks.named())}
    if any(callable(value) for value in document.values()):
        raise ValueError("a bare Starlette route serves constants only")

    async def status(request: Request) -> JSONResponse:
        return JSONResponse(document)

    return Starlette(routes=[Route(URL, status)])


def asyncio_view(fields: Fields) -> Any:
    """A Flask ``async def`` view gathering the checks with ``asyncio.gather``."""
    flask_app, _ = build("asyncio-view", fields)
    return WsgiToAsgi(flask_app)


def flask_status_watched(fields: Fields) -> Any:
    """:func:`flask_status` with ``/rss``: the server process's resident memory, in KiB (for
    the live status streams' memory)."""
    flask_app, _ = build("flask-status", fields)

    @flask_app.get("/rss")
    def rss() -> Any:
        with open("/proc/self/status") as status:
            kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        return jsonify({"rss_kib": kib})

    return served(flask_app)


APPS: dict[str, Callable[[Fields], Any]] = {
    "flask-status": flask_status,
    "flask-status-counted": flask_status_counted,
    "flask-status-hooked": flask_status_hooked,
    "flask-status-watched": flask_status_watched,
    "starlette": starlette,
    "starlette-bare": starlette_bare,
    "asyncio-view": asyncio_view,
}


def create() -> Any:
    return APPS[os.environ["BENCH_APP"]](Fields(**json.loads(os.environ["BENCH_FIELDS"])))
