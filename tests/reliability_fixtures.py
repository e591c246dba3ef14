"""Fixtures shared by the reliability tests; test modules load them with
``pytest_plugins = ["reliability_fixtures"]``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from clients import AsgiClient, Gate, LoopThread, MakeClient, WsgiClient


@pytest.fixture(params=["wsgi", "asgi"])
def make_client(request: pytest.FixtureRequest) -> Iterator[MakeClient]:
    """Builds a client for an app: its WSGI interface, or the ASGI middleware on a running loop."""
    if request.param == "wsgi":
        yield WsgiClient
        return
    loop = LoopThread()
    try:
        yield lambda app: AsgiClient(app, loop)
    finally:
        loop.close()


@pytest.fixture
def gate() -> Iterator[Gate]:
    """What hanging checks wait on, released at teardown so that no check thread lingers.

    Tests list it after ``make_client``, so that it is released before the client's loop closes.
    """
    gate = Gate()
    yield gate
    gate.release()
