"""The HTML status page: content, escaping, self-containment, and when browsers get it."""

from __future__ import annotations

import base64
import hashlib
import html
import re
from pathlib import Path
from typing import Any

import pytest
from clients import Answer, Gate, MakeClient
from flask import Flask
from helpers import TOKEN, sleeping, token_required

from flask_status import Degraded, FlaskStatus, lifecycle
from flask_status.page import CONTENT_SECURITY_POLICY, MAX_TEXT_CHARS, STRIP_RUNS
from flask_status.page import SCRIPT as SCRIPT_OF_THE_PAGE

pytest_plugins = ["reliability_fixtures"]

URL = "/api/status"
PAGE = f"{URL}?format=html"
#: What Chromium and Firefox send for a page load.
BROWSER = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,"
    "image/webp,*/*;q=0.8"
}
SCRIPT = '<script>document.title="pwned"</script>'


def header(answer: Answer, name: str) -> str | None:
    return next((v for k, v in answer.headers.items() if k.lower() == name.lower()), None)


def rows(answer: Answer) -> list[str]:
    """The ``data-check`` names of the page's rows, in order (unescaped)."""
    names = re.findall(r'<tr class="check [a-z]+" data-check="([^"]*)">', answer.body.decode())
    return [html.unescape(name) for name in names]


def reason(answer: Answer) -> str:
    """The page's reason line, as text."""
    found = re.search(r'<p id="reason">(.*?)</p>', answer.body.decode())
    assert found, answer.body.decode()
    return html.unescape(re.sub(r"<[^>]+>", "", found.group(1)))


def strips(answer: Answer) -> dict[str, list[int]]:
    """The heights (percent) of each row's run bars, by check."""
    found = {}
    for row in re.findall(r'<tr class="check.*?</tr>', answer.body.decode()):
        name = re.search(r'data-check="([^"]*)"', row)
        assert name
        found[html.unescape(name.group(1))] = [int(h) for h in re.findall(r"height:(\d+)%", row)]
    return found


def durations(answer: Answer) -> list[str]:
    """Every duration the page shows: the duration column and the run bars' tooltips."""
    body = html.unescape(answer.body.decode())
    cells = re.findall(r'<td class="duration">([^<]*)</td>', body)
    tips = re.findall(
        r'title="(?:ok|failed) \N{MIDDLE DOT} ([^\N{MIDDLE DOT}]*) \N{MIDDLE DOT}', body
    )
    return [text for text in cells + tips if text != "\N{EM DASH}"]


def refused() -> None:
    raise ConnectionRefusedError("refused")


def make_app(**options: Any) -> Flask:
    app = Flask(__name__)
    status = FlaskStatus(app, **options)
    status.add_field("version", "2.0")
    status.add_field("database", lambda: {"rows": 3})
    status.add_field("mail", refused, critical=False)
    return app


def test_the_page(make_client: MakeClient) -> None:
    client = make_client(make_app())
    client.get(URL)

    answer = client.get(PAGE)

    assert answer.status == 200
    assert header(answer, "Content-Type") == "text/html; charset=utf-8"
    assert header(answer, "Cache-Control") == "no-store"
    assert header(answer, "Vary") == "Accept"
    assert header(answer, "Content-Security-Policy") == CONTENT_SECURITY_POLICY
    body = answer.body.decode()
    assert body.startswith("<!doctype html>")
    # Without scripts it reloads; with them, it updates from the live status stream.
    assert '<noscript><meta http-equiv="refresh" content="5"></noscript>' in body
    assert body.count("<script") == 1 and f"<script>{SCRIPT_OF_THE_PAGE}</script>" in body
    assert '<span id="status">DEGRADED</span>' in body
    assert "<title>DEGRADED \N{MIDDLE DOT} test_page status</title>" in body  # the app's name
    assert reason(answer) == "Failing: mail (non-critical). 2 of 3 checks pass."
    assert rows(answer) == ["mail", "version", "database"]  # failing first, then as added
    assert "<code>{&#34;rows&#34;: 3}</code>" in body  # a value as JSON
    assert "<code>ConnectionRefusedError: refused</code>" in body
    assert '<span class="constant">constant</span>' in body
    # Two runs so far of each check: two cells in its strip, each with its result in a tooltip.
    cells = re.findall(r'<span class="run (ok|failed)" style="height:\d+%" title="([^"]*)">', body)
    assert [state for state, _ in cells] == ["failed", "failed", "ok", "ok"]
    assert cells[0][1].startswith("failed \N{MIDDLE DOT} ")
    assert cells[0][1].endswith("\N{MIDDLE DOT} ConnectionRefusedError: refused")


