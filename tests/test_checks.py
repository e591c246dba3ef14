"""Ready-made checks against real dependencies, driven through a Flask app's status route."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis as redis_lib
import redis.asyncio as redis_asyncio
import sqlalchemy as sa
from asgiref.wsgi import WsgiToAsgi
from conftest import HttpServer, StatusApp
from flask_sqlalchemy import SQLAlchemy

from flask_status import checks
from flask_status.asgi import StatusMiddleware
from flask_status.fields import is_async_callable
from flask_status.loop import portal_loop


def assert_latency(value: Any) -> None:
    assert isinstance(value["latency_ms"], float)
    assert value["latency_ms"] >= 0


def assert_down(checked_app: StatusApp, key: str, *fragments: str) -> None:
    """The route answers 503 DOWN and the field's one-line error holds every fragment."""
    code, body = checked_app.get()
    assert code == 503
    assert body["status"] == "DOWN"
    assert set(body[key]) == {"error"}
    for fragment in fragments:
        assert fragment in body[key]["error"]


# -- sqlalchemy --------------------------------------------------------------------------


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    yield engine
    engine.dispose()


def test_sqlalchemy_engine_up(checked_app: StatusApp, sqlite_engine: sa.Engine) -> None:
    checked_app.status.add_field("database", checks.sqlalchemy(sqlite_engine))
    code, body = checked_app.get()
    assert code == 200
    assert body["status"] == "OK"
    assert_latency(body["database"])


def test_sqlalchemy_engine_down(checked_app: StatusApp, tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'app.db'}")
    checked_app.status.add_field("database", checks.sqlalchemy(engine))
    try:
        assert_down(checked_app, "database", "OperationalError", "unable to open database file")
    finally:
        engine.dispose()


def test_flask_sqlalchemy_db_resolved_in_app_context(
    checked_app: StatusApp, tmp_path: Path
) -> None:
    db = SQLAlchemy()
    # Built before init_app, as with an app factory: the engine is looked up per request.
    checked_app.status.add_field("database", checks.sqlalchemy(db))
    checked_app.app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'app.db'}"
    db.init_app(checked_app.app)
    code, body = checked_app.get()
    assert code == 200
    assert_latency(body["database"])
    with checked_app.app.app_context():
        db.engine.dispose()


def test_flask_sqlalchemy_db_down(checked_app: StatusApp, tmp_path: Path) -> None:
    checked_app.app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'no' / 'app.db'}"
    db = SQLAlchemy(checked_app.app)
    checked_app.status.add_field("database", checks.sqlalchemy(db))
    assert_down(checked_app, "database", "OperationalError")
    with checked_app.app.app_context():
        db.engine.dispose()


def test_sqlalchemy_rejects_a_url() -> None:
    with pytest.raises(TypeError, match="engine must be a sqlalchemy Engine"):
        checks.sqlalchemy("sqlite://")


# -- redis -------------------------------------------------------------------------------


@pytest.fixture
def redis_client(redis_port: int) -> Iterator[redis_lib.Redis]:
    client = redis_lib.Redis(port=redis_port, socket_timeout=2)
    yield client
    client.close()


def close_on_background_loop(client: redis_asyncio.Redis) -> None:
    """Close an asyncio client on the loop where WSGI requests opened its connections."""
    portal_loop.call(client.aclose)


@pytest.fixture
def async_redis_client(redis_port: int) -> Iterator[redis_asyncio.Redis]:
    client = redis_asyncio.Redis(port=redis_port, socket_timeout=2)
    yield client
    close_on_background_loop(client)


def test_redis_sync_up(checked_app: StatusApp, redis_client: redis_lib.Redis) -> None:
    check = checks.redis(redis_client)
    assert not is_async_callable(check)
    checked_app.status.add_field("cache", check)
    code, body = checked_app.get()
    assert code == 200
    assert_latency(body["cache"])


def test_redis_sync_down(checked_app: StatusApp, closed_port: int) -> None:
    client = redis_lib.Redis(port=closed_port, socket_connect_timeout=1, retry=None)
    checked_app.status.add_field("cache", checks.redis(client))
    assert_down(checked_app, "cache", "ConnectionError", str(closed_port))
    client.close()


