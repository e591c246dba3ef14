"""Probe a status URL over HTTP and say in one line whether it is healthy.

Standard library only, for container images without curl (Docker ``HEALTHCHECK``).
"""

from __future__ import annotations

import http.client
import socket
import time
import urllib.request
from dataclasses import dataclass
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

from .outcome import one_line

#: Seconds to wait for connecting and for each read when none is given.
DEFAULT_TIMEOUT = 5.0

#: Bytes of an unhealthy answer's body quoted in the message (which is capped again).
MAX_BODY_BYTES = 4096

# Proxies from the environment are ignored: a health probe is meant for the app itself,
# usually on 127.0.0.1, and a proxy in between would report on the proxy instead.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class ProbeResult:
    """Whether the status URL answered 2xx, and one line saying what happened."""

    healthy: bool
    message: str


def probe(url: str, timeout: float = DEFAULT_TIMEOUT) -> ProbeResult:
    """GET ``url``: healthy on a 2xx answer, unhealthy on any other answer or no answer.

    ``timeout`` bounds connecting and each read of the answer, not the whole exchange.
    Redirects are followed.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ProbeResult(False, f"bad URL {url!r}: expected http://HOST[:PORT]/PATH")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    started = time.perf_counter()
    try:
        with _opener.open(request, timeout=timeout) as response:
            code, reason = response.status, response.reason
    except HTTPError as exc:
        return ProbeResult(False, f"HTTP {exc.code} {exc.reason} from {url}{_quoted_body(exc)}")
    except TimeoutError:
        return _no_answer(url, timeout)
    except URLError as exc:
        if isinstance(exc.reason, (TimeoutError, socket.timeout)):
            return _no_answer(url, timeout)
        return ProbeResult(False, f"cannot connect to {url}: {exc.reason}")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return ProbeResult(False, one_line(f"bad answer from {url}: {type(exc).__name__}: {exc}"))
    elapsed_ms = round((time.perf_counter() - started) * 1000)
    return ProbeResult(200 <= code < 300, f"HTTP {code} {reason} from {url} in {elapsed_ms} ms")


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
