"""What one evaluation of a field produced, and how failures are described."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

#: Encodes a value as the answer will (the app's JSON provider); raises if it cannot.
Encode = Callable[[Any], str]

#: Longest error text placed in a response; the log keeps the whole error.
MAX_ERROR_CHARS = 200

#: Largest encoded value one field may contribute; a larger one fails that field.
MAX_FIELD_BYTES = 64 * 1024


#: Why an outcome with an error is not an ordinary failure of its check.
ErrorKind = Literal["timed_out", "skipped", "starting", "stale"]

#: A field's state as change events, history and the page name it (a timeout is failing).
State = Literal["ok", "degraded", "failing", "skipped", "starting", "stale"]

#: A run's result as OpenTelemetry and ``?verbose`` name it.
Result = Literal["ok", "degraded", "failing", "timed_out", "skipped"]

#: Where a state a field shows comes from: a run of this process whose result the fleet shares
#: (``"shared"``), another process's run read from the store (``"elsewhere"``), or this process
#: alone (``"local"``: a field not shared, or a background field without a recent result).
Origin = Literal["shared", "elsewhere", "local"]


class Degraded(Exception):
    """Raised or returned by a check that works, but not well.

    The field shows ``value`` with the ``reason``; the route is at worst DEGRADED (HTTP 200),
    even for a critical field.
    """

    def __init__(self, reason: str, value: Any = None) -> None:
        if not isinstance(reason, str) or not reason.strip():
            raise TypeError(f"Degraded needs a reason (a non-empty str), got {reason!r:.40}")
        super().__init__(reason)
        self.reason = reason
        self.value = value


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
    #: Set by flap damping: ``("failing", details)`` on a value kept while its check fails,
    #: ``("recovering", details)`` on an error kept while its check recovers.
    note: tuple[str, dict[str, Any]] | None = None
    #: Set on an error that is not the check's own failure: it timed out, was skipped, or
    #: a background field has no (recent) result.
    error_kind: ErrorKind | None = None
    #: "Working, but not well": the reason a check gave, on an outcome without an error.
    degraded: str | None = None

    @property
    def ok(self) -> bool:
        """No error: healthy or degraded."""
        return self.error is None

    @property
    def state(self) -> State:
        if self.error is None:
            return "ok" if self.degraded is None else "degraded"
        if self.error_kind is None or self.error_kind == "timed_out":
            return "failing"
        return self.error_kind

    @property
    def result(self) -> Result:
        if self.error is None:
            return "ok" if self.degraded is None else "degraded"
        if self.error_kind == "timed_out" or self.error_kind == "skipped":
            return self.error_kind
        return "failing"


def one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """Collapse whitespace so the text fits on one line, and cap its length.

    The text is cut before it is collapsed: a huge message costs no more than a short one.
    """
    text = " ".join(text[: limit * 4].split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def describe(exc: BaseException, limit: int = MAX_ERROR_CHARS) -> str:
    """``"ClassName: message"`` on one line, as shown in a failing field."""
    try:
        message = str(exc)
    except BaseException:  # a broken __str__ must not cost more than this field's text
        message = "(its message could not be read)"
    message = message[: limit * 4]  # a huge message costs no more than a short one
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return one_line(text, limit)


def timed_out(timeout: float, duration: float) -> Outcome:
    return Outcome(
        error=f"timed out after {timeout:g}s",
        duration=duration,
        measured_at=time.time(),
        error_kind="timed_out",
    )


def _plain(value: Any) -> bool:
    """A value every JSON encoder shows as it is, and small: no need to encode it to know."""
    kind = type(value)
    return (
        value is None
        or kind is bool
        or (kind is int and -(2**53) < value < 2**53)
        or (kind is float and math.isfinite(value))
        or (kind is str and len(value) <= MAX_FIELD_BYTES // 6)  # \uXXXX is 6 bytes at most
    )


def overran(outcome: Outcome) -> Outcome:
    """A timed-out async check that ran on well past its deadline, and why it could."""
    return replace(
        outcome,
        error=f"{outcome.error}, yet ran {outcome.duration:.2g}s: it blocked the event loop "
        "or ignored cancellation",
    )


def unreportable(value: Any, encode: Encode) -> str | None:
    """Why ``value`` cannot be shown in a field (not JSON, or too large), or ``None``."""
    if _plain(value):
        return None
    try:
        size = len(encode(value))
    except BaseException as exc:  # any failure to encode is this field's error, never a 500
        return f"returned a value that is not JSON-serializable: {describe(exc)}"
    if size > MAX_FIELD_BYTES:
        return f"returned a value too large to report ({size} > {MAX_FIELD_BYTES} bytes)"
    return None