def test_redis_asyncio_up(checked_app: StatusApp, async_redis_client: redis_asyncio.Redis) -> None:
    check = checks.redis(async_redis_client)
    assert is_async_callable(check)  # so the engine runs it on the event loop
    checked_app.status.add_field("cache", check)
    for _ in range(2):  # the second request reuses the connection opened on the loop
        code, body = checked_app.get()
        assert code == 200
        assert_latency(body["cache"])


def test_redis_asyncio_down(checked_app: StatusApp, closed_port: int) -> None:
    client = redis_asyncio.Redis(port=closed_port, socket_connect_timeout=1, retry=None)
    checked_app.status.add_field("cache", checks.redis(client))
    try:
        assert_down(checked_app, "cache", "ConnectionError", str(closed_port))
    finally:
        close_on_background_loop(client)


def test_redis_asyncio_on_the_asgi_servers_loop(checked_app: StatusApp, redis_port: int) -> None:
    asgi_app = StatusMiddleware(WsgiToAsgi(checked_app.app), checked_app.app)

    async def serve() -> httpx.Response:
        client = redis_asyncio.Redis(port=redis_port, socket_timeout=2)
        checked_app.status.add_field("cache", checks.redis(client))
        try:
            transport = httpx.ASGITransport(app=asgi_app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
                return await http.get("/api/status")
        finally:
            await client.aclose()

    response = anyio.run(serve)
    assert response.status_code == 200
    assert_latency(response.json()["cache"])


def test_redis_rejects_other_objects(redis_port: int) -> None:
    with pytest.raises(TypeError, match=r"client must be a redis\.Redis"):
        checks.redis(f"redis://127.0.0.1:{redis_port}")


# -- http --------------------------------------------------------------------------------


def test_http_up(checked_app: StatusApp, http_server: HttpServer) -> None:
    checked_app.status.add_field("api", checks.http(http_server.url("/status/200")))
    code, body = checked_app.get()
    assert code == 200
    assert body["api"]["status_code"] == 200
    assert_latency(body["api"])


def test_http_expected_statuses(checked_app: StatusApp, http_server: HttpServer) -> None:
    checked_app.status.add_field(
        "api", checks.http(http_server.url("/status/204"), expect_status={200, 204})
    )
    code, body = checked_app.get()
    assert code == 200
    assert body["api"]["status_code"] == 204


def test_http_unexpected_status(checked_app: StatusApp, http_server: HttpServer) -> None:
    url = http_server.url("/status/500")
    checked_app.status.add_field("api", checks.http(url))
    assert_down(checked_app, "api", f"CheckFailed: GET {url} answered 500, expected 200")


def test_http_connection_refused(checked_app: StatusApp, closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}/"
    checked_app.status.add_field("api", checks.http(url))
    assert_down(checked_app, "api", f"CheckFailed: GET {url} failed: ConnectionRefusedError")


def test_http_own_timeout(checked_app: StatusApp, http_server: HttpServer) -> None:
    checked_app.status.add_field("api", checks.http(http_server.url("/hang"), timeout=0.3))
    started = time.monotonic()
    assert_down(checked_app, "api", "timed out after 0.3s (ReadTimeout)")
    assert time.monotonic() - started < 3  # well under the field's 5 s timeout


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"url": 8080}, TypeError, "url must be a str"),
        ({"url": "ftp://example.com/"}, ValueError, "url must be an absolute http"),
        ({"url": "/relative"}, ValueError, "url must be an absolute http"),
        ({"url": "http://x/", "expect_status": 99}, ValueError, "expect_status"),
        ({"url": "http://x/", "expect_status": "200"}, TypeError, "expect_status"),
        ({"url": "http://x/", "expect_status": []}, TypeError, "expect_status"),
        ({"url": "http://x/", "expect_status": [200, True]}, TypeError, "expect_status"),
        ({"url": "http://x/", "timeout": 0}, ValueError, "timeout"),
        ({"url": "http://x/", "timeout": "1"}, TypeError, "timeout"),
    ],
)
def test_http_validates_arguments(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        checks.http(**kwargs)


# -- tcp ---------------------------------------------------------------------------------


def test_tcp_up(checked_app: StatusApp, http_server: HttpServer) -> None:
    checked_app.status.add_field("socket", checks.tcp("127.0.0.1", http_server.port))
    code, body = checked_app.get()
    assert code == 200
    assert_latency(body["socket"])


def test_tcp_refused(checked_app: StatusApp, closed_port: int) -> None:
    checked_app.status.add_field("socket", checks.tcp("127.0.0.1", closed_port))
    assert_down(
        checked_app,
        "socket",
        f"CheckFailed: cannot connect to 127.0.0.1:{closed_port}: ConnectionRefusedError",
    )


@pytest.mark.parametrize(
    ("host", "port", "error", "match"),
    [
        ("", 80, ValueError, "host"),
        (None, 80, TypeError, "host"),
        ("localhost", "80", TypeError, "port"),
        ("localhost", 0, ValueError, "port"),
        ("localhost", 65536, ValueError, "port"),
    ],
)
def test_tcp_validates_arguments(host: Any, port: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        checks.tcp(host, port)


# -- disk --------------------------------------------------------------------------------


def test_disk_reports_free_bytes(checked_app: StatusApp, tmp_path: Path) -> None:
    checked_app.status.add_field("disk", checks.disk(tmp_path, min_free=1))
    code, body = checked_app.get()
    assert code == 200
    usage = shutil.disk_usage(tmp_path)
    assert 0 < body["disk"]["free_bytes"] <= usage.total
    assert body["disk"]["total_bytes"] == usage.total


def test_disk_below_min_free(checked_app: StatusApp, tmp_path: Path) -> None:
    more_than_free = shutil.disk_usage(tmp_path).total + 1
    checked_app.status.add_field("disk", checks.disk(str(tmp_path), min_free=more_than_free))
    assert_down(checked_app, "disk", "CheckFailed", f"below min_free {more_than_free}")


def test_disk_missing_path(checked_app: StatusApp, tmp_path: Path) -> None:
    checked_app.status.add_field("disk", checks.disk(tmp_path / "gone", min_free=0))
    assert_down(checked_app, "disk", "FileNotFoundError")


@pytest.mark.parametrize(
    ("path", "min_free", "error", "match"),
    [
        (None, 0, TypeError, "path"),
        ("", 0, ValueError, "path"),
        ("/", -1, ValueError, "min_free"),
        ("/", 1.5, TypeError, "min_free"),
        ("/", True, TypeError, "min_free"),
    ],
)
def test_disk_validates_arguments(path: Any, min_free: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        checks.disk(path, min_free)


# -- optional dependencies ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "extra", "factory"),
    [
        ("sqlalchemy", "sqlalchemy", lambda: checks.sqlalchemy(None)),
        ("redis", "redis", lambda: checks.redis(None)),
        ("httpx", "http", lambda: checks.http("http://127.0.0.1/")),
    ],
)
def test_missing_extra_names_it(
    monkeypatch: pytest.MonkeyPatch, module: str, extra: str, factory: Callable[[], object]
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes "import <module>" fail
    with pytest.raises(ImportError, match=rf"pip install -e '\.\[{extra}\]' in a clone"):
        factory()


def test_modules_import_without_optional_packages() -> None:
    blocked = ["sqlalchemy", "redis", "httpx", "prometheus_client", "flask_sqlalchemy"]
    blocked += ["cryptography", "trustme"]  # tls_certificate needs neither: ssl does it all
    code = (
        f"import sys; sys.modules.update(dict.fromkeys({blocked!r}));"
        "import flask_status.checks, flask_status.probe, flask_status.__main__;"
        "flask_status.checks.tcp('127.0.0.1', 1); flask_status.checks.disk('/', 0);"
        "flask_status.checks.tls_certificate('127.0.0.1')"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
