"""Ready-made checks never show a credential of their target: not in the answer, not in a log.

Every target here holds a password and a token; each test looks for both in the JSON answers
(default and health+json), in every log record (tracebacks included) and in the metrics.
"""

from __future__ import annotations

import logging
import socketserver
import types
from collections.abc import Iterator
from typing import Any, BinaryIO

import pytest
import redis as redis_lib
import redis.asyncio as redis_asyncio
import sqlalchemy as sa
from conftest import HttpServer, StatusApp
from flask_sqlalchemy import SQLAlchemy
from helpers import serving_in_thread
from prometheus_client import CollectorRegistry, generate_latest
from test_checks import close_on_background_loop

from flask_status import checks
from flask_status.prometheus import instrument
from flask_status.redact import Redactor, redact_url

PASSWORD = "hunter2"
TOKEN = "t0ken-5ecret"
SECRETS = (PASSWORD, TOKEN)


def everything_shown(checked_app: StatusApp, caplog: pytest.LogCaptureFixture) -> str:
    """Both answers of the status route, then every log line so far, as one text."""
    client = checked_app.app.test_client()
    texts = [
        client.get("/api/status").get_data(as_text=True),
        client.get("/api/status", headers={"Accept": "application/health+json"}).get_data(
            as_text=True
        ),
    ]
    texts += [record.getMessage() for record in caplog.records]
    texts.append(caplog.text)  # formatted, tracebacks of chained exceptions included
    return "\n".join(texts)


def assert_hidden(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)  # httpx logs each request's URL at INFO
    return caplog


