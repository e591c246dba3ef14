"""The status page in a real browser: headless Chromium loads it from a real server on 127.0.0.1.

Chromium runs the page's scripts, if any, before it prints the DOM: a check returning a
``<script>`` must show as text and never run. Skipped only when Chromium is not installed
(``.ci/run`` installs Debian's ``chromium``).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from flask import Flask
from helpers import http_fetch, serving_in_thread
from werkzeug.serving import make_server

from flask_status import FlaskStatus

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((path for path in map(shutil.which, BROWSERS) if path is not None), None)

pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="Chromium is not installed (apt-get install chromium)"
)

#: Rewrites the title and adds an element, were it ever run.
SCRIPT = (
    '<script>document.title="pwned";'
    "document.body.insertAdjacentHTML('beforeend','<p id=pwned>pwned</p>')</script>"
)
#: Seconds Chromium may take for one page (it starts in about one on a quiet machine).
BROWSER_SECONDS = 90


def refused() -> None:
    raise ConnectionRefusedError("smtp.example.invalid:25 refused the connection")


def create_app() -> Flask:
    app = Flask(__name__)
    status = FlaskStatus(app)
    status.add_field("version", "2.0.0")
    status.add_field("database", lambda: {"visits": 3})
    status.add_field("greeting", lambda: SCRIPT)
    status.add_field("mail", refused, critical=False)
    private = FlaskStatus(app, url="/private", show_details="never")
    private.add_field("database", refused)
    return app


@pytest.fixture
def port() -> Iterator[int]:
    """:func:`create_app` behind werkzeug's threaded server on a free port of 127.0.0.1."""
    with serving_in_thread(make_server("127.0.0.1", 0, create_app(), threaded=True)) as port:
        yield port


def chromium(profile: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium with a fresh profile, offline but for the URL it is given."""
    assert BROWSER is not None
    command = [
        BROWSER,
        "--headless",
        "--no-sandbox",  # tests may run as root, in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        *arguments,
    ]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=BROWSER_SECONDS, check=True
    )


class Dom(HTMLParser):
    """The parts of a document the tests look at."""

    def __init__(self, document: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.ids: list[str] = []
        self.title = ""
        self.status = ""
        self.reason = ""
        self.rows: list[str] = []
        self.codes: list[str] = []
        self.runs = 0
        self._in: str | None = None
        self._in_reason = False  # the reason holds elements of its own
        self.feed(document)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if (attributes.get("class") or "").startswith("run "):
            self.runs += 1  # a strip's cell: one more each time the checks run
        else:
            self.tags.append(tag)
        if attributes.get("id"):
            self.ids.append(attributes["id"] or "")
        if attributes.get("id") == "reason":
            self._in_reason = True
        if tag == "tr" and attributes.get("data-check") is not None:
            self.rows.append(attributes["data-check"] or "")
        if tag == "title" or tag == "code" or attributes.get("id") == "status":
            self._in = "status" if attributes.get("id") == "status" else tag
            if tag == "code":
                self.codes.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in = None
        if tag == "p":
            self._in_reason = False

    def handle_data(self, data: str) -> None:
        if self._in_reason:
            self.reason += data
        if self._in == "title":
            self.title += data
        elif self._in == "status":
            self.status += data
        elif self._in == "code":
            self.codes[-1] += data


def test_the_page_in_a_real_browser(port: int, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{port}/api/status?format=html"
    for _ in range(3):  # some history for the strips
        http_fetch(port, "/api/status")
    served = Dom(http_fetch(port, "/api/status?format=html").body.decode())

    dom = Dom(chromium(tmp_path / "profile", "--dump-dom", url).stdout)

    assert dom.status == "DEGRADED"
    # The app's name; not "pwned": the script never ran.
    assert dom.title == "DEGRADED \N{MIDDLE DOT} test_browser status"
    assert dom.reason == "Failing: mail (non-critical). 3 of 4 checks pass."
    assert dom.rows == ["mail", "version", "database", "greeting"]  # failing first
    assert SCRIPT in dom.codes  # shown as text
    assert "pwned" not in dom.ids
    assert "script" not in dom.tags
    assert dom.tags == served.tags  # nothing added, nothing removed
    assert dom.runs == served.runs + 3  # one more run of each of the 3 checks

    screenshot = tmp_path / "page.png"
    chromium(tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1000,700", url)
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_a_caller_without_details_sees_no_rows(port: int, tmp_path: Path) -> None:
    dom = Dom(
        chromium(
            tmp_path / "profile", "--dump-dom", f"http://127.0.0.1:{port}/private?format=html"
        ).stdout
    )
    assert dom.status == "DOWN"
    assert dom.reason == "A critical check fails."
    assert dom.rows == []
    assert "table" not in dom.tags
