"""The module the combination matrix serves, as the README's ``myapp.py`` is served: ``app``
for WSGI servers, ``asgi_app`` for ASGI ones, built from the environment ``test_matrix.py``
sets for each server."""

from __future__ import annotations

from asgiref.wsgi import WsgiToAsgi
from matrix_fields import create_app_from_env

from flask_status.asgi import StatusMiddleware

app = create_app_from_env()
asgi_app = StatusMiddleware(WsgiToAsgi(app), app)  # type: ignore[no-untyped-call]
