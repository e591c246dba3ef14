"""What one evaluation of a field produced, and how failures are described."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

#: Longest error text placed in a response; the log keeps the whole error.
MAX_ERROR_CHARS = 200


@dataclass(frozen=True)
class Outcome:
    """The result of running a field's check once.

    ``error`` is ``None`` on success. ``measured_at`` is a Unix timestamp taken when the
    check finished, ``duration`` the seconds it ran.
    """

    value: Any = None
    error: str | None = None
    duration: float = 0.0
    measured_at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """Collapse whitespace so the text fits on one line, and cap its length."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def describe(exc: BaseException) -> str:
    """``"ClassName: message"`` on one line, as shown in a failing field."""
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not cost more than this field's text
        message = "(its message could not be read)"
    return one_line(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)


def timed_out(timeout: float, duration: float) -> Outcome:
    return Outcome(
        error=f"timed out after {timeout:g}s", duration=duration, measured_at=time.time()
    )
