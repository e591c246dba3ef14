"""Shared fixtures: apps, clients, uvicorn processes, and one request API for WSGI and ASGI."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import status_app
from flask import Flask
from flask.testing import FlaskClient
from helpers import Fetch, UvicornServer, client_fetch


@pytest.fixture
def app() -> Flask:
    return Flask("status_tests")


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event hung checks wait on; set at teardown so no check outlives its test."""
    event = threading.Event()
    yield event
    event.set()


def _serve(factory: str, directory: Path) -> Iterator[UvicornServer]:
    server = UvicornServer(
        factory,
        {status_app.DATABASE_ENV: str(directory / "status.db")},
        directory / "uvicorn.log",
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def asgi_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UvicornServer]:
    """``status_app`` behind StatusMiddleware, in a uvicorn process."""
    yield from _serve("create_asgi_app", tmp_path_factory.mktemp("asgi"))


@pytest.fixture(scope="session")
def plain_asgi_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UvicornServer]:
    """``status_app`` behind WsgiToAsgi alone, in a uvicorn process."""
    yield from _serve("create_plain_asgi_app", tmp_path_factory.mktemp("plain-asgi"))


@pytest.fixture
def wsgi_fetch(tmp_path: Path) -> Fetch:
    """Requests to ``status_app`` through the Flask test client."""
    client = status_app.create_app(tmp_path / "status.db").test_client()
    return partial(client_fetch, client)


@pytest.fixture(params=["wsgi", "asgi"])
def fetch(request: pytest.FixtureRequest) -> Fetch:
    """Requests to ``status_app``, once through WSGI and once through StatusMiddleware."""
    if request.param == "wsgi":
        wsgi_fetch: Fetch = request.getfixturevalue("wsgi_fetch")
        return wsgi_fetch
    server: UvicornServer = request.getfixturevalue("asgi_server")
    return server.fetch
