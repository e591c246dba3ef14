"""Readiness over a process's life: starting until the app says so, draining before it stops.

Both are states of the process, shared by its readiness routes; draining can also be shared by
every process of a pod through a file (gunicorn workers are processes of their own).
"""

from __future__ import annotations

import os
from collections.abc import Callable

_started = False
_draining = False
#: Called when this process starts draining (live status streams end then).
on_drain: list[Callable[[], None]] = []


def mark_started() -> None:
    """Open the startup gate of readiness routes with ``started_by="app"``, in this process."""
    global _started
    _started = True


def started() -> bool:
    return _started


def drain(drain_file: str | None = None) -> None:
    """Make readiness routes answer 503 DRAINING from now on; other routes serve on.

    With ``drain_file``, the file is created too, so that every process watching it drains.
    """
    global _draining
    _draining = True
    try:
        if drain_file is not None:
            with open(drain_file, "a"):
                pass
    finally:
        for listener in on_drain:
            listener()


def draining(drain_file: str | None = None) -> bool:
    """Whether this process drains, or ``drain_file`` exists."""
    return _draining or (drain_file is not None and os.path.exists(drain_file))
