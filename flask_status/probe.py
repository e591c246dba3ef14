"""Probe a status URL over HTTP and say in one line whether it is healthy.

Standard library only, for container images without curl (Docker ``HEALTHCHECK``).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

from .fields import check_seconds
from .outcome import one_line

#: Seconds the whole probe may take when no timeout is given.
DEFAULT_TIMEOUT = 5.0

#: Bytes of an unhealthy answer's body quoted in the message (which is capped again).
MAX_BODY_BYTES = 4096


@dataclass(frozen=True)
class ProbeResult:
    """Whether the status URL answered 2xx, and one line saying what happened."""

    healthy: bool
    message: str


def probe(url: str, timeout: float = DEFAULT_TIMEOUT) -> ProbeResult:
    """GET ``url``: healthy on a 2xx answer, unhealthy on any other answer or no answer.

    ``timeout`` (seconds, at most one day) bounds the whole probe: resolving the host,
    connecting, redirects and every read. A server that answers slowly, a byte at a time, is
    no answer. Redirects are followed.
    """
    seconds = check_seconds("timeout", timeout)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ProbeResult(
            False,
            f"bad URL {url!r}: expected an http:// or https:// URL, "
            "such as http://127.0.0.1:8000/api/status",
        )
    exchange = _Exchange()
    results: list[ProbeResult] = []
    # A socket timeout bounds each read, not their sum, and name resolution has none: the
    # exchange runs in a thread, waited for until the deadline.
    worker = threading.Thread(
        target=lambda: results.append(exchange.run(url, seconds)),
        name="flask-status-probe",
        daemon=True,
    )
    worker.start()
    worker.join(seconds)
    if not results:
        exchange.cut()  # ends the reads the worker is blocked in
        return _no_answer(url, seconds)
    return results[0]


def _status(code: int) -> str:
    """``503 Service Unavailable``: the standard phrase, whatever the server sent (servers
    differ: gunicorn sends ``SERVICE UNAVAILABLE``, hypercorn none)."""
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def _quoted_body(answer: HTTPError) -> str:
    """``": <body on one line>"``, or nothing when the body is empty or cannot be read."""
    try:
        with answer:
            body = answer.read(MAX_BODY_BYTES).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return ""
    text = one_line(body)
    return f": {text}" if text else ""


def _no_answer(url: str, timeout: float) -> ProbeResult:
    return ProbeResult(False, f"no answer from {url} within {timeout:g}s")


class _Exchange:
    """One probe's request, run in a worker thread, and the sockets it opened so that the
    probe can shut them at its deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._cut = False

    def run(self, url: str, timeout: float) -> ProbeResult:
        try:
            return self._request(url, timeout)
        except Exception as exc:  # the caller waits for a result: never leave it without one
            return ProbeResult(False, one_line(f"probe of {url} failed: {exc!r}"))

    def _request(self, url: str, timeout: float) -> ProbeResult:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        started = time.perf_counter()
        try:
            with self._opener().open(request, timeout=timeout) as response:
                code = response.status
        except HTTPError as exc:
            return ProbeResult(False, f"HTTP {_status(exc.code)} from {url}{_quoted_body(exc)}")
        except TimeoutError:  # socket.timeout is TimeoutError since Python 3.10
            return _no_answer(url, timeout)
        except URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                return _no_answer(url, timeout)
            return ProbeResult(False, f"cannot connect to {url}: {exc.reason}")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return ProbeResult(
                False, one_line(f"bad answer from {url}: {type(exc).__name__}: {exc}")
            )
        elapsed_ms = round((time.perf_counter() - started) * 1000)
        return ProbeResult(200 <= code < 300, f"HTTP {_status(code)} from {url} in {elapsed_ms} ms")

    def _opener(self) -> urllib.request.OpenerDirector:
        # Proxies from the environment are ignored: a health probe is meant for the app
        # itself, usually on 127.0.0.1, and a proxy in between would report on the proxy.
        return urllib.request.build_opener(
            urllib.request.ProxyHandler({}), _HTTPHandler(self), _HTTPSHandler(self)
        )

    def opened(self, sock: socket.socket) -> None:
        with self._lock:
            if not self._cut:
                self._sockets.append(sock)
                return
        _shut(sock)  # connected after the deadline

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    # shutdown, not close: a read blocked in another thread returns at once, and the file
    # descriptor cannot be reused under it. The plain socket's method, for TLS sockets too.
    with contextlib.suppress(OSError):  # already closed
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _TrackedHTTPConnection(http.client.HTTPConnection):
    """Reports its socket to the exchange once connected."""

    def __init__(self, *args: Any, exchange: _Exchange, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._exchange = exchange

    def connect(self) -> None:
        super().connect()
        self._exchange.opened(self.sock)


class _TrackedHTTPSConnection(_TrackedHTTPConnection, http.client.HTTPSConnection):
    pass


class _TrackingHandler(urllib.request.AbstractHTTPHandler):
    """Opens connections that report their sockets to the exchange."""

    def __init__(self, exchange: _Exchange) -> None:
        super().__init__()
        self._exchange = exchange

    def do_open(
        self, http_class: Any, req: urllib.request.Request, **http_conn_args: Any
    ) -> http.client.HTTPResponse:
        secure = issubclass(http_class, http.client.HTTPSConnection)
        tracked = _TrackedHTTPSConnection if secure else _TrackedHTTPConnection
        factory = functools.partial(tracked, exchange=self._exchange)
        return super().do_open(factory, req, **http_conn_args)


class _HTTPHandler(_TrackingHandler, urllib.request.HTTPHandler):
    pass


class _HTTPSHandler(_TrackingHandler, urllib.request.HTTPSHandler):
    pass
