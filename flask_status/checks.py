"""Ready-made checks for common dependencies, each a factory returning a field for ``add_field``.

A check returns what it observed (``{"latency_ms": 1.2}``) and raises when the dependency is
unhealthy; the status route shows the error in that field. Arguments are validated when the
factory is called, at setup time. No check shows a credential of its target (a password, a
token in a query string) in an error or a log line: see :mod:`flask_status.redact`. Optional
packages are imported by the factory that needs them, so ``import flask_status.checks`` works
without any of them::

    status.add_field("database", checks.sqlalchemy(db))
    status.add_field("cache", checks.redis(redis_client))
    status.add_field("payments", checks.http("https://payments.internal/health"))
    status.add_field("queue", checks.tcp("rabbitmq", 5672))
    status.add_field("certificate", checks.tls_certificate("payments.example.com"))
    status.add_field("disk", checks.disk("/var/lib/app", min_free=1 << 30))
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
import shutil
import ssl
import time
from collections.abc import Awaitable, Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import anyio
from anyio.streams.tls import TLSAttribute, TLSStream

from .extras import requires_extra
from .fields import check_seconds
from .outcome import Degraded, describe
from .redact import Redactor, redact_url

#: What a check reports on success.
Observed = dict[str, Any]
SyncCheck = Callable[[], Observed]
AsyncCheck = Callable[[], Awaitable[Observed]]


class CheckFailed(Exception):
    """A dependency answered, but not as a healthy one does."""


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


#: No cap on a text that is still to be scrubbed (the route caps what it shows).
_UNLIMITED = 1 << 30


def _reason(exc: BaseException) -> str:
    """The deepest cause that has a message: it says why (``Connection refused``), where
    the wrappers above it only say that connecting failed. Not shortened: secrets are masked
    in the whole text before anything cuts it."""
    reason: BaseException = exc
    seen = {id(exc)}
    cause = _cause_of(exc)
    while cause is not None and id(cause) not in seen:  # a chain set by hand may loop
        seen.add(id(cause))
        if isinstance(cause, Exception) and str(cause):  # not a cancellation
            reason = cause
        cause = _cause_of(cause)
    return describe(reason, limit=_UNLIMITED)


def _cause_of(exc: BaseException) -> BaseException | None:
    # The implicit context counts even when suppressed: httpcore hides the OSError that says
    # "Connection refused" that way, and here the chain is all from one connection attempt.
    return exc.__cause__ or exc.__context__


# -- credentials ---------------------------------------------------------------------------


@contextmanager
def _masking(secrets: Redactor) -> Iterator[None]:
    """Let out no exception whose text, or the text of one chained to it, holds a secret.

    Such an exception becomes a :class:`CheckFailed` with the secrets masked and without the
    chain: the traceback that the route logs prints every chained exception's text.
    """
    try:
        yield
    except Exception as exc:
        if not secrets or not any(secrets.reveals(text) for text in _chain_texts(exc)):
            raise
        text = str(exc) if isinstance(exc, CheckFailed) else describe(exc, limit=_UNLIMITED)
        raise CheckFailed(secrets.scrub(text)) from None


def _chain_texts(exc: BaseException) -> Iterator[str]:
    """The texts a traceback of ``exc`` prints: each chained exception's message and notes."""
    pending, seen = [exc], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        try:
            text = str(current)
        except BaseException:  # a broken __str__: a traceback cannot print it either
            text = ""
        yield text
        yield from (str(note) for note in getattr(current, "__notes__", ()))
        pending.extend(getattr(current, "exceptions", ()))  # exception groups
        pending.extend(chained for chained in (current.__cause__, current.__context__) if chained)


class _LogMasking(logging.Filter):
    """Masks the secrets of ``http`` checks' URLs in httpx's log: it logs each request's URL,
    password and query string included, at INFO."""

    def __init__(self) -> None:
        super().__init__()
        self._redactors: dict[str, Redactor] = {}  # by URL: a check built twice adds one

    def add(self, url: str, secrets: Redactor) -> None:
        self._redactors[url] = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record: logging reports it when it formats it
            return True
        masked = message
        for secrets in list(self._redactors.values()):
            masked = secrets.scrub(masked)
        if masked != message:
            record.msg, record.args = masked, None
        return True


