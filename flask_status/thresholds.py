"""Flap damping: a field changes state only after enough consecutive runs agree.

A pure state machine over run outcomes, one per field and process. With
``failure_threshold=n`` a healthy field counts as failing only after ``n`` failed runs in a
row; until then it keeps its last good value and notes that its check is failing, and since
when. With ``success_threshold=m`` a failing field counts as healthy again only after ``m``
good runs in a row; until then it keeps its error and notes that it is recovering.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .outcome import Outcome


@dataclass
class Streak:
    """A field's damped state, and the runs since they last agreed with it."""

    healthy: bool = True
    last_good: Outcome | None = None
    last_failed: Outcome | None = None
    count: int = 0  # consecutive runs that disagree with ``healthy``
    since: float = 0.0  # Unix time of the first of them


def damp(streak: Streak, raw: Outcome, failure_threshold: int, success_threshold: int) -> Outcome:
    """Record ``raw`` (one run's outcome) and return what the field shows for it."""
    first_run = streak.last_good is None and streak.last_failed is None
    if raw.ok:
        streak.last_good = raw
    else:
        streak.last_failed = raw
    if first_run:
        streak.healthy = raw.ok  # nothing to damp against yet
    if raw.ok == streak.healthy:
        streak.count = 0
        return raw
    streak.count += 1
    if streak.count == 1:
        streak.since = raw.measured_at
    needed = failure_threshold if streak.healthy else success_threshold
    if streak.count >= needed:
        streak.healthy, streak.count = raw.ok, 0
        return raw
    note = {"since": streak.since, "runs": streak.count, "threshold": needed}
    if streak.healthy:  # failing, not yet for long enough: still healthy
        assert streak.last_good is not None
        return replace(streak.last_good, note=("failing", {**note, "error": raw.error}))
    assert streak.last_failed is not None
    return replace(streak.last_failed, note=("recovering", note))
