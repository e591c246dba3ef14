"""Rendering: field outcomes to the body the status route answers with.

Two formats: the default JSON (the message plus one entry per field), and the IETF draft
"Health Check Response Format for HTTP APIs" (``application/health+json``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from .aggregate import Health
from .outcome import Encode, Outcome, unreportable

#: Error text shown for every failing field when ``expose_errors`` is off.
HIDDEN_ERROR = "check failed"

#: Reason shown for every degraded field when ``expose_errors`` is off.
HIDDEN_REASON = "check degraded"

HEALTH_JSON = "application/health+json"

_HEALTH_JSON_STATUS = {
    Health.UP: "pass",
    Health.DEGRADED: "warn",
    Health.DOWN: "fail",
    Health.STARTING: "fail",
    Health.DRAINING: "fail",
}


def invalid_values(outcomes: Mapping[str, Outcome], encode: Encode) -> dict[str, Outcome]:
    """Successful outcomes whose value cannot be encoded or is too large, turned into failures.

    Values are checked when their run finishes; this catches one changed since (a check that
    returns an object it goes on mutating).
    """
    failed = {}
    for key, outcome in outcomes.items():
        error = unreportable(outcome.value, encode) if outcome.ok else None
        if error is not None:
            failed[key] = replace(outcome, value=None, error=error, degraded=None)
    return failed


def hide_errors(outcomes: Mapping[str, Outcome]) -> dict[str, Outcome]:
    """Replace every error text with :data:`HIDDEN_ERROR`, and every degraded reason with
    :data:`HIDDEN_REASON` (the log keeps the real error)."""
    return {key: _hidden(outcome) for key, outcome in outcomes.items()}


def _hidden(outcome: Outcome) -> Outcome:
    if outcome.note is not None and "error" in outcome.note[1]:
        state, details = outcome.note
        outcome = replace(outcome, note=(state, {**details, "error": HIDDEN_ERROR}))
    if outcome.degraded is not None:
        return replace(outcome, degraded=HIDDEN_REASON)
    return outcome if outcome.ok else replace(outcome, error=HIDDEN_ERROR)


def field_entry(outcome: Outcome) -> Any:
    """A field's entry: its value, or ``{"error": ...}``.

    A degraded field shows its value with the reason: ``{"value": ..., "degraded": "..."}``.
    A field held back by its thresholds says so inside its own entry: ``{"value": ...,
    "failing": {...}}`` while its check fails but not yet for long enough, ``{"error": ...,
    "recovering": {...}}`` while it recovers.
    """
    if outcome.note is None and outcome.degraded is None:
        return outcome.value if outcome.ok else {"error": outcome.error}
    entry: dict[str, Any] = {"value": outcome.value} if outcome.ok else {"error": outcome.error}
    if outcome.degraded is not None:
        entry["degraded"] = outcome.degraded
    if outcome.note is not None:
        state, details = outcome.note
        entry[state] = {**details, "since": iso_time(details["since"])}
    return entry


def note_text(outcome: Outcome) -> str | None:
    """The thresholds' note on one line, for health+json's ``output``."""
    if outcome.note is None:
        return None
    state, details = outcome.note
    text = (
        f"{state} since {iso_time(details['since'])} "
        f"({details['runs']} of {details['threshold']} runs)"
    )
    return f"{text}: {details['error']}" if "error" in details else text


def json_payload(
    message: Mapping[str, Any],
    outcomes: Mapping[str, Outcome],
    health: Health,
    cached: Mapping[str, Outcome],
) -> dict[str, Any]:
    """The message, one entry per field, and ``status`` overridden unless everything is fine.

    A failing field holds ``{"error": "..."}``. When the message has no ``status`` key, a
    healthy answer adds none (as Flask-Status 1.0.1 did); an unhealthy one always says so.
    Values reused from the cache are listed under ``cached`` with when they were measured.
    """
    body = dict(message)
    for key, outcome in outcomes.items():
        body[key] = field_entry(outcome)
    if health is not Health.UP:
        body["status"] = health.value
    if cached:
        body["cached"] = {
            key: {"measured_at": iso_time(outcome.measured_at)} for key, outcome in cached.items()
        }
    return body


def health_json_payload(
    message: Mapping[str, Any],
    outcomes: Mapping[str, Outcome],
    critical: Mapping[str, bool],
    health: Health,
) -> dict[str, Any]:
    """The IETF health+json document: ``status``, and ``checks`` keyed by field name."""
    body: dict[str, Any] = {"status": _HEALTH_JSON_STATUS[health]}
    description = message.get("message")
    if isinstance(description, str):
        body["description"] = description
    failing = [key for key, outcome in outcomes.items() if not outcome.ok]
    degraded = [key for key, outcome in outcomes.items() if outcome.degraded is not None]
    if health in (Health.STARTING, Health.DRAINING):
        body["output"] = health.value.lower()
    elif failing or degraded:
        body["output"] = "; ".join(
            f"{state}: {', '.join(keys)}"
            for state, keys in (("failing", failing), ("degraded", degraded))
            if keys
        )
    body["checks"] = {
        key: [_health_json_check(outcome, critical[key])] for key, outcome in outcomes.items()
    }
    return body


def _health_json_check(outcome: Outcome, critical: bool) -> dict[str, Any]:
    """A check's object: ``pass``, ``warn`` when degraded or failing but not critical, else
    ``fail`` (a skipped, starting or stale field counts as failing); ``output`` says why."""
    if outcome.degraded is not None:
        check: dict[str, Any] = {"status": "warn", "output": outcome.degraded}
    elif outcome.ok:
        check = {"status": "pass"}
    else:
        check = {"status": "fail" if critical else "warn", "output": outcome.error}
    note = note_text(outcome)
    if note is not None:
        check["output"] = f"{check['output']}; {note}" if "output" in check else note
    if outcome.measured_at:  # constants were never measured
        check["time"] = iso_time(outcome.measured_at)
        check["duration"] = round(outcome.duration, 6)
    value = outcome.value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        check["observedValue"] = value
    return check


def iso_time(timestamp: float) -> str:
    """RFC 3339 UTC time with milliseconds, e.g. ``2026-11-24T16:30:00.123Z``."""
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