# -- redact_url --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://admin:hunter2@db.example/x", "https://admin:***@db.example/x"),
        ("https://t0ken@git.example/repo", "https://***@git.example/repo"),
        ("http://h/p?token=abc&page=2", "http://h/p?token=***&page=***"),
        ("http://h/p?apikey=abc#access_token=xyz", "http://h/p?apikey=***#***"),
        ("http://h/p?SECRET", "http://h/p?***"),
        ("http://h/p?empty=", "http://h/p?empty="),
        ("http://127.0.0.1:8000/api/status", "http://127.0.0.1:8000/api/status"),
        ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("http://admin:hunter2@[::1", "(unparsable URL, 25 characters)"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redactor_masks_secrets_as_given_and_decoded() -> None:
    redactor = Redactor(urls=["http://u:p%40ss-word@h/x?sig=a%2Bb&n=12"])
    text = "http://u:p%40ss-word@h/x?sig=a%2Bb&n=12 failed; p@ss-word; a+b; a%2Bb; port 12"
    assert redactor.scrub(text) == ("http://u:***@h/x?sig=***&n=*** failed; ***; ***; ***; port 12")
    assert redactor.reveals("p@ss-word") and not redactor.reveals("port 12")


# -- http --------------------------------------------------------------------------------


def secret_url(port: int, path: str) -> str:
    return f"http://admin:{PASSWORD}@127.0.0.1:{port}{path}?access_token={TOKEN}&page=2"


def test_http_refused(
    checked_app: StatusApp, closed_port: int, logs: pytest.LogCaptureFixture
) -> None:
    checked_app.status.add_field("api", checks.http(secret_url(closed_port, "/health")))
    shown = everything_shown(checked_app, logs)
    assert_hidden(shown)
    expected = f"GET http://admin:***@127.0.0.1:{closed_port}/health?access_token=***&page=***"
    assert f"{expected} failed: ConnectionRefusedError" in shown


def test_http_unexpected_status(
    checked_app: StatusApp, http_server: HttpServer, logs: pytest.LogCaptureFixture
) -> None:
    checked_app.status.add_field("api", checks.http(secret_url(http_server.port, "/status/503")))
    shown = everything_shown(checked_app, logs)
    assert_hidden(shown)
    assert "answered 503, expected 200" in shown
    httpx_lines = [r.getMessage() for r in logs.records if r.name == "httpx"]
    assert httpx_lines and all("admin:***@" in line for line in httpx_lines)


def test_http_timeout(
    checked_app: StatusApp, http_server: HttpServer, logs: pytest.LogCaptureFixture
) -> None:
    url = secret_url(http_server.port, "/hang")
    checked_app.status.add_field("api", checks.http(url, timeout=0.2))
    shown = everything_shown(checked_app, logs)
    assert_hidden(shown)
    assert "timed out after 0.2s" in shown


def test_http_library_error_echoing_the_url_is_masked(
    checked_app: StatusApp, closed_port: int, logs: pytest.LogCaptureFixture
) -> None:
    import httpx

    url = secret_url(closed_port, "/health")

    class EchoingTransport(httpx.AsyncHTTPTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError(f"cannot reach {request.url}")  # as a proxy error may

    original = httpx.AsyncClient.__init__

    def with_echoing_transport(self: httpx.AsyncClient, **kwargs: Any) -> None:
        original(self, transport=EchoingTransport(), **kwargs)

    checked_app.status.add_field("api", checks.http(url))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(httpx.AsyncClient, "__init__", with_echoing_transport)
        shown = everything_shown(checked_app, logs)
    assert_hidden(shown)
    assert "failed: ConnectError: cannot reach http://admin:***@127.0.0.1" in shown


def test_http_setup_error_hides_the_password() -> None:
    with pytest.raises(ValueError, match="url must be an absolute") as raised:
        checks.http(f"ftp://admin:{PASSWORD}@127.0.0.1/?token={TOKEN}")
    assert_hidden(str(raised.value))


def test_http_metrics_hold_no_secret(checked_app: StatusApp, closed_port: int) -> None:
    registry = CollectorRegistry()
    instrument(checked_app.status, registry)
    checked_app.status.add_field("api", checks.http(secret_url(closed_port, "/health")))
    checked_app.get()
    metrics = generate_latest(registry).decode()
    assert 'check="api"' in metrics
    assert_hidden(metrics)


# -- redis -------------------------------------------------------------------------------


def read_command(stream: BinaryIO) -> list[str] | None:
    """One RESP command (an array of bulk strings), or None at the end of the stream."""
    header = stream.readline()
    if not header.startswith(b"*"):
        return None
    command = []
    for _ in range(int(header[1:])):
        length = int(stream.readline()[1:])
        command.append(stream.read(length + 2)[:-2].decode())
    return command


@pytest.fixture
def echoing_redis() -> Iterator[int]:
    """A RESP server that answers every command as Redis answers one it does not know (AUTH
    after ``rename-command AUTH ""``): with an error quoting the arguments."""

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while (command := read_command(self.rfile)) is not None:
                name, *args = command
                quoted = " ".join(f"'{arg}'" for arg in args)
                error = f"-ERR unknown command '{name}', with args beginning with: {quoted} \r\n"
                self.wfile.write(error.encode())

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    with serving_in_thread(server) as port:
        yield port


def test_redis_sync_server_echoing_the_password(
    checked_app: StatusApp, echoing_redis: int, logs: pytest.LogCaptureFixture
) -> None:
    client = redis_lib.Redis(
        port=echoing_redis, username="admin", password=PASSWORD, retry=None, socket_timeout=2
    )
    checked_app.status.add_field("cache", checks.redis(client))
    try:
        shown = everything_shown(checked_app, logs)
    finally:
        client.close()
    assert_hidden(shown)
    assert "with args beginning with: " in shown and "'admin' '***'" in shown


def test_redis_asyncio_server_echoing_the_password(
    checked_app: StatusApp, echoing_redis: int, logs: pytest.LogCaptureFixture
) -> None:
    client = redis_asyncio.Redis(
        port=echoing_redis, username="admin", password=PASSWORD, retry=None, socket_timeout=2
    )
    checked_app.status.add_field("cache", checks.redis(client))
    try:
        shown = everything_shown(checked_app, logs)
    finally:
        close_on_background_loop(client)
    assert_hidden(shown)
    assert "'admin' '***'" in shown


def test_redis_url_with_password_refused(
    checked_app: StatusApp, closed_port: int, logs: pytest.LogCaptureFixture
) -> None:
    client = redis_lib.Redis.from_url(
        f"redis://admin:{PASSWORD}@127.0.0.1:{closed_port}/0", retry=None
    )
    checked_app.status.add_field("cache", checks.redis(client))
    shown = everything_shown(checked_app, logs)
    client.close()
    assert_hidden(shown)
    assert "ConnectionError" in shown


def test_redis_with_password_up(
    checked_app: StatusApp, redis_port: int, logs: pytest.LogCaptureFixture
) -> None:
    client = redis_lib.Redis.from_url(f"redis://:{PASSWORD}@127.0.0.1:{redis_port}/0")
    checked_app.status.add_field("cache", checks.redis(client))
    shown = everything_shown(checked_app, logs)
    client.close()
    assert_hidden(shown)


# -- sqlalchemy --------------------------------------------------------------------------


def echoing_dbapi() -> types.ModuleType:
    """A DB-API module whose ``connect()`` fails quoting its arguments, as a driver that
    echoes its DSN does."""
    module = types.ModuleType("echoing_dbapi")
    module.paramstyle = "format"  # type: ignore[attr-defined]
    module.__version__ = "1.30.0"  # type: ignore[attr-defined]
    error = type("Error", (Exception,), {})
    module.Error = error  # type: ignore[attr-defined]
    for name in (
        "Warning",
        "InterfaceError",
        "DatabaseError",
        "DataError",
        "OperationalError",
        "IntegrityError",
        "InternalError",
        "ProgrammingError",
        "NotSupportedError",
    ):
        setattr(module, name, type(name, (error,), {}))

    def connect(*args: Any, **kwargs: Any) -> None:
        raise module.OperationalError(f"cannot connect with {kwargs}")  # type: ignore[attr-defined]

    module.connect = connect  # type: ignore[attr-defined]
    return module


def database_url(port: int) -> str:
    return f"postgresql+pg8000://admin:{PASSWORD}@127.0.0.1:{port}/app?sslkey={TOKEN}"


def test_sqlalchemy_driver_echoing_the_password(
    checked_app: StatusApp, closed_port: int, logs: pytest.LogCaptureFixture
) -> None:
    engine = sa.create_engine(database_url(closed_port), module=echoing_dbapi())
    checked_app.status.add_field("database", checks.sqlalchemy(engine))
    shown = everything_shown(checked_app, logs)
    engine.dispose()
    assert_hidden(shown)
    assert "OperationalError" in shown and "'password': '***'" in shown


def test_flask_sqlalchemy_driver_echoing_the_password(
    checked_app: StatusApp, closed_port: int, logs: pytest.LogCaptureFixture
) -> None:
    app = checked_app.app
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url(closed_port)
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"module": echoing_dbapi()}
    db = SQLAlchemy(app)
    checked_app.status.add_field("database", checks.sqlalchemy(db))
    shown = everything_shown(checked_app, logs)
    with app.app_context():
        db.engine.dispose()
    assert_hidden(shown)
    assert "'password': '***'" in shown


# -- tcp and disk: a target with a credential is refused at setup, without echoing it -----


@pytest.mark.parametrize(
    "host",
    [
        f"admin:{PASSWORD}@127.0.0.1",
        f"redis://:{PASSWORD}@127.0.0.1",
        f"127.0.0.1/?token={TOKEN}",
        "127.0.0.1:6379",
    ],
)
def test_tcp_refuses_a_host_with_a_credential(host: str) -> None:
    with pytest.raises(ValueError, match="host must be a host name or an IP address") as raised:
        checks.tcp(host, 6379)
    assert_hidden(str(raised.value))


def test_tcp_accepts_ipv6() -> None:
    checks.tcp("::1", 6379)  # the colons of an IPv6 address are no credential


@pytest.mark.parametrize(
    "path",
    [f"smb://admin:{PASSWORD}@127.0.0.1/share", f"//admin:{PASSWORD}@127.0.0.1/share"],
)
def test_disk_refuses_a_url(path: str) -> None:
    with pytest.raises(ValueError, match="path must be a local filesystem path") as raised:
        checks.disk(path, 0)
    assert_hidden(str(raised.value))
