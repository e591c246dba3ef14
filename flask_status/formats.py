"""Rendering an answer: which representation a status request reads, and its body.

:func:`fill` renders a request's outcomes into its response. The default JSON and health+json
are Flask-Status 1.0.1's and the health+json draft's; :func:`choose` returns a :class:`Form`
for everything else:

- ``?verbose`` (callers with details): every check's status, value or error, timing, whether
  it was cached, and its recent history, under ``checks``;
- callers without details: the message and the overall status only, in JSON or health+json;
- the HTML status page: ``?format=html``, or a browser's ``Accept`` when
  ``html_for_browsers`` is on.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from flask import Response, current_app, request

from . import page
from .aggregate import Health
from .history import Entry, History
from .outcome import Encode, Outcome
from .render import (
    HEALTH_JSON,
    HIDDEN_ERROR,
    HIDDEN_REASON,
    health_json_payload,
    hide_errors,
    invalid_values,
    iso_time,
    json_payload,
)

HTML = "text/html"

#: Values of ``?verbose`` that mean "no" (any other value, or an empty one, means yes).
_NO = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class Rendering:
    """What a status route renders its answers with, fixed when it is registered."""

    message: Mapping[str, Any]
    encode: Encode
    history: History
    expose_errors: bool
    html_for_browsers: bool


def fill(
    response: Response,
    rendering: Rendering,
    outcomes: dict[str, Outcome],
    critical: Mapping[str, bool],
    cached: Collection[str],
    details: bool,
    health_of: Callable[[Mapping[str, Outcome]], Health],
    logger: logging.Logger,
) -> None:
    """Render a request's ``outcomes`` into its ``response``, in the form the request reads.

    ``cached``: the keys whose outcome was not measured for this request; ``details``: whether
    the caller may see fields; ``health_of``: the overall status of the outcomes. A value that
    cannot be encoded any longer fails its field, in ``outcomes`` too.
    """
    wants_health_json = (
        # the substring test spares the Accept parsing on almost every request
        "health+json" in request.headers.get("Accept", "")
        and request.accept_mimetypes.best_match(["application/json", HEALTH_JSON]) == HEALTH_JSON
    )
    form = choose(rendering, details, wants_health_json, cached)  # None: the formats below
    body = render(rendering, form, wants_health_json, outcomes, critical, cached, health_of, logger)
    response.set_data(body.text + "\n")
    response.status_code = body.health.http_status
    response.mimetype = HEALTH_JSON if wants_health_json else "application/json"
    vary_on_accept(response)
    if form is not None:
        form.finish(response)


@dataclass(frozen=True)
class Body:
    """A rendered answer: its text, and the overall status it tells."""

    text: str
    health: Health


def render(
    rendering: Rendering,
    form: Form | None,
    wants_health_json: bool,
    outcomes: dict[str, Outcome],
    critical: Mapping[str, bool],
    cached: Collection[str],
    health_of: Callable[[Mapping[str, Outcome]], Health],
    logger: logging.Logger,
) -> Body:
    """The body of ``form`` (``None``: the default JSON, or health+json in full). A value that
    cannot be encoded any longer fails its field, in ``outcomes`` too."""

    def encode() -> Body:
        health = health_of(outcomes)
        shown = outcomes if rendering.expose_errors else hide_errors(outcomes)
        if form is not None:
            return Body(form.render(shown, critical, health), health)
        if wants_health_json:
            document = health_json_payload(rendering.message, shown, critical, health)
        else:
            reused = {key: outcomes[key] for key in cached if key in outcomes}
            document = json_payload(rendering.message, shown, health, reused)
        return Body(rendering.encode(document), health)

    try:
        return encode()
    except Exception:  # a value changed since its run checked it: find it, fail it
        invalid = invalid_values(outcomes, rendering.encode)
        for key, outcome in invalid.items():
            logger.error("status field %r %s", key, outcome.error)
        outcomes.update(invalid)
        return encode()


def choose(
    rendering: Rendering, details: bool, wants_health_json: bool, cached: Collection[str]
) -> Form | None:
    """The form this request gets, or ``None`` for the default JSON or health+json in full."""
    query = bool(request.query_string)  # most requests have none: no parsing for them
    form: type[Form] | None = None
    if (query and request.args.get("format") == "html") or (
        rendering.html_for_browsers and _prefers_html()
    ):
        form = Page
    elif not details:
        form = HealthSummary if wants_health_json else Summary
    elif query and asks_verbose():
        form = Verbose
    return None if form is None else form(Context(rendering, details, cached))


def asks_verbose() -> bool:
    """Whether the request says ``?verbose`` (with details, it gets every check in full)."""
    return request.args.get("verbose", "no").lower() not in _NO


def stream_form(
    rendering: Rendering, details: bool, verbose: bool, cached: Collection[str]
) -> Form | None:
    """The form of a live stream's events: the JSON the route answers the same caller with."""
    if not details:
        return Summary(Context(rendering, details, cached))
    return Verbose(Context(rendering, details, cached)) if verbose else None


