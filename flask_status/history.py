"""Each field's recent results: the last ``history_size`` runs, per process, in bounded memory.

The route's evaluator calls :meth:`History.record` once per finished run (not per request a
run served), so a cached or shared result is counted once. Values are not kept: a value may be
large or sensitive, and the history is about whether, and how fast, a check passed.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from .fields import Field
from .outcome import Outcome, State, one_line

#: Runs kept per field unless ``history_size`` / ``STATUS_HISTORY_SIZE`` says otherwise.
DEFAULT_HISTORY_SIZE = 60

#: Longest error text kept per entry: enough to tell errors apart, small enough to keep many.
ERROR_CHARS = 120


def check_history_size(name: str, value: Any) -> int:
    """Validate ``history_size``: an int >= 0 (0 keeps no history)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)  # slots: many are kept
class Entry:
    """One finished run of a field's check."""

    state: State  # "ok", "degraded", "failing" or "skipped"
    duration: float  # seconds
    measured_at: float  # Unix time the run finished
    #: Short text: the error, or a degraded run's reason; None for a healthy run.
    text: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the run worked (degraded included)."""
        return self.state == "ok" or self.state == "degraded"


class History:
    """The last ``size`` entries of every field, oldest first.

    Kept per field: a key added again starts a new history.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: dict[str, tuple[Field, deque[Entry]]] = {}
        # Runs finish on whichever event loop evaluated them (the WSGI portal's, a server's),
        # while another thread may be reading: the lock keeps both sides whole.
        self._lock = threading.Lock()

    def record(self, field: Field, outcome: Outcome) -> None:
        """Add a finished run of ``field`` (an ``Evaluator.run_listeners`` callback)."""
        if not self.size:
            return
        text = outcome.error if outcome.error is not None else outcome.degraded
        if text is not None:
            text = one_line(text, ERROR_CHARS)
        entry = Entry(outcome.state, outcome.duration, outcome.measured_at, text)
        with self._lock:
            kept = self._entries.get(field.key)
            if kept is None or kept[0] is not field:
                kept = self._entries[field.key] = (field, deque(maxlen=self.size))
            kept[1].append(entry)

    def recent(self, key: str) -> list[Entry]:
        """Field ``key``'s entries, oldest first (empty for a constant or a field never run)."""
        with self._lock:
            kept = self._entries.get(key)
            return list(kept[1]) if kept is not None else []
