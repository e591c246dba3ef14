"""Overall status from field results: a pure function, no Flask, no I/O."""

from __future__ import annotations

import enum
from collections.abc import Iterable

from .outcome import State


class Health(enum.Enum):
    """Overall status of a status route."""

    UP = "UP"
    DEGRADED = "DEGRADED"
    DOWN = "DOWN"
    #: A readiness route before its startup gate opened.
    STARTING = "STARTING"
    #: A readiness route of a process about to stop.
    DRAINING = "DRAINING"

    @property
    def http_status(self) -> int:
        """503 tells load balancers and probes to stop sending traffic; anything else is 200."""
        return 200 if self in (Health.UP, Health.DEGRADED) else 503


def aggregate(states: Iterable[tuple[bool, State]]) -> Health:
    """Combine fields' ``(critical, state)`` pairs: a critical field in any state but ok or
    degraded is DOWN; a degraded field, or a non-critical one not ok, DEGRADED.

    A skipped, starting or stale field counts as failing: the status is what it would be had
    the field failed. A degraded one works: even a critical one makes the status DEGRADED only.
    """
    health = Health.UP
    for critical, state in states:
        if state == "ok":
            continue
        if critical and state != "degraded":
            return Health.DOWN
        health = Health.DEGRADED
    return health