def test_the_page_of_a_down_app_is_503(make_client: MakeClient) -> None:
    app = Flask(__name__)
    FlaskStatus(app).add_field("database", refused)
    answer = make_client(app).get(PAGE)
    assert answer.status == 503
    assert b'<span id="status">DOWN</span>' in answer.body
    assert b'<body class="down">' in answer.body
    assert reason(answer) == "Failing: database (critical). 0 of 1 checks pass."


def test_the_page_leads_with_the_reason_and_lists_failing_checks_first(
    make_client: MakeClient,
) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    status.add_field("version", "2.0")
    status.add_field("mail", refused, critical=False)
    status.add_field("database", lambda: "up")
    status.add_field("queue", refused)
    status.add_field("search", refused, critical=False)
    status.add_field("cache", refused)

    answer = make_client(app).get(PAGE)

    assert answer.status == 503
    assert reason(answer) == (
        "Failing: queue, cache (critical); mail, search (non-critical). 2 of 6 checks pass."
    )
    body = answer.body.decode()
    assert body.index('id="reason"') < body.index("<table")  # the reason before the checks
    # Critical failures, then the others, then the checks that pass: each group as added.
    assert rows(answer) == ["queue", "cache", "mail", "search", "version", "database"]


def test_degraded_checks_come_after_failing_ones_with_their_reason_and_a_class_per_state(
    make_client: MakeClient, gate: Gate
) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    status.add_field("version", "2.0")
    status.add_field("replica", lambda: Degraded("lag 12s", value=12))
    status.add_field("mail", refused, critical=False)
    status.add_field("queue", gate.wait, interval=60, critical=False)  # no result yet

    answer = make_client(app).get(PAGE)

    assert answer.status == 200
    assert reason(answer) == (
        "Failing: mail, queue (non-critical). Degraded: replica. 1 of 4 checks pass."
    )
    assert rows(answer) == ["mail", "queue", "replica", "version"]
    body = answer.body.decode()
    states = dict(re.findall(r'<tr class="check (\w+)" data-check="(\w+)"', body))
    assert states == {
        "failing": "mail",
        "starting": "queue",
        "degraded": "replica",
        "ok": "version",
    }
    assert '<span class="badge warn">degraded</span>' in body
    assert '<span class="badge warn">starting</span>' in body  # not critical
    assert '<code>12</code><div class="reason">lag 12s</div>' in body
    assert '<strong class="degraded-check">replica</strong>' in body


def test_the_reason_of_a_healthy_route(make_client: MakeClient) -> None:
    app = Flask(__name__)
    FlaskStatus(app).add_field("database", lambda: "up")
    FlaskStatus(app, url="/empty")
    client = make_client(app)
    assert reason(client.get(PAGE)) == "Every check passes."
    assert reason(client.get("/empty?format=html")) == "This route has no checks."


def test_the_run_bars_of_every_check_share_one_scale(make_client: MakeClient) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    status.add_field("quick", lambda: "up")
    status.add_field("slow", sleeping(0.2))
    client = make_client(app)
    client.get(URL)

    heights = strips(client.get(PAGE))

    assert max(heights["slow"]) == 100  # the longest run on the page
    # A run a thousand times shorter draws at the floor, not as tall as the slow check's.
    assert max(heights["quick"]) < 50, heights


def test_durations_have_one_precision(make_client: MakeClient) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)
    status.add_field("quick", lambda: "up")  # well under a millisecond
    status.add_field("slow", sleeping(0.05))
    status.add_field("failing", refused, critical=False)
    client = make_client(app)
    client.get(URL)

    shown = durations(client.get(PAGE))

    assert len(shown) == 3 + 6  # the column, and two runs of each check in the tooltips
    for text in shown:  # milliseconds with one decimal, whatever the size
        assert re.fullmatch(r"\d{1,3}(,\d{3})*\.\d ms", text), shown


#: The two ways to ask for the page: ``?format=html``, and a browser's ``Accept`` when opted in.
ASK_FOR_THE_PAGE = [
    pytest.param("?format=html", {}, id="format=html"),
    pytest.param("", BROWSER, id="browser"),
]


