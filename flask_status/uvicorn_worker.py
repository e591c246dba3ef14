"""A gunicorn worker class for ASGI apps: uvicorn's, each request in a fresh context.

::

    gunicorn -k flask_status.uvicorn_worker.UvicornWorker myapp:asgi_app

Under asyncio the context of one request can leak into the next request of a keep-alive
connection (CPython issue 140947); ``asgiref.wsgi.WsgiToAsgi`` then answers some requests to
the Flask app with a 500 (``CurrentThreadExecutor already quit or is broken``). uvicorn's
``--reset-contextvars`` runs each request in a fresh context, but gunicorn has no way to pass
that option to the worker class of ``uvicorn-worker``: this subclass sets it. It needs the
``uvicorn-worker`` extra (gunicorn, uvicorn 0.45 or later, and uvicorn-worker).

It also quits on SIGQUIT, which gunicorn sends its workers when it gets SIGINT or SIGQUIT.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
from typing import Any

from .extras import requires_extra

with requires_extra("flask_status.uvicorn_worker", "uvicorn-worker"):
    from uvicorn.config import Config
    from uvicorn_worker import UvicornWorker as _UvicornWorker

if "reset_contextvars" not in inspect.signature(Config).parameters:
    raise ImportError(
        "flask_status.uvicorn_worker needs uvicorn 0.45 or later (for reset_contextvars), "
        "as the 'uvicorn-worker' extra installs: pip install -e '.[uvicorn-worker]' in a clone "
        "of flask-status"
    )

__all__ = ["UvicornWorker"]


class UvicornWorker(_UvicornWorker):
    """``uvicorn_worker.UvicornWorker`` with ``reset_contextvars`` (``--reset-contextvars``)."""

    # Not a ClassVar: the base class annotates it as a plain attribute.
    CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012
        **_UvicornWorker.CONFIG_KWARGS,
        "reset_contextvars": True,
    }

    def _install_sigquit_handler(self) -> None:
        """On SIGQUIT, quit at once, as gunicorn's own workers do.

        uvicorn-worker's handler only marks the worker as no longer alive, which its uvicorn
        server never reads: the worker went on until gunicorn killed it at the end of its
        graceful timeout (30 s by default).
        """
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGQUIT, self.handle_quit, signal.SIGQUIT, None)
