"""Quiet probes: keep successful status requests out of servers' access logs.

Kubernetes probes a pod every few seconds; their lines drown what the access log is for.
:func:`quiet_access_logs` adds a filter to the access loggers of werkzeug (Flask's dev server),
gunicorn, uvicorn and hypercorn that drops a line when its request went to a status URL and
answered below 400. Failed probes are still logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

#: The access loggers of the servers this package documents.
ACCESS_LOGGERS = ("werkzeug", "gunicorn.access", "uvicorn.access", "hypercorn.access")

#: Every status URL registered in this process (without per-field suffixes).
status_urls: set[str] = set()


def quiet_access_logs() -> None:
    """Drop successful status requests from the servers' access logs (failures stay)."""
    for name in ACCESS_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, QuietProbes) for existing in logger.filters):
            logger.addFilter(QuietProbes())


class QuietProbes(logging.Filter):
    """Drops an access log record of a status URL that answered below 400."""

    def filter(self, record: logging.LogRecord) -> bool:
        path, status = _request_of(record)
        return not (path is not None and status is not None and status < 400 and _ours(path))


def _ours(path: str) -> bool:
    path = path.split("?", 1)[0]
    return any(path == url or path.startswith(url.rstrip("/") + "/") for url in status_urls)


def _request_of(record: logging.LogRecord) -> tuple[str | None, int | None]:
    """The path and status code an access log record is about, where its server says."""
    args = record.args
    try:
        if isinstance(args, Mapping):  # gunicorn, hypercorn: their access log atoms
            return str(args["U"]), int(str(args["s"]))
        if record.name == "uvicorn.access" and args and len(args) == 5:
            # (client, method, path with query, HTTP version, status)
            return str(args[2]), int(str(args[4]))
        if record.name == "werkzeug" and args and len(args) == 3:
            # ('"GET /path HTTP/1.1"' as "%s", status, size)
            return str(args[0]).split(" ")[1], int(str(args[1]))
    except (KeyError, IndexError, TypeError, ValueError):
        pass  # another record of that logger: not an access line
    return None, None