@pytest.mark.parametrize(("query", "headers"), ASK_FOR_THE_PAGE)
def test_a_draining_readiness_route_answers_its_page(
    make_client: MakeClient, tmp_path: Path, query: str, headers: dict[str, str]
) -> None:
    app = Flask(__name__)
    drain_file = tmp_path / "drain"
    readyz = FlaskStatus(
        app, url="/readyz", readiness=True, drain_file=str(drain_file), html_for_browsers=True
    )
    readyz.add_field("database", lambda: "up")
    drain_file.touch()  # this pod drains

    answer = make_client(app).get(f"/readyz{query}", headers)

    assert answer.status == 503
    assert header(answer, "Content-Type") == "text/html; charset=utf-8"
    assert b'<span id="status">DRAINING</span>' in answer.body
    assert reason(answer).startswith("This process is draining before it stops")
    assert rows(answer) == []  # its checks do not run


@pytest.mark.parametrize(("query", "headers"), ASK_FOR_THE_PAGE)
def test_a_starting_readiness_route_answers_its_page(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch, query: str, headers: dict[str, str]
) -> None:
    monkeypatch.setattr(lifecycle, "_started", False)  # the app has not called mark_started()
    app = Flask(__name__)
    readyz = FlaskStatus(
        app, url="/readyz", readiness=True, started_by="app", html_for_browsers=True
    )
    readyz.add_field("database", lambda: "up")

    answer = make_client(app).get(f"/readyz{query}", headers)

    assert answer.status == 503
    assert header(answer, "Content-Type") == "text/html; charset=utf-8"
    assert b'<span id="status">STARTING</span>' in answer.body
    assert reason(answer) == (
        "The app has not finished starting (the startup gate, started_by): its readiness "
        "route answers 503. The checks run once the gate opens."
    )
    assert rows(answer) == []


def test_a_startup_gate_on_a_failing_check_shows_it(make_client: MakeClient) -> None:
    app = Flask(__name__)
    readyz = FlaskStatus(app, url="/readyz", readiness=True, started_by=["database"])
    readyz.add_field("version", "2.0")
    readyz.add_field("database", refused, critical=False)

    answer = make_client(app).get("/readyz?format=html")

    assert answer.status == 503
    assert b'<span id="status">STARTING</span>' in answer.body
    assert reason(answer).endswith("Failing: database (non-critical). 1 of 2 checks pass.")
    assert rows(answer) == ["database", "version"]


def test_the_field_route_has_a_page_too(make_client: MakeClient) -> None:
    answer = make_client(make_app()).get(f"{URL}/mail?format=html")
    assert answer.status == 200  # mail is not critical
    assert rows(answer) == ["mail"]


def test_the_page_escapes_everything(make_client: MakeClient) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app, message={"status": "OK", "owner": "<b>ops</b>"})
    status.add_field("script", lambda: SCRIPT)
    status.add_field('odd"<name>', lambda: "&amp;")

    def html_error() -> None:
        raise ValueError('<img src=x onerror="alert(1)">')

    status.add_field("<i>broken", html_error, critical=False)  # named in the reason too

    answer = make_client(app).get(PAGE)

    body = answer.body.decode().replace(f"<script>{SCRIPT_OF_THE_PAGE}</script>", "")
    assert "<script" not in body and "<img" not in body and "<b>" not in body and "<i>" not in body
    assert "&lt;script&gt;document.title=&#34;pwned&#34;&lt;/script&gt;" in body
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in body
    assert "&amp;amp;" in body
    assert "&lt;b&gt;ops&lt;/b&gt;" in body
    assert reason(answer).startswith("Failing: <i>broken (non-critical).")
    assert rows(answer) == ["<i>broken", "script", 'odd"<name>']


def test_the_page_is_self_contained(make_client: MakeClient) -> None:
    """No reference to anything but the page's own route, whose stream its script reads."""
    body = make_client(make_app()).get(PAGE).body.decode()
    assert f"<script>{SCRIPT_OF_THE_PAGE}</script>" in body
    body = body.replace(f"<script>{SCRIPT_OF_THE_PAGE}</script>", "").lower()
    for reference in ("<script", "<link", "<img", "src=", "href=", "url(", "@import", "//"):
        assert reference not in body, reference


def test_long_values_are_cut(make_client: MakeClient) -> None:
    app = Flask(__name__)
    FlaskStatus(app).add_field("big", lambda: "y" * 5000)
    body = make_client(app).get(PAGE).body.decode()
    assert "y" * (MAX_TEXT_CHARS - 1) + "\N{HORIZONTAL ELLIPSIS}" in body
    assert "y" * MAX_TEXT_CHARS not in body


def test_hidden_errors_stay_hidden_on_the_page(make_client: MakeClient) -> None:
    client = make_client(make_app(expose_errors=False))
    client.get(URL)
    body = client.get(PAGE).body.decode()
    assert "refused" not in body
    assert "<code>check failed</code>" in body


