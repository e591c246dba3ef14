"""The HTML status page: content, escaping, self-containment, and when browsers get it."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest
from clients import Answer, MakeClient
from flask import Flask
from helpers import TOKEN, token_required

from flask_status import FlaskStatus
from flask_status.page import CONTENT_SECURITY_POLICY, MAX_TEXT_CHARS, STRIP_RUNS

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
    assert '<meta http-equiv="refresh" content="5">' in body
    assert '<span id="status">DEGRADED</span>' in body
    assert rows(answer) == ["version", "database", "mail"]  # as added
    assert "<code>{&#34;rows&#34;: 3}</code>" in body  # a value as JSON
    assert "<code>ConnectionRefusedError: refused</code>" in body
    assert '<span class="constant">constant</span>' in body
    # Two runs so far of each check: two cells in its strip, each with its result in a tooltip.
    cells = re.findall(r'<span class="run (ok|failed)" style="height:\d+%" title="([^"]*)">', body)
    assert [state for state, _ in cells] == ["ok", "ok", "failed", "failed"]
    assert cells[2][1].startswith("failed \N{MIDDLE DOT} ")
    assert cells[2][1].endswith("\N{MIDDLE DOT} ConnectionRefusedError: refused")


def test_the_page_of_a_down_app_is_503(make_client: MakeClient) -> None:
    app = Flask(__name__)
    FlaskStatus(app).add_field("database", refused)
    answer = make_client(app).get(PAGE)
    assert answer.status == 503
    assert b'<span id="status">DOWN</span>' in answer.body
    assert b'<body class="down">' in answer.body


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

    status.add_field("broken", html_error, critical=False)

    answer = make_client(app).get(PAGE)

    body = answer.body.decode()
    assert "<script" not in body and "<img" not in body and "<b>" not in body
    assert "&lt;script&gt;document.title=&#34;pwned&#34;&lt;/script&gt;" in body
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in body
    assert "&amp;amp;" in body
    assert "&lt;b&gt;ops&lt;/b&gt;" in body
    assert rows(answer) == ["script", 'odd"<name>', "broken"]


def test_the_page_is_self_contained(make_client: MakeClient) -> None:
    body = make_client(make_app()).get(PAGE).body.decode().lower()
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
    assert allowed.status == 200 and rows(allowed) == ["version", "database", "mail"]


def test_a_caller_without_details_gets_no_rows(make_client: MakeClient) -> None:
    app = make_app(is_authorized=lambda req: req.headers.get("X-Admin") == "yes")
    client = make_client(app)
    anonymous = client.get(PAGE)
    admin = client.get(PAGE, {"X-Admin": "yes"})
    assert anonymous.status == admin.status == 200
    assert rows(anonymous) == [] and b"<table" not in anonymous.body
    assert b"not shown" in anonymous.body
    assert rows(admin) == ["version", "database", "mail"]


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