_httpx_log_masking = _LogMasking()


# -- databases ---------------------------------------------------------------------------


def sqlalchemy(engine: Any) -> SyncCheck:
    """Run ``SELECT 1`` on a SQLAlchemy ``Engine`` or a Flask-SQLAlchemy ``db``.

    With a ``db``, its engine is looked up on each run, in the run's own app context.
    Reports ``{"latency_ms": ...}``, checking a connection out of the engine's pool included
    (the pool opens one when it has none idle).
    """
    with requires_extra("checks.sqlalchemy()", "sqlalchemy"):
        from sqlalchemy import text
        from sqlalchemy.engine import Engine

    get_engine: Callable[[], Engine]
    if isinstance(engine, Engine):
        fixed = engine

        def get_engine() -> Engine:
            return fixed

    elif _is_flask_sqlalchemy(engine):
        db = engine

        def get_engine() -> Engine:
            return db.engine  # type: ignore[no-any-return]

    else:
        raise TypeError(
            "engine must be a sqlalchemy Engine or a Flask-SQLAlchemy db, "
            f"got {type(engine).__name__}"
        )
    select_one = text("SELECT 1")

    def check_sqlalchemy() -> Observed:
        started = time.perf_counter()
        current = get_engine()
        with _masking(_engine_secrets(current)), current.connect() as connection:
            connection.execute(select_one).scalar_one()
        return {"latency_ms": _elapsed_ms(started)}

    return check_sqlalchemy


def _engine_secrets(engine: Any) -> Redactor:
    """The password and query values of the engine's URL (a driver may echo its DSN)."""
    url = engine.url
    return Redactor(urls=[url.render_as_string(hide_password=False)], secrets=[url.password])


def _is_flask_sqlalchemy(value: Any) -> bool:
    try:
        from flask_sqlalchemy import SQLAlchemy
    except ImportError:
        return False
    return isinstance(value, SQLAlchemy)


def redis(client: Any) -> SyncCheck | AsyncCheck:
    """PING a redis server through ``client``; reports ``{"latency_ms": ...}``.

    A ``redis.Redis`` (or ``RedisCluster``) gives a sync check, run in a worker thread; a
    ``redis.asyncio.Redis`` (or its ``RedisCluster``) gives an async check, run on the event
    loop. An asyncio client's connections belong to the loop that opened them, so use one
    client per loop: under WSGI the checks' background loop, under ASGI the server's.
    """
    with requires_extra("checks.redis()", "redis"):
        import redis as redis_lib
        import redis.asyncio as redis_asyncio

    if isinstance(client, (redis_asyncio.Redis, redis_asyncio.RedisCluster)):
        async_client = client
        secrets = _redis_secrets(client)

        async def check_redis_async() -> Observed:
            started = time.perf_counter()
            with _masking(secrets):
                await async_client.ping()
            return {"latency_ms": _elapsed_ms(started)}

        return check_redis_async
    if isinstance(client, (redis_lib.Redis, redis_lib.RedisCluster)):
        sync_client = client
        secrets = _redis_secrets(client)

        def check_redis() -> Observed:
            started = time.perf_counter()
            with _masking(secrets):
                sync_client.ping()
            return {"latency_ms": _elapsed_ms(started)}

        return check_redis
    raise TypeError(
        f"client must be a redis.Redis or redis.asyncio.Redis client, got {type(client).__name__}"
    )


def _redis_secrets(client: Any) -> Redactor:
    """The password the client authenticates with: a server may echo what it was sent
    (``unknown command 'AUTH', with args beginning with: ...``)."""
    pool = getattr(client, "connection_pool", None)  # a cluster client has a nodes manager
    owner = pool if pool is not None else getattr(client, "nodes_manager", None)
    kwargs = getattr(owner, "connection_kwargs", None)
    password = kwargs.get("password") if isinstance(kwargs, dict) else None
    return Redactor(secrets=[password] if isinstance(password, str) else [])


