"""Flask's contexts inside checks: current_app, g, request and Flask-SQLAlchemy's db.session."""

from __future__ import annotations

import pytest
import status_app
from helpers import Fetch


@pytest.mark.parametrize("url", ["/ctx/sync", "/ctx/async"])
def test_checks_see_the_request_contexts(fetch: Fetch, url: str) -> None:
    reply = fetch(f"{url}?q=42", headers={"X-User": "alice", "X-Probe": "abc"})

    assert reply.json() == {
        "status": "OK",
        "app": status_app.APP_NAME,
        "user": "alice",
        "probe": "abc",
        "query": "42",
        "database": "sqlite",
    }
    assert reply.status == 200


@pytest.mark.parametrize("url", ["/ctx/sync", "/ctx/async"])
def test_each_request_sees_its_own_request(fetch: Fetch, url: str) -> None:
    first = fetch(f"{url}?q=1", headers={"X-User": "alice", "X-Probe": "one"})
    second = fetch(f"{url}?q=2", headers={"X-User": "bob", "X-Probe": "two"})

    assert (first.json()["user"], first.json()["probe"], first.json()["query"]) == (
        "alice",
        "one",
        "1",
    )
    assert (second.json()["user"], second.json()["probe"], second.json()["query"]) == (
        "bob",
        "two",
        "2",
    )
