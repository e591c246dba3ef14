"""The authenticator decorator, sync or async, under WSGI and StatusMiddleware."""

from __future__ import annotations

import pytest
import status_app
from helpers import Fetch

PRIVATE_URLS = list(status_app.AUTHENTICATORS)


def calls(fetch: Fetch, url: str) -> int:
    """How many times the checks of status route ``url`` have run in the app."""
    counts: dict[str, int] = fetch("/calls").json()
    return counts[url]


@pytest.mark.parametrize("url", PRIVATE_URLS)
def test_good_token_gets_the_status(fetch: Fetch, url: str) -> None:
    before = calls(fetch, url)

    reply = fetch(url, cookies={status_app.TOKEN_COOKIE: status_app.GOOD_TOKEN})

    assert reply.status == 200
    assert reply.json() == {"status": "OK", "calls": before + 1}
    assert reply.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("url", PRIVATE_URLS)
@pytest.mark.parametrize(
    ("cookies", "expected_status"),
    [({}, 401), ({status_app.TOKEN_COOKIE: "forged"}, 403)],
    ids=["no-token", "bad-token"],
)
def test_rejected_request_never_runs_the_checks(
    fetch: Fetch, url: str, cookies: dict[str, str], expected_status: int
) -> None:
    before = calls(fetch, url)

    reply = fetch(url, cookies=cookies)

    assert reply.status == expected_status
    assert b"calls" not in reply.body
    assert calls(fetch, url) == before


def test_authenticator_may_edit_the_answer(fetch: Fetch) -> None:
    anonymous = fetch("/summary")
    known = fetch("/summary", headers={"X-User": "alice"})

    assert anonymous.status == 200
    assert anonymous.json() == {"status": "DEGRADED"}
    assert known.status == 200
    assert known.json() == {
        "status": "DEGRADED",
        "database": "sqlite",
        "mail": status_app.REFUSED,
    }