def vary_on_accept(response: Response) -> None:
    """Add ``Vary: Accept``: health+json, and the page when opted in, depend on ``Accept``.

    Cheaper than ``response.vary.add`` on the usual fresh response, which has no ``Vary`` yet.
    """
    vary = response.headers.get("Vary")
    if vary is None:
        response.headers["Vary"] = "Accept"
    elif "accept" not in (item.strip().lower() for item in vary.split(",")):
        response.headers["Vary"] = f"{vary}, Accept"


def _prefers_html() -> bool:
    """Whether ``Accept`` ranks HTML above JSON (a browser's does; curl's ``*/*`` does not)."""
    if "html" not in request.headers.get("Accept", ""):  # spares the parsing
        return False
    best = request.accept_mimetypes.best_match(["application/json", HEALTH_JSON, HTML])
    return best == HTML


class Context:
    """What a form needs from its route and request."""

    def __init__(self, rendering: Rendering, details: bool, cached: Collection[str]) -> None:
        self.message: Mapping[str, Any] = rendering.message
        self.encode: Encode = rendering.encode
        self.history: History = rendering.history
        self.expose_errors = rendering.expose_errors
        self.details = details
        self._cached = cached

    def cached(self, key: str) -> bool:
        """Whether a field's value was not measured for this request (cache, store, ...)."""
        return key in self._cached

    def recent(self, key: str) -> list[Entry]:
        entries = self.history.recent(key)
        if self.expose_errors:
            return entries
        return [entry if entry.text is None else _hidden(entry) for entry in entries]


@dataclass(frozen=True)
class Form:
    """A representation: renders the body, then sets the response's type and headers."""

    context: Context
    mimetype: ClassVar[str] = "application/json"

    def render(
        self, outcomes: Mapping[str, Outcome], critical: Mapping[str, bool], health: Health
    ) -> str:
        """The body; ``outcomes`` already have their errors hidden when they must be."""
        raise NotImplementedError

    def finish(self, response: Response) -> None:
        response.mimetype = self.mimetype


class Summary(Form):
    """JSON without details: the message, and ``status`` when something failed."""

    def render(
        self, outcomes: Mapping[str, Outcome], critical: Mapping[str, bool], health: Health
    ) -> str:
        return self.context.encode(summary_payload(self.context.message, health))


class HealthSummary(Form):
    """health+json without details: ``status`` and ``description`` only."""

    mimetype = HEALTH_JSON

    def render(
        self, outcomes: Mapping[str, Outcome], critical: Mapping[str, bool], health: Health
    ) -> str:
        return self.context.encode(health_json_summary(self.context.message, health))


class Verbose(Form):
    """``?verbose``: every check in full, under ``checks``."""

    def render(
        self, outcomes: Mapping[str, Outcome], critical: Mapping[str, bool], health: Health
    ) -> str:
        context = self.context
        checks = {
            key: verbose_check(outcome, critical[key], context.cached(key), context.recent(key))
            for key, outcome in outcomes.items()
        }
        return context.encode(verbose_payload(context.message, checks, health))


