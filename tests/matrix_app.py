"""The module the combination matrix serves, as the README's ``myapp.py`` is served: ``app``
for WSGI servers, ``asgi_app`` for ASGI ones, built from the environment ``test_matrix.py``
sets for each server. Requests are traced as docs/opentelemetry.md recommends: the ASGI app
inside OpenTelemetry's ASGI middleware; for WSGI servers, the Flask app inside its WSGI one
(around the app, so that ``app.wsgi_app`` stays Flask's own for the ASGI app)."""

from __future__ import annotations

from asgiref.wsgi import WsgiToAsgi
from matrix_fields import configure_telemetry, create_app_from_env
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware as TracedAsgi
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as TracedWsgi

from flask_status.asgi import StatusMiddleware

configure_telemetry()
flask_app = create_app_from_env()
app = TracedWsgi(flask_app)
asgi_app = TracedAsgi(StatusMiddleware(WsgiToAsgi(flask_app), flask_app))  # type: ignore[no-untyped-call]
