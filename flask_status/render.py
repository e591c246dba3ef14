"""Rendering: field outcomes to the JSON payload the status route answers with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Callable

from .aggregate import Health
from .outcome import Outcome, describe

Dumps = Callable[[Any], str]

JSON_ERRORS = (TypeError, ValueError, OverflowError, RecursionError)


def unserializable(outcomes: Mapping[str, Outcome], dumps: Dumps) -> dict[str, Outcome]:
    """The successful outcomes whose value ``dumps`` cannot encode, turned into failures."""
    failed = {}
    for key, outcome in outcomes.items():
        if not outcome.ok:
            continue
        try:
            dumps(outcome.value)
        except JSON_ERRORS as exc:
            failed[key] = replace(
                outcome, value=None, error=f"returned a value that is not JSON-serializable: {describe(exc)}"
            )
    return failed


def payload(message: Mapping[str, Any], outcomes: Mapping[str, Outcome], health: Health) -> dict[str, Any]:
    """The message, one entry per field, and ``status`` overridden unless everything is fine.

    A failing field holds ``{"error": "..."}``. When the message has no ``status`` key, a
    healthy answer adds none (as Flask-Status 1.0.1 did); an unhealthy one always says so.
    """
    body = dict(message)
    for key, outcome in outcomes.items():
        body[key] = outcome.value if outcome.ok else {"error": outcome.error}
    if health is not Health.UP:
        body["status"] = health.value
    return body
