"""The status page in a real browser: headless Chromium loads it from a real server on 127.0.0.1.

Chromium runs the page's scripts, if any, before it prints the DOM: a check returning a
``<script>`` must show as text and never run. Skipped only when Chromium is not installed
(``.ci/run`` installs Debian's ``chromium``).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request
from helpers import http_fetch, serving_in_thread
from werkzeug.serving import make_server

from flask_status import FlaskStatus, page

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
        self.scripts: list[str] = []
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
        if tag == "script":
            self._in = "script"
            self.scripts.append("")
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
        elif self._in == "script":
            self.scripts[-1] += data


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
    assert dom.scripts == [page.SCRIPT]  # the page's own, and no other
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


def test_the_page_updates_in_place_from_the_live_stream(tmp_path: Path) -> None:
    """A check changes while the page is open: the page shows it, with no reload.

    Chromium dumps the DOM once the page has loaded: the server holds back the end of the page
    (``</body></html>``) until the page's script has fetched the page again after the change,
    so the dump shows what the script made of it.
    """
    phase = {"value": "before"}
    app = Flask(__name__)
    FlaskStatus(app).add_field("phase", lambda: phase["value"])
    navigations: list[str] = []
    stream_opened, refetched = threading.Event(), threading.Event()

    @app.before_request
    def note() -> None:
        accept = request.headers.get("Accept", "")
        if "watch" in request.args:
            stream_opened.set()
        elif "application/xhtml+xml" in accept:  # a navigation: a load or a reload
            navigations.append(request.full_path)
        elif accept == "text/html" and phase["value"] == "after":  # the script's fetch
            refetched.set()

    def held(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        answer = app.wsgi_app(environ, start_response)
        if "application/xhtml+xml" not in environ.get("HTTP_ACCEPT", ""):
            return answer  # the stream, the script's fetch
        return held_back(b"".join(answer))

    def held_back(page: bytes) -> Iterator[bytes]:
        head, tail = page.rsplit(b"</body>", 1)
        yield head
        refetched.wait(BROWSER_SECONDS)
        time.sleep(1)  # the script puts the fetched page in place at once: a generous margin
        yield b"</body>" + tail

    def flip() -> None:
        if stream_opened.wait(BROWSER_SECONDS):
            phase["value"] = "after"
            http_fetch(port, "/api/status")  # runs the check: the stream sends the change

    with serving_in_thread(make_server("127.0.0.1", 0, held, threaded=True)) as port:
        flipper = threading.Thread(target=flip, daemon=True)
        flipper.start()
        url = f"http://127.0.0.1:{port}/api/status?format=html"
        shown = chromium(tmp_path / "profile", "--dump-dom", url).stdout
        flipper.join(BROWSER_SECONDS)

    assert refetched.is_set()
    assert navigations == ["/api/status?format=html"]  # loaded once: never reloaded
    assert Dom(shown).codes == ["after"]  # the value the check has now
    assert '<span id="updates">updates live</span>' in shown
