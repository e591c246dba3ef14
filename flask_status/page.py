"""The status page: one self-contained HTML document, for people rather than probes.

It answers first what a reader comes for: the overall status and why (which checks fail),
then the checks, failing ones first. Inline CSS, no external request. One fixed script
(:data:`SCRIPT`, allowed by its hash in the Content-Security-Policy) watches the route's live
status stream and, on each change, fetches the page again and puts its ``<main>`` in place;
without scripts it reloads every few seconds (a ``<meta http-equiv="refresh">`` in
``<noscript>``), and so does the script where the stream is refused or unavailable.
Everything it shows that comes from a check, the message or the history is escaped, so a check
returning markup shows that markup as text.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

from .aggregate import Health
from .history import Entry
from .outcome import State
from .render import iso_time

#: Seconds between reloads of the page.
REFRESH_SECONDS = 5

#: Most recent runs drawn per check (``?verbose`` lists the whole history).
STRIP_RUNS = 30

#: Longest value or error text shown in a row; the JSON formats give the whole value.
MAX_TEXT_CHARS = 300

#: The page's only script, the same on every page (nothing in it comes from data): it watches
#: the live status stream and, on each change, fetches the page and puts its ``<main>`` in
#: place; where the stream is refused (406, 503) or scripts lack what it needs, it reloads the
#: page every :data:`REFRESH_SECONDS`. An event whose id is the page's ``data-shown`` tells
#: what the page shows already (the stream's first event, mostly), and is skipped.
SCRIPT = (
    "(function () {"
    '"use strict";'
    "function reloadLater() {"
    f"setTimeout(function () {{ location.reload(); }}, {REFRESH_SECONDS * 1000});"
    "}"
    "if (!window.EventSource || !window.fetch || !window.DOMParser) { reloadLater(); return; }"
    "function live() {"
    'var note = document.getElementById("updates");'
    'if (note) { note.textContent = "updates live"; }'
    "}"
    "function show() {"
    'return fetch(location.href, {headers: {Accept: "text/html"}, cache: "no-store"})'
    ".then(function (answer) { return answer.text(); })"
    ".then(function (text) {"
    'var fresh = new DOMParser().parseFromString(text, "text/html");'
    'var main = fresh.querySelector("main");'
    "if (!main) { return; }"
    "document.title = fresh.title;"
    "document.body.className = fresh.body.className;"
    'document.querySelector("main").replaceWith(main);'
    "live();"
    "});"
    "}"
    "var url = new URL(location.href);"
    'url.searchParams.set("watch", "");'
    "var stream = new EventSource(url.href);"
    "var shown = Promise.resolve();"
    "stream.onopen = live;"
    "stream.onmessage = function (event) {"
    'var main = document.querySelector("main");'
    "if (main && main.dataset.shown === event.lastEventId) { return; }"
    "shown = shown.then(show).catch(function () {});"
    "};"
    "stream.onerror = function () {"
    "if (stream.readyState === EventSource.CLOSED) { reloadLater(); }"
    "};"
    "})();"
)

#: The page needs no image, no font and no form, and no script but :data:`SCRIPT` (allowed by
#: its hash), which connects to the page's own origin only: forbid everything else, in case a
#: value ever got past escaping.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()}'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Row:
    """One check as the page shows it."""

    key: str
    state: State
    critical: bool
    text: str  # the value (a str as is, anything else as JSON) or the error
    duration: float | None  # seconds; None for a constant
    measured_at: float | None  # Unix time; None for a constant
    cached: bool
    history: Sequence[Entry] = field(default_factory=tuple)
    reason: str | None = None  # why a degraded check is degraded

    @property
    def ok(self) -> bool:
        """Whether the check works (degraded included)."""
        return self.state == "ok" or self.state == "degraded"


def status_page(
    app_name: str,
    health: Health,
    about: Sequence[tuple[str, str]],
    rows: Sequence[Row] | None,
    now: float,
    refresh: int = REFRESH_SECONDS,
    version: str = "",
) -> str:
    """The page of ``app_name``: the overall status and its reason, ``about`` (the message's
    entries), one row per check, failing checks first, then degraded ones.

    ``rows`` is ``None`` for a caller who may not see details: the page then names no check.
    ``version`` tells what the page shows apart from what it does not: the id of the live
    status stream's event for the same document (see ``formats.version``).
    """
    title = f"{health.value} \N{MIDDLE DOT} {app_name} status"
    if rows is not None:
        rows = sorted(rows, key=_failing_first)
    parts = [
        "<!doctype html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<noscript><meta http-equiv="refresh" content="{int(refresh)}"></noscript>',
        f"<title>{escape(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        f'<body class="{health.value.lower()}">',
        f'<main data-shown="{escape(version)}">',
        '<header class="overall">',
        f'<h1>{escape(app_name)} status: <span id="status">{escape(health.value)}</span></h1>',
        f'<p id="reason">{_reason(health, rows)}</p>',
        _about(about),
        "</header>",
        _table(rows, now) if rows is not None else _no_details(),
        f"<footer>Generated {escape(iso_time(now))} \N{MIDDLE DOT} "
        f'<span id="updates">reloads every {int(refresh)} s</span></footer>',
        "</main>",
        f"<script>{SCRIPT}</script>",
        "</body>",
        "</html>",
    ]
    return "\n".join(part for part in parts if part)


def _failing_first(row: Row) -> int:
    """Critical failures, other failures, degraded checks, then the rest; ``sorted`` keeps
    each in order."""
    if row.ok:
        return 3 if row.state == "ok" else 2
    return 0 if row.critical else 1


def _reason(health: Health, rows: Sequence[Row] | None) -> Markup:
    """Why the status is what it is: the state of a readiness route, and the checks that fail."""
    if health is Health.DRAINING:
        return _DRAINING
    reason = _STARTING if health is Health.STARTING else Markup("")
    if rows is None:
        return reason + _WITHOUT_DETAILS.get(health, Markup(""))
    if not rows:
        no_checks = _NOT_RUN_YET if health is Health.STARTING else _NO_CHECKS
        return reason + no_checks
    failing = [row for row in rows if not row.ok]
    degraded = [row.key for row in rows if row.state == "degraded"]
    if not failing and not degraded:
        return reason + Markup("Every check passes.")
    critical = [row.key for row in failing if row.critical]
    other = [row.key for row in failing if not row.critical]
    groups = [
        Markup("{} ({})").format(_names(keys, "failing"), kind)
        for keys, kind in ((critical, "critical"), (other, "non-critical"))
        if keys
    ]
    if groups:
        reason += Markup("Failing: {}. ").format(Markup("; ").join(groups))
    if degraded:
        reason += Markup("Degraded: {}. ").format(_names(degraded, "degraded"))
    passing = len(rows) - len(failing) - len(degraded)
    return reason + Markup("{} of {} checks pass.").format(passing, len(rows))


def _names(keys: Sequence[str], state: str) -> Markup:
    return Markup(", ").join(
        Markup('<strong class="{}-check">{}</strong>').format(state, key) for key in keys
    )


def _about(about: Sequence[tuple[str, str]]) -> str:
    if not about:
        return ""
    items = "".join(
        f"<div><dt>{escape(key)}</dt><dd>{escape(_cut(value))}</dd></div>" for key, value in about
    )
    return f'<dl class="about">{items}</dl>'


def _no_details() -> str:
    return '<p class="hidden-details">Details of the checks are not shown to this caller.</p>'


def _table(rows: Sequence[Row], now: float) -> str:
    if not rows:
        return ""  # the reason says why
    # One scale for every strip, so that bar heights compare across checks too.
    longest = max(
        (entry.duration for row in rows for entry in row.history[-STRIP_RUNS:]), default=0.0
    )
    head = (
        "<thead><tr><th scope=col>Check</th><th scope=col>Status</th>"
        "<th scope=col>Value or error</th><th scope=col class=duration>Duration</th>"
        "<th scope=col>Last measured</th><th scope=col>Recent runs</th></tr></thead>"
    )
    body = "\n".join(_row(row, now, longest or 1.0) for row in rows)
    return f'<table class="checks">{head}<tbody>\n{body}\n</tbody></table>'


def _row(row: Row, now: float, longest: float) -> str:
    state = row.state
    # As the overall colors: what the state makes of the route.
    if state == "ok":
        badge = "ok"
    elif state == "degraded" or not row.critical:
        badge = "warn"
    else:
        badge = "bad"
    name = escape(row.key)
    if not row.critical:
        name += Markup(' <span class="tag">non-critical</span>')
    result_class = "value" if row.ok else "error"
    reason = ""
    if row.reason is not None:
        reason = f'<div class="reason">{escape(_cut(row.reason))}</div>'
    return (
        f'<tr class="check {state}" data-check="{escape(row.key)}">'
        f'<th scope="row" class="name">{name}</th>'
        f'<td class="state"><span class="badge {badge}">{state}</span></td>'
        f'<td class="result {result_class}"><code>{escape(_cut(row.text))}</code>{reason}</td>'
        f'<td class="duration">{escape(_duration(row.duration))}</td>'
        f'<td class="measured">{_measured(row, now)}</td>'
        f'<td class="recent">{_strip(row.history, longest)}</td>'
        "</tr>"
    )


def _measured(row: Row, now: float) -> Markup:
    if row.measured_at is None:
        return Markup('<span class="constant">constant</span>')
    stamp = iso_time(row.measured_at)  # e.g. 2026-11-24T16:30:00.123Z
    text = Markup('<time datetime="{0}" title="{0}">{1} UTC</time> <span class="age">{2}</span>')
    text = text.format(stamp, stamp[11:23], _ago(now - row.measured_at))
    if row.cached:
        text += Markup(' <span class="tag">cached</span>')
    return text


def _strip(history: Sequence[Entry], longest: float) -> Markup:
    """Recent runs as small cells, oldest first: color for the result, height for duration
    (relative to ``longest``, the longest run on the page)."""
    if not history:
        return Markup('<span class="none">\N{EM DASH}</span>')
    history = history[-STRIP_RUNS:]
    cells = []
    for entry in history:
        state = _RUN_CLASS.get(entry.state, entry.state)
        tip = f"{state} \N{MIDDLE DOT} {_duration(entry.duration)} \N{MIDDLE DOT} "
        tip += iso_time(entry.measured_at)
        if entry.text:
            tip += f" \N{MIDDLE DOT} {entry.text}"
        height = 30 + round(70 * entry.duration / longest)  # a percentage: only numbers here
        cells.append(
            Markup('<span class="run {}" style="height:{}%" title="{}"></span>').format(
                state, height, tip
            )
        )
    return Markup('<span class="strip">{}</span>').format(Markup("").join(cells))


#: A run's class and label in the strip, by its state where they differ: how the run ended.
_RUN_CLASS = {"failing": "failed"}


def _cut(text: str) -> str:
    if len(text) <= MAX_TEXT_CHARS:
        return text
    return text[: MAX_TEXT_CHARS - 1] + "\N{HORIZONTAL ELLIPSIS}"


def _duration(seconds: float | None) -> str:
    """Milliseconds with one decimal, for every duration: they line up and compare at a glance."""
    if seconds is None:
        return "\N{EM DASH}"
    return f"{seconds * 1000:,.1f} ms"


def _ago(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


_DRAINING = Markup(
    "This process is draining before it stops: its readiness route answers 503 without "
    "running the checks, so that traffic goes elsewhere."
)
_STARTING = Markup(
    "The app has not finished starting (the startup gate, <code>started_by</code>): its "
    "readiness route answers 503. "
)
_NOT_RUN_YET = Markup("The checks run once the gate opens.")
_NO_CHECKS = Markup("This route has no checks.")

#: The reason, for a caller who may not see which check fails.
_WITHOUT_DETAILS = {
    Health.UP: Markup("Every check passes."),
    Health.DEGRADED: Markup("A non-critical check fails, or a check is degraded."),
    Health.DOWN: Markup("A critical check fails."),
}

_CSS = """
:root { color-scheme: light dark; --ok: #1a7f37; --warn: #9a6700; --bad: #cf222e;
  --line: #d0d7de; --muted: #57606a; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5rem 1rem; }
.overall { border-left: 8px solid var(--state); padding: .25rem 1rem; margin-bottom: 1.25rem; }
.up { --state: var(--ok); } .degraded, .starting, .draining { --state: var(--warn); }
.down { --state: var(--bad); }
h1 { margin: 0; font-size: 1.6rem; }
#status { color: var(--state); }
#reason { margin: .2rem 0 0; font-size: 1.05rem; }
.about { display: flex; flex-wrap: wrap; gap: .25rem 1.5rem; margin: .35rem 0 0; }
.about div { display: flex; gap: .4rem; }
.about dt { color: var(--muted); } .about dd { margin: 0; }
table { width: 100%; border-collapse: collapse; }
th, td { text-align: left; vertical-align: top; padding: .45rem .6rem;
  border-bottom: 1px solid var(--line); }
thead th { font-size: .8rem; text-transform: uppercase; letter-spacing: .04em;
  color: var(--muted); }
tbody th { font-weight: 600; white-space: nowrap; }
.badge { display: inline-block; padding: 0 .5rem; border-radius: 1rem; color: #fff;
  font-size: .85rem; white-space: nowrap; }
.badge.ok { background: var(--ok); } .badge.warn { background: var(--warn); }
.badge.bad { background: var(--bad); }
.result code { font: .85rem/1.4 ui-monospace, SFMono-Regular, Menlo, monospace;
  white-space: pre-wrap; word-break: break-word; }
.result.error code { color: var(--bad); }
.reason { color: var(--warn); font-size: .85rem; }
.duration, .measured { white-space: nowrap; font-variant-numeric: tabular-nums; }
th.duration, td.duration { text-align: right; }
.age, .constant, .none, footer, .hidden-details { color: var(--muted); }
.tag { font-size: .75rem; font-weight: 400; color: var(--muted); border: 1px solid var(--line);
  border-radius: .3rem; padding: 0 .3rem; }
.strip { display: inline-flex; align-items: flex-end; gap: 1px; height: 22px; }
.run { display: inline-block; width: 5px; min-height: 30%; border-radius: 1px; }
.run.ok { background: var(--ok); } .run.degraded { background: var(--warn); }
.run.failed, .run.skipped { background: var(--bad); }
footer { margin-top: 1.25rem; font-size: .85rem; }
"""
