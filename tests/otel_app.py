"""An app that configures the OpenTelemetry SDK (spans kept in memory) and instruments its
requests, for real servers; ``/spans`` answers the spans finished so far.

- ``uvicorn --factory otel_app:create_asgi``: OpenTelemetryMiddleware (ASGI) around
  StatusMiddleware, as docs/opentelemetry.md recommends under ASGI servers;
- ``uvicorn --factory otel_app:create_flask_instrumented_asgi``: FlaskInstrumentor under
  StatusMiddleware (it wraps ``app.wsgi_app``: status requests take the wrapped path);
- ``gunicorn 'otel_app:create_wsgi()'``: FlaskInstrumentor under a WSGI server.
"""

from __future__ import annotations

import anyio
from asgiref.wsgi import WsgiToAsgi
from flask import Flask, Response, jsonify
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from otel_memory import configure, finished_spans

from flask_status import FlaskStatus
from flask_status.asgi import StatusMiddleware

configure()
tracer = trace.get_tracer("otel_app")


def sync_check() -> str:
    with tracer.start_as_current_span("query"):  # as an instrumented client would
        return "ok"


async def async_check() -> str:
    with tracer.start_as_current_span("query"):
        await anyio.sleep(0.005)
        return "ok"


def create_app() -> Flask:
    app = Flask("otel_app")

    @app.get("/hello")
    def hello() -> str:
        return "hello"

    @app.get("/spans")
    def spans() -> Response:
        return jsonify(finished_spans())

    status = FlaskStatus(app)
    status.add_field("sync", sync_check)
    status.add_field("async", async_check)
    status.add_field("background", sync_check, interval=0.5, wait_first=True)
    return app


def create_asgi() -> OpenTelemetryMiddleware:
    app = create_app()
    return OpenTelemetryMiddleware(StatusMiddleware(WsgiToAsgi(app), app))  # type: ignore[no-untyped-call]


def create_flask_instrumented_asgi() -> StatusMiddleware:
    app = create_app()
    FlaskInstrumentor().instrument_app(app)
    return StatusMiddleware(WsgiToAsgi(app), app)  # type: ignore[no-untyped-call]


def create_wsgi() -> Flask:
    app = create_app()
    FlaskInstrumentor().instrument_app(app)
    return app