class Page(Form):
    """The HTML status page; without details it shows the overall status only."""

    mimetype = HTML

    def render(
        self, outcomes: Mapping[str, Outcome], critical: Mapping[str, bool], health: Health
    ) -> str:
        context = self.context
        about = [
            (key, value if isinstance(value, str) else context.encode(value))
            for key, value in context.message.items()
            if key != "status"  # the page's heading says it
        ]
        rows = None
        if context.details:
            rows = [
                page.Row(
                    key=key,
                    state=outcome.state,
                    critical=critical[key],
                    text=_text(outcome, context.encode),
                    reason=outcome.degraded,
                    duration=outcome.duration if outcome.measured_at else None,
                    measured_at=outcome.measured_at or None,
                    cached=context.cached(key),
                    history=context.recent(key),
                )
                for key, outcome in outcomes.items()
            ]
        return page.status_page(
            current_app.name,
            health,
            about,
            rows,
            time.time(),
            version=version(signature(health, outcomes, context.details)),
        )

    def finish(self, response: Response) -> None:
        super().finish(response)
        response.headers["Content-Security-Policy"] = page.CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"


def signature(health: Health, outcomes: Mapping[str, Outcome], details: bool) -> tuple[Any, ...]:
    """What a change of the document is told by: the overall status, and each field's state
    and value as the caller sees them (no error text: a field that keeps failing is no
    change)."""
    if not details:
        return (health.value,)
    return (
        health.value,
        *((key, outcome.state, outcome.value) for key, outcome in outcomes.items()),
    )


def version(signature: tuple[Any, ...]) -> str:
    """A short id of a signature: the live stream's event id, and the page's ``data-shown``."""
    return hashlib.sha256(repr(signature).encode()).hexdigest()[:16]


def summary_payload(message: Mapping[str, Any], health: Health) -> dict[str, Any]:
    """The default JSON with no field in it: what a caller without details reads."""
    return json_payload(message, {}, health, {})


def health_json_summary(message: Mapping[str, Any], health: Health) -> dict[str, Any]:
    """health+json with ``status`` and ``description`` only."""
    body = health_json_payload(message, {}, {}, health)
    return {key: body[key] for key in ("status", "description") if key in body}


def verbose_payload(
    message: Mapping[str, Any], checks: Mapping[str, Mapping[str, Any]], health: Health
) -> dict[str, Any]:
    """The message, ``status`` (always present: ``UP`` when the message has none), ``checks``."""
    body = dict(message)
    if health is not Health.UP or "status" not in body:
        body["status"] = health.value
    body["checks"] = dict(checks)
    return body


def verbose_check(
    outcome: Outcome, critical: bool, cached: bool, history: list[Entry]
) -> dict[str, Any]:
    """One check under ``?verbose``: its state as ``status`` (``ok``, ``degraded``,
    ``failing``, ``skipped``, ``starting`` or ``stale``), its value (and a degraded one's
    ``degraded`` reason) or its error; a constant has no duration and no time (``null``)."""
    measured = outcome.measured_at > 0
    check: dict[str, Any] = {"status": outcome.state}
    if outcome.ok:
        check["value"] = outcome.value
        if outcome.degraded is not None:
            check["degraded"] = outcome.degraded
    else:
        check["error"] = outcome.error
    check["critical"] = critical
    check["duration_ms"] = _ms(outcome.duration) if measured else None
    check["measured_at"] = iso_time(outcome.measured_at) if measured else None
    check["cached"] = cached
    check["history"] = [history_entry(entry) for entry in history]
    return check


def history_entry(entry: Entry) -> dict[str, Any]:
    """One past run: ``status`` (its state), ``duration_ms``, ``measured_at``, and ``error``
    if it failed (``degraded``, the reason, if it was degraded)."""
    item: dict[str, Any] = {
        "status": entry.state,
        "duration_ms": _ms(entry.duration),
        "measured_at": iso_time(entry.measured_at),
    }
    if entry.text is not None:
        item["degraded" if entry.ok else "error"] = entry.text
    return item


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _text(outcome: Outcome, encode: Encode) -> str:
    """What the page shows for a check: a str value as is, another value as JSON, or the error."""
    if not outcome.ok:
        return outcome.error or ""
    value = outcome.value
    return value if isinstance(value, str) else encode(value)


def _hidden(entry: Entry) -> Entry:
    hidden = HIDDEN_REASON if entry.ok else HIDDEN_ERROR
    return Entry(entry.state, entry.duration, entry.measured_at, hidden)