# -- network -----------------------------------------------------------------------------


def http(
    url: str,
    expect_status: int | Collection[int] = 200,
    timeout: float | None = None,
) -> AsyncCheck:
    """GET ``url`` and fail unless the response status is ``expect_status`` (one or several).

    Redirects are not followed. ``timeout`` (seconds) bounds connecting and each read; left
    at ``None`` the field's timeout alone bounds the request. Reports
    ``{"status_code": ..., "latency_ms": ...}``.
    """
    with requires_extra("checks.http()", "http"):
        import httpx

    if not isinstance(url, str):
        raise TypeError(f"url must be a str, got {type(url).__name__}")
    shown = redact_url(url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url must be an absolute http:// or https:// URL, got {shown!r}")
    expected = _status_codes(expect_status)
    seconds = None if timeout is None else check_seconds("timeout", timeout)
    wanted = " or ".join(str(code) for code in sorted(expected))
    secrets = Redactor(urls=_httpx_forms(httpx, url))
    if secrets:
        _httpx_log_masking.add(url, secrets)
        logging.getLogger("httpx").addFilter(_httpx_log_masking)  # once: filters are a set

    async def check_http() -> Observed:
        started = time.perf_counter()
        with _masking(secrets):
            try:
                async with httpx.AsyncClient(timeout=seconds, follow_redirects=False) as client:
                    response = await client.get(url)
            except httpx.TimeoutException as exc:  # only raised when ``timeout`` is set
                raise CheckFailed(
                    f"GET {shown} timed out after {seconds:g}s ({type(exc).__name__})"
                ) from exc
            except httpx.TransportError as exc:
                raise CheckFailed(secrets.scrub(f"GET {shown} failed: {_reason(exc)}")) from exc
        if response.status_code not in expected:
            raise CheckFailed(f"GET {shown} answered {response.status_code}, expected {wanted}")
        return {"status_code": response.status_code, "latency_ms": _elapsed_ms(started)}

    return check_http


def _httpx_forms(httpx: Any, url: str) -> list[str]:
    """``url`` as given and as httpx prints it (lower-case host, no default port)."""
    try:
        return [url, str(httpx.URL(url))]
    except httpx.InvalidURL:  # reported by the request itself
        return [url]


def _status_codes(expect_status: Any) -> frozenset[int]:
    codes = [expect_status] if isinstance(expect_status, int) else expect_status
    if isinstance(codes, (str, bytes)) or not isinstance(codes, Collection) or not codes:
        raise TypeError("expect_status must be an HTTP status code or a collection of them")
    for code in codes:
        if isinstance(code, bool) or not isinstance(code, int):
            raise TypeError(f"expect_status must hold ints, got {code!r}")
        if not 100 <= code <= 599:
            raise ValueError(f"expect_status must be HTTP status codes (100-599), got {code}")
    return frozenset(codes)


def tcp(host: str, port: int) -> AsyncCheck:
    """Open (and close) a TCP connection to ``host:port``; reports ``{"latency_ms": ...}``."""
    _check_address(host, port)

    async def check_tcp() -> Observed:
        started = time.perf_counter()
        try:
            stream = await anyio.connect_tcp(host, port)
        except OSError as exc:
            raise CheckFailed(f"cannot connect to {host}:{port}: {_reason(exc)}") from exc
        latency_ms = _elapsed_ms(started)
        await stream.aclose()
        return {"latency_ms": latency_ms}

    return check_tcp


def _check_address(host: Any, port: Any) -> None:
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, got {type(host).__name__}")
    if not host:
        raise ValueError("host must be a non-empty str")
    if _not_a_host(host):
        # Not echoed: a URL or user:password@host given by mistake holds a credential.
        raise ValueError(
            "host must be a host name or an IP address, not a URL nor user:password@host"
        )
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, got {type(port).__name__}")
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be between 1 and 65535, got {port}")


def _not_a_host(host: str) -> bool:
    if any(char in host for char in "@/?#") or any(char.isspace() for char in host):
        return True
    if ":" not in host:
        return False
    try:  # only an IPv6 address may hold a colon
        ipaddress.IPv6Address(host)
    except ValueError:
        return True
    return False


_SECONDS_PER_DAY = 86400

#: What a failed verification says of the certificate, by OpenSSL's ``X509_V_ERR_*`` code.
_UNTRUSTED = "is not signed by a trusted CA"
_VERIFY_FAILURES = {
    9: "is not valid yet",  # CERT_NOT_YET_VALID
    10: "has expired",  # CERT_HAS_EXPIRED
    18: _UNTRUSTED,  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: _UNTRUSTED,  # SELF_SIGNED_CERT_IN_CHAIN
    20: _UNTRUSTED,  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: _UNTRUSTED,  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    62: "is issued for another name",  # HOSTNAME_MISMATCH
    64: "is issued for another name",  # IP_ADDRESS_MISMATCH
}

#: How a certificate's names are abbreviated, as ``openssl x509`` prints them.
_NAME_ATTRIBUTES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
}