def test_the_message_is_shown(make_client: MakeClient) -> None:
    # Not "version": make_app adds a field by that name, and a field may not replace a message key.
    answer = make_client(make_app(message={"status": "OK", "release": 7})).get(PAGE)
    assert b"<dt>release</dt><dd>7</dd>" in answer.body


# -- which clients get the page ----------------------------------------------------------


def test_browsers_get_json_by_default(make_client: MakeClient) -> None:
    answer = make_client(make_app()).get(URL, BROWSER)
    assert header(answer, "Content-Type") == "application/json"
    assert answer.json()["status"] == "DEGRADED"
    assert header(answer, "Vary") == "Accept"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (BROWSER["Accept"], "text/html; charset=utf-8"),
        ("text/html", "text/html; charset=utf-8"),
        ("*/*", "application/json"),
        (None, "application/json"),
        ("application/json", "application/json"),
        ("text/html;q=0.5, application/json", "application/json"),
        ("application/health+json", "application/health+json"),
        ("text/html;q=0.9, application/health+json", "application/health+json"),
    ],
)
def test_html_for_browsers(make_client: MakeClient, accept: str | None, expected: str) -> None:
    client = make_client(make_app(html_for_browsers=True))
    answer = client.get(URL, {"Accept": accept} if accept else {})
    assert answer.status == 200
    assert header(answer, "Content-Type") == expected
    assert header(answer, "Vary") == "Accept"


def test_html_for_browsers_from_app_config(make_client: MakeClient) -> None:
    app = Flask(__name__)
    app.config["STATUS_HTML_FOR_BROWSERS"] = True
    FlaskStatus(app).add_field("database", lambda: "sqlite")
    answer = make_client(app).get(URL, BROWSER)
    assert rows(answer) == ["database"]


def test_bad_html_for_browsers_names_the_parameter() -> None:
    with pytest.raises(TypeError, match="html_for_browsers"):
        FlaskStatus(html_for_browsers="yes")  # type: ignore[arg-type]
    app = Flask(__name__)
    app.config["STATUS_HTML_FOR_BROWSERS"] = 1
    with pytest.raises(TypeError, match="STATUS_HTML_FOR_BROWSERS"):
        FlaskStatus(app)


def test_the_authenticator_guards_the_page(make_client: MakeClient) -> None:
    client = make_client(make_app(authenticator=token_required, html_for_browsers=True))
    denied = client.get(PAGE)
    denied_browser = client.get(URL, BROWSER)
    allowed = client.get(PAGE, TOKEN)
    assert denied.status == denied_browser.status == 401
    assert b"database" not in denied.body + denied_browser.body
    assert allowed.status == 200 and rows(allowed) == ["mail", "version", "database"]


def test_a_caller_without_details_gets_no_rows(make_client: MakeClient) -> None:
    app = make_app(is_authorized=lambda req: req.headers.get("X-Admin") == "yes")
    client = make_client(app)
    anonymous = client.get(PAGE)
    admin = client.get(PAGE, {"X-Admin": "yes"})
    assert anonymous.status == admin.status == 200
    assert rows(anonymous) == [] and b"<table" not in anonymous.body
    assert b"not shown" in anonymous.body
    assert reason(anonymous) == "A non-critical check fails, or a check is degraded."  # not which
    assert rows(admin) == ["mail", "version", "database"]


def test_the_strip_shows_the_latest_runs(make_client: MakeClient) -> None:
    app = Flask(__name__)
    FlaskStatus(app, history_size=STRIP_RUNS + 5).add_field("database", lambda: "sqlite")
    client = make_client(app)
    for _ in range(STRIP_RUNS + 4):
        client.get(URL)
    answer = client.get(PAGE)
    cells = re.findall(r'<span class="run ok"[^>]*title="([^"]*)">', answer.body.decode())
    history = client.get(f"{URL}?verbose").json()["checks"]["database"]["history"]
    assert len(history) == STRIP_RUNS + 5  # history_size: more than the strip shows
    assert len(cells) == STRIP_RUNS
    # The newest runs: the page's own run is the last cell.
    assert cells[-1].endswith(history[-2]["measured_at"])


def test_the_script_is_the_only_one_allowed_and_connects_to_the_page_s_origin_only() -> None:
    digest = base64.b64encode(hashlib.sha256(SCRIPT_OF_THE_PAGE.encode()).digest()).decode()
    policy = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
    assert policy["script-src"] == f"'sha256-{digest}'"
    assert policy["connect-src"] == "'self'"
    assert policy["default-src"] == "'none'"
