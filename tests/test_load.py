"""Load against a real uvicorn process serving StatusMiddleware(WsgiToAsgi(app), app)."""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from load_app import EXPECTED
from servers import UvicornProcess

CONCURRENCY = 100
REQUESTS = 2000
WARM_UP = 400
RSS_GROWTH_LIMIT_KIB = 10 * 1024

#: The payload's top-level status on each status route.
EXPECTED_STATUS = {"/healthy": "OK", "/degraded": "DEGRADED", "/down": "DOWN", "/slow": "OK"}


@dataclass(frozen=True)
class Result:
    path: str
    status: int | None  # None: the request failed at the transport level
    body: bytes
    seconds: float
    error: str | None = None


#: A request's context variables can leak into the next request of its connection under
#: asyncio (CPython issue 140947); asgiref's WsgiToAsgi then fails some requests it serves with
#: a 500, unless uvicorn runs each request in a fresh context. Status routes must not care.
RESET_CONTEXTVARS = "--reset-contextvars"


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., UvicornProcess]]:
    """Starts uvicorn with the given options; every server started is stopped at teardown."""
    started: list[UvicornProcess] = []

    def start(*options: str) -> UvicornProcess:
        log_path = tmp_path / f"uvicorn-{len(started)}.log"
        process = UvicornProcess("load_app:asgi_app", Path(__file__).parent, log_path, *options)
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.stop()


def load(port: int, routes: Collection[str], count: int) -> list[Result]:
    """``count`` GETs over ``routes`` from CONCURRENCY threads, one keep-alive connection each."""
    paths = list(itertools.islice(itertools.cycle(routes), count))
    local = threading.local()
    connections: list[http.client.HTTPConnection] = []
    lock = threading.Lock()

    def fetch(path: str) -> Result:
        connection = getattr(local, "connection", None)
        if connection is None:
            connection = local.connection = http.client.HTTPConnection(
                "127.0.0.1", port, timeout=10
            )
            with lock:
                connections.append(connection)
        started = time.monotonic()
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            return Result(path, None, b"", time.monotonic() - started, repr(exc))
        return Result(path, response.status, body, time.monotonic() - started)

    try:
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            return list(pool.map(fetch, paths, timeout=60))
    finally:
        for connection in connections:
            connection.close()


def check_answers(results: list[Result]) -> None:
    transport_errors = [result for result in results if result.error is not None]
    assert not transport_errors, transport_errors[:5]
    assert not [result for result in results if result.status == 500]
    for result in results:
        assert result.status == EXPECTED[result.path], result
        if result.path in EXPECTED_STATUS:
            assert json.loads(result.body)["status"] == EXPECTED_STATUS[result.path], result
        else:
            assert result.body == b"hello"


@pytest.mark.parametrize(
    ("options", "routes"),
    [
        pytest.param((RESET_CONTEXTVARS,), list(EXPECTED), id="every route"),
        pytest.param((), list(EXPECTED_STATUS), id="status routes, default options"),
    ],
)
def test_uvicorn_under_load_answers_every_request_correctly(
    start_server: Callable[..., UvicornProcess], options: tuple[str, ...], routes: list[str]
) -> None:
    server = start_server(*options)
    check_answers(load(server.port, routes, WARM_UP))
    rss_before = server.rss_kib()

    started = time.monotonic()
    results = load(server.port, routes, REQUESTS)
    duration = time.monotonic() - started
    rss_after = server.rss_kib()

    check_answers(results)
    assert Counter(result.path for result in results) == {
        path: REQUESTS // len(routes) for path in routes
    }
    assert duration < 60
    assert rss_after <= rss_before + RSS_GROWTH_LIMIT_KIB
    milliseconds = sorted(round(result.seconds * 1000) for result in results)
    p50, p99 = milliseconds[REQUESTS // 2], milliseconds[REQUESTS * 99 // 100]
    print(
        f"load over {routes}: {REQUESTS} requests at concurrency {CONCURRENCY} in "
        f"{duration:.2f}s ({REQUESTS / duration:.0f}/s), latency p50 {p50} ms p99 {p99} ms "
        f"max {milliseconds[-1]} ms, RSS {rss_before} KiB -> {rss_after} KiB"
    )