def tls_certificate(
    host: str,
    port: int = 443,
    *,
    warn_days: int = 21,
    fail_days: int = 7,
    ca_file: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
) -> AsyncCheck:
    """Connect to ``host:port``, verify its TLS certificate and report when it expires.

    The certificate must verify against the system's trust store, or against the CA
    certificates of the PEM file ``ca_file`` alone, and name ``host``. Reports
    ``{"days_left": ..., "expires_at": ..., "issuer": ..., "subject": ..., "latency_ms": ...}``;
    raises :class:`~flask_status.Degraded` with fewer than ``warn_days`` whole days left, and
    fails with fewer than ``fail_days``, or when the handshake fails (an expired certificate
    does). ``timeout`` (seconds) bounds connecting and the handshake together; left at
    ``None`` the field's timeout alone bounds them.
    """
    _check_address(host, port)
    _check_days("warn_days", warn_days)
    _check_days("fail_days", fail_days)
    if warn_days <= fail_days:
        raise ValueError(
            f"warn_days must be greater than fail_days, got warn_days={warn_days} "
            f"and fail_days={fail_days}"
        )
    seconds = None if timeout is None else check_seconds("timeout", timeout)
    context = _verifying_context(ca_file)
    trusted = (
        "trusting the system's CAs; a private CA needs ca_file="
        if ca_file is None
        else f"trusting ca_file {os.fspath(ca_file)}"
    )
    target = f"{host}:{port}"

    async def check_tls_certificate() -> Observed:
        started = time.perf_counter()
        certificate = await _peer_certificate(host, port, context, seconds, trusted)
        latency_ms = _elapsed_ms(started)
        expires = ssl.cert_time_to_seconds(str(certificate["notAfter"]))
        days_left = math.floor((expires - time.time()) / _SECONDS_PER_DAY)
        expires_at = datetime.fromtimestamp(expires, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        observed = {
            "days_left": days_left,
            "expires_at": expires_at,
            "issuer": _certificate_name(certificate.get("issuer", ())),
            "subject": _certificate_name(certificate.get("subject", ())),
            "latency_ms": latency_ms,
        }
        expiry = f"the certificate of {target} expires in {_days(days_left)} ({expires_at})"
        if days_left < fail_days:
            raise CheckFailed(f"{expiry}, under fail_days {fail_days}")
        if days_left < warn_days:
            raise Degraded(f"{expiry}, under warn_days {warn_days}", observed)
        return observed

    return check_tls_certificate


async def _peer_certificate(
    host: str, port: int, context: ssl.SSLContext, seconds: float | None, trusted: str
) -> dict[str, Any]:
    """Connect, verify the certificate in the handshake, and return it as ``getpeercert()``
    does; a failure raises :class:`CheckFailed` saying which step failed and why."""
    target = f"{host}:{port}"
    step = f"cannot connect to {target}"
    try:
        with anyio.fail_after(seconds) as deadline:
            stream = await anyio.connect_tcp(host, port)
            step = f"TLS handshake with {target} failed"
            try:
                tls = await TLSStream.wrap(stream, hostname=host, ssl_context=context)
            except BaseException:
                await anyio.aclose_forcefully(stream)
                raise
    except ssl.SSLCertVerificationError as exc:
        failure = _VERIFY_FAILURES.get(exc.verify_code)
        if failure is None:
            raise CheckFailed(f"{step}: {_reason(exc)}") from exc
        text = f"the certificate of {target} {failure}: {exc.verify_message}"
        raise CheckFailed(f"{text} ({trusted})" if failure == _UNTRUSTED else text) from exc
    except (OSError, anyio.BrokenResourceError) as exc:  # ssl.SSLError is an OSError
        if isinstance(exc, TimeoutError) and deadline.cancelled_caught:
            raise CheckFailed(f"{step}: no answer within {seconds:g}s") from None
        raise CheckFailed(f"{step}: {_reason(exc)}") from exc
    certificate = tls.extra(TLSAttribute.peer_certificate)
    await anyio.aclose_forcefully(tls)
    if not certificate:  # typed optional, yet a verified handshake always has one
        raise CheckFailed(f"{target} presented no certificate")
    return certificate


def _check_days(name: str, days: Any) -> None:
    if isinstance(days, bool) or not isinstance(days, int):
        raise TypeError(f"{name} must be an int number of days, got {type(days).__name__}")
    if days < 0:
        raise ValueError(f"{name} must be >= 0, got {days}")


def _verifying_context(ca_file: Any) -> ssl.SSLContext:
    """A client context that verifies the certificate and its host name, trusting the
    system's CAs or, given ``ca_file``, that file's alone. Loaded once, at setup."""
    if ca_file is None:
        return ssl.create_default_context()
    if not isinstance(ca_file, (str, os.PathLike)):
        raise TypeError(f"ca_file must be a str or a path, got {type(ca_file).__name__}")
    try:
        return ssl.create_default_context(cafile=os.fspath(ca_file))
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ValueError(
            f"ca_file must be a PEM file of CA certificates, {os.fspath(ca_file)!r}: "
            f"{describe(exc)}"
        ) from exc


def _certificate_name(name: Any) -> str:
    """A certificate's subject or issuer as ``openssl x509`` prints it: ``C=US, O=..., CN=...``."""
    return ", ".join(
        f"{_NAME_ATTRIBUTES.get(attribute, attribute)}={value}"
        for relative_name in name
        for attribute, value in relative_name
    )


def _days(days: int) -> str:
    return "1 day" if days == 1 else f"{days} days"


# -- local resources ---------------------------------------------------------------------


#: A URL (``smb://...``) or a network path with a userinfo (``//user:password@host/share``).
_URL_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://|//[^/]*@")


def disk(path: str | os.PathLike[str], min_free: int) -> SyncCheck:
    """Fail when the filesystem holding ``path`` has less than ``min_free`` bytes free.

    Reports ``{"free_bytes": ..., "total_bytes": ...}``: the bytes an unprivileged process
    may still write, as ``shutil.disk_usage`` counts them.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or a path, got {type(path).__name__}")
    if not os.fspath(path):
        raise ValueError("path must not be empty")
    shown = os.fspath(path)
    if isinstance(shown, str) and _URL_LIKE.match(shown):
        # Not echoed: such a path may hold a credential, and a URL is no local filesystem.
        raise ValueError("path must be a local filesystem path, not a URL nor //user@host/...")
    if isinstance(min_free, bool) or not isinstance(min_free, int):
        raise TypeError(f"min_free must be an int number of bytes, got {type(min_free).__name__}")
    if min_free < 0:
        raise ValueError(f"min_free must be >= 0, got {min_free}")

    def check_disk() -> Observed:
        usage = shutil.disk_usage(path)
        if usage.free < min_free:
            raise CheckFailed(
                f"{usage.free} bytes free on {os.fspath(path)}, below min_free {min_free}"
            )
        return {"free_bytes": usage.free, "total_bytes": usage.total}

    return check_disk
