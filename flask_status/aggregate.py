"""Overall status from field results: a pure function, no Flask, no I/O."""

from __future__ import annotations

import enum
from collections.abc import Iterable


class Health(enum.Enum):
    """Overall status of a status route."""

    UP = "UP"
    DEGRADED = "DEGRADED"
    DOWN = "DOWN"

    @property
    def http_status(self) -> int:
        """503 tells load balancers and probes to stop sending traffic; anything else is 200."""
        return 503 if self is Health.DOWN else 200


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
