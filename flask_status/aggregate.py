"""Overall status from field results: a pure function, no Flask, no I/O."""

from __future__ import annotations

import enum
from collections.abc import Iterable


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


def aggregate(results: Iterable[tuple[bool, bool]]) -> Health:
    """Combine ``(critical, ok)`` pairs: a critical failure is DOWN, any other failure DEGRADED."""
    health = Health.UP
    for critical, ok in results:
        if ok:
            continue
        if critical:
            return Health.DOWN
        health = Health.DEGRADED
    return health
