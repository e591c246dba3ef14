"""Who reads the details: ``show_details`` and ``is_authorized``, under WSGI and StatusMiddleware.

A caller without details reads the message and the overall status with the truthful HTTP code,
and nothing else: no field name, value, error or timing, in any format.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from clients import Answer, MakeClient, WsgiClient
from flask import Flask, Request, request
from helpers import TOKEN, token_required, token_required_async

from flask_status import FlaskStatus

pytest_plugins = ["reliability_fixtures"]

URL = "/api/status"
ADMIN = {"X-Admin": "yes"}
HEALTH_JSON = {"Accept": "application/health+json"}
#: Every name and text a route of :func:`make_app` could leak to a caller without details.
SECRETS = ["database", "mail", "version", "sqlite", "refused", "build-7f3a", "duration", "measured"]


def header(answer: Answer, name: str) -> str | None:
    """A response header, whatever the case of its name (the two clients differ)."""
    return next((v for k, v in answer.headers.items() if k.lower() == name.lower()), None)


def assert_no_details(answer: Answer) -> None:
    # The page's style sheet names its CSS classes (".duration"): not a detail.
    text = re.sub(r"<style>.*?</style>", "", answer.body.decode(), flags=re.S).lower()
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked: {text}"


def sync_admin(req: Request) -> bool:
    return req.headers.get("X-Admin") == "yes"


async def async_admin(req: Request) -> bool:
    await asyncio.sleep(0)  # really suspends, as an async lookup would
    return req.headers.get("X-Admin") == "yes"


AUTHORIZERS = [pytest.param(sync_admin, id="sync"), pytest.param(async_admin, id="async")]


def refused() -> None:
    raise ConnectionRefusedError("refused")


class Counter:
    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            self.calls += 1
        return "sqlite"


def make_app(
    *, failing: bool = False, message: Any = None, **options: Any
) -> tuple[Flask, Counter]:
    """A route with a counted check, a constant, and a mail check that fails when ``failing``."""
    app = Flask(__name__)
    status = FlaskStatus(app, message=message, **options)
    database = Counter()
    status.add_field("database", database)
    status.add_field("version", "build-7f3a")
    status.add_field("mail", refused if failing else (lambda: True))
    return app, database


# -- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [("sometimes", ValueError), ("", ValueError), (True, TypeError), (1, TypeError)],
)
def test_bad_show_details_names_the_parameter(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="show_details"):
        FlaskStatus(show_details=value)


def test_bad_show_details_in_app_config_names_the_key() -> None:
    app = Flask(__name__)
    app.config["STATUS_SHOW_DETAILS"] = "Always"
    with pytest.raises(ValueError, match="STATUS_SHOW_DETAILS"):
        FlaskStatus(app)


def test_when_authorized_needs_is_authorized() -> None:
    with pytest.raises(ValueError, match="show_details='when_authorized' needs is_authorized"):
        FlaskStatus(show_details="when_authorized")


def test_when_authorized_from_app_config_needs_is_authorized() -> None:
    app = Flask(__name__)
    app.config["STATUS_SHOW_DETAILS"] = "when_authorized"
    with pytest.raises(ValueError, match="STATUS_SHOW_DETAILS='when_authorized' needs"):
        FlaskStatus(app)


def test_is_authorized_must_be_callable() -> None:
    with pytest.raises(TypeError, match="is_authorized must be a callable"):
        FlaskStatus(is_authorized="admin")  # type: ignore[arg-type]


# -- the modes ---------------------------------------------------------------------------


def test_always_is_the_default_and_changes_nothing(make_client: MakeClient) -> None:
    app, _ = make_app(failing=True)
    answer = make_client(app).get(URL)
    assert answer.status == 503
    assert answer.json() == {
        "status": "DOWN",
        "database": "sqlite",
        "version": "build-7f3a",
        "mail": {"error": "ConnectionRefusedError: refused"},
    }


@pytest.mark.parametrize("failing", [False, True], ids=["healthy", "down"])
def test_never_shows_the_status_only(make_client: MakeClient, failing: bool) -> None:
    app, database = make_app(failing=failing, show_details="never")
    client = make_client(app)

    answer = client.get(URL)

    assert answer.status == (503 if failing else 200)
    assert answer.json() == {"status": "DOWN" if failing else "OK"}
    assert header(answer, "Cache-Control") == "no-store"
    assert database.calls == 1  # the checks ran: the status depends on them
    assert_no_details(answer)


def test_never_keeps_the_message(make_client: MakeClient) -> None:
    app, _ = make_app(failing=True, show_details="never", message={"service": "billing"})
    answer = make_client(app).get(URL)
    assert answer.status == 503
    assert answer.json() == {"service": "billing", "status": "DOWN"}


def test_never_in_health_json_gives_status_and_description(make_client: MakeClient) -> None:
    app, _ = make_app(failing=True, show_details="never", message="billing is here")
    answer = make_client(app).get(URL, HEALTH_JSON)
    assert answer.status == 503
    assert header(answer, "Content-Type") == "application/health+json"
    assert answer.json() == {"status": "fail", "description": "billing is here"}
    assert_no_details(answer)


def test_never_on_the_field_route_gives_that_fields_status(make_client: MakeClient) -> None:
    app, _ = make_app(failing=True, show_details="never")
    client = make_client(app)

    mail = client.get(f"{URL}/mail")
    database = client.get(f"{URL}/database")

    assert (mail.status, mail.json()) == (503, {"status": "DOWN"})
    assert (database.status, database.json()) == (200, {"status": "OK"})
    assert_no_details(mail)
    assert_no_details(database)


@pytest.mark.parametrize("query", ["?verbose", "?format=html", "?verbose&format=html"])
def test_never_hides_the_verbose_answer_and_the_page_rows(
    make_client: MakeClient, query: str
) -> None:
    app, _ = make_app(failing=True, show_details="never")
    answer = make_client(app).get(URL + query)
    assert answer.status == 503
    assert_no_details(answer)
    if "html" in query:
        assert b'status: <span id="status">DOWN</span></h1>' in answer.body
        assert b"<table" not in answer.body
    else:
        assert answer.json() == {"status": "DOWN"}


def test_show_details_from_app_config(make_client: MakeClient) -> None:
    app = Flask(__name__)
    app.config["STATUS_SHOW_DETAILS"] = "never"
    FlaskStatus(app).add_field("database", refused)
    answer = make_client(app).get(URL)
    assert (answer.status, answer.json()) == (503, {"status": "DOWN"})


# -- when_authorized ---------------------------------------------------------------------


@pytest.mark.parametrize("is_authorized", AUTHORIZERS)
def test_when_authorized_shows_details_to_the_authorized_only(
    make_client: MakeClient, is_authorized: Callable[..., Any]
) -> None:
    app, database = make_app(
        failing=True, show_details="when_authorized", is_authorized=is_authorized
    )
    client = make_client(app)

    anonymous = client.get(URL)
    admin = client.get(URL, ADMIN)

    assert (anonymous.status, anonymous.json()) == (503, {"status": "DOWN"})
    assert_no_details(anonymous)
    assert admin.status == 503
    assert admin.json()["mail"] == {"error": "ConnectionRefusedError: refused"}
    assert database.calls == 2


@pytest.mark.parametrize("is_authorized", AUTHORIZERS)
def test_when_authorized_applies_to_every_format(
    make_client: MakeClient, is_authorized: Callable[..., Any]
) -> None:
    app, _ = make_app(failing=True, is_authorized=is_authorized)  # the mode follows
    client = make_client(app)

    for path, headers in [
        (URL, HEALTH_JSON),
        (f"{URL}?verbose", {}),
        (f"{URL}?format=html", {}),
        (f"{URL}/mail", {}),
        (f"{URL}/mail?verbose", {}),
    ]:
        anonymous = client.get(path, headers)
        admin = client.get(path, {**headers, **ADMIN})
        assert anonymous.status == admin.status == 503, path
        assert_no_details(anonymous)
        assert b"refused" in admin.body, path


def test_is_authorized_alone_means_when_authorized(make_client: MakeClient) -> None:
    app, _ = make_app(is_authorized=sync_admin)
    client = make_client(app)
    assert client.get(URL).json() == {"status": "OK"}
    assert "database" in client.get(URL, ADMIN).json()


def test_explicit_always_wins_over_is_authorized(make_client: MakeClient) -> None:
    app, _ = make_app(is_authorized=lambda req: False, show_details="always")
    assert "database" in make_client(app).get(URL).json()


def test_constants_only_route_still_asks(make_client: MakeClient) -> None:
    """A route of constants under WSGI needs no loop, except to ask is_authorized."""
    app = Flask(__name__)
    FlaskStatus(app, is_authorized=async_admin).add_field("version", "build-7f3a")
    client = make_client(app)
    assert client.get(URL).json() == {"status": "OK"}
    assert client.get(URL, ADMIN).json() == {"status": "OK", "version": "build-7f3a"}


def test_is_authorized_sees_the_request(make_client: MakeClient) -> None:
    seen: list[tuple[str, str]] = []

    def is_authorized(req: Request) -> bool:
        seen.append((req.path, request.args["who"]))  # the request context is there too
        return True

    app, _ = make_app(is_authorized=is_authorized)
    make_client(app).get(f"{URL}/database?who=probe")
    assert seen == [(f"{URL}/database", "probe")]


def test_a_sync_is_authorized_runs_off_the_event_loop(make_client: MakeClient) -> None:
    """It may look up a session store: it must not hold the loop the checks run on."""
    threads: list[str] = []

    def is_authorized(req: Request) -> bool:
        threads.append(threading.current_thread().name)
        return True

    async def loop_thread() -> str:
        return threading.current_thread().name

    app, _ = make_app(is_authorized=is_authorized)
    FlaskStatus(app, url="/loop").add_field("thread", loop_thread)
    client = make_client(app)
    client.get(URL)
    loop = client.get("/loop").json()["thread"]
    assert threads and threads[0] != loop


def test_an_async_is_authorized_is_awaited_on_the_loop(make_client: MakeClient) -> None:
    loops: list[str] = []

    async def is_authorized(req: Request) -> bool:
        loops.append(threading.current_thread().name)
        return True

    async def loop_thread() -> str:
        return threading.current_thread().name

    app, _ = make_app(is_authorized=is_authorized)
    FlaskStatus(app, url="/loop").add_field("thread", loop_thread)
    client = make_client(app)
    client.get(URL)
    assert loops == [client.get("/loop").json()["thread"]]


# A cancellation it raises of its own: it awaited something that was cancelled elsewhere.
@pytest.mark.parametrize("raised", [RuntimeError, SystemExit, asyncio.CancelledError])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_failing_is_authorized_shows_no_details_and_logs(
    make_client: MakeClient,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    raised: type[BaseException],
) -> None:
    def broken(req: Request) -> bool:
        raise raised("session store down")

    async def broken_async(req: Request) -> bool:
        raise raised("session store down")

    app, _ = make_app(failing=True, is_authorized=broken if kind == "sync" else broken_async)
    client = make_client(app)
    with caplog.at_level(logging.ERROR, logger=app.logger.name):
        answer = client.get(URL, ADMIN)

    assert (answer.status, answer.json()) == (503, {"status": "DOWN"})
    assert client.get(URL).status == 503  # and the next request is served as well
    assert b"Traceback" not in answer.body and b"session store" not in answer.body
    assert any("is_authorized" in r.getMessage() and r.exc_info for r in caplog.records)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_is_authorized_that_hangs_shows_no_details_at_the_timeout(
    make_client: MakeClient, kind: str
) -> None:
    release = threading.Event()

    def hangs(req: Request) -> bool:
        release.wait(10)
        return True

    async def hangs_async(req: Request) -> bool:
        await asyncio.sleep(10)
        return True

    app, _ = make_app(timeout=0.2, is_authorized=hangs if kind == "sync" else hangs_async)
    try:
        started = time.monotonic()
        answer = make_client(app).get(URL, ADMIN)
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert (answer.status, answer.json()) == (200, {"status": "OK"})
    assert elapsed < 5


def test_a_truthy_answer_allows(make_client: MakeClient) -> None:
    app, _ = make_app(is_authorized=lambda req: req.headers.get("X-Admin"))
    client = make_client(app)
    assert "database" in client.get(URL, ADMIN).json()
    assert "database" not in client.get(URL).json()


@pytest.mark.parametrize(
    "authenticator", [token_required, token_required_async], ids=["sync", "async"]
)
@pytest.mark.parametrize("is_authorized", AUTHORIZERS)
def test_with_an_authenticator_too(
    make_client: MakeClient,
    authenticator: Callable[..., Any],
    is_authorized: Callable[..., Any],
) -> None:
    """The authenticator lets callers in; is_authorized decides who of them reads details."""
    app, _ = make_app(failing=True, authenticator=authenticator, is_authorized=is_authorized)
    client = make_client(app)
    token = TOKEN

    assert client.get(URL).status == 401
    member = client.get(URL, token)
    admin = client.get(URL, {**token, **ADMIN})

    assert (member.status, member.json()) == (503, {"status": "DOWN"})
    assert admin.status == 503 and "mail" in admin.json()


@pytest.mark.parametrize(
    "options",
    [{"is_authorized": lambda req: False}, {"show_details": "never"}],
    ids=["when_authorized", "never"],
)
def test_the_cli_shows_details(options: dict[str, Any]) -> None:
    """show_details is about the route's callers; the CLI's user runs the app itself."""
    app, _ = make_app(failing=True, **options)
    result = app.test_cli_runner().invoke(args=["status"])
    assert result.exit_code == 1
    assert "ConnectionRefusedError: refused" in result.output


def test_listeners_still_get_every_outcome() -> None:
    app = Flask(__name__)
    status = FlaskStatus(app, show_details="never")
    status.add_field("database", refused)
    seen: list[Mapping[str, Any]] = []
    status.on_evaluated(lambda outcomes: seen.append(dict(outcomes)))
    WsgiClient(app).get(URL)
    assert [list(outcomes) for outcomes in seen] == [["database"]]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_under_trio(kind: str) -> None:
    """StatusMiddleware serves status routes on trio too: is_authorized is asked there."""
    import anyio
    from asgiref.wsgi import WsgiToAsgi
    from clients import asgi_get

    from flask_status.asgi import StatusMiddleware

    async def trio_admin(req: Request) -> bool:
        await anyio.sleep(0)  # asyncio.sleep would fail on trio
        return req.headers.get("X-Admin") == "yes"

    app, _ = make_app(failing=True, is_authorized=sync_admin if kind == "sync" else trio_admin)
    asgi_app = StatusMiddleware(WsgiToAsgi(app), app)  # type: ignore[no-untyped-call]

    anonymous = anyio.run(asgi_get, asgi_app, URL, None, backend="trio")
    admin = anyio.run(asgi_get, asgi_app, URL, ADMIN, backend="trio")

    assert (anonymous.status, anonymous.json()) == (503, {"status": "DOWN"})
    assert admin.status == 503 and "mail" in admin.json()
