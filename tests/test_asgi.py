"""StatusMiddleware in a real uvicorn process: concurrency, and answers equal to the WSGI path."""

from __future__ import annotations

import threading
import time

import pytest
import status_app
from helpers import Fetch, Reply, UvicornServer

CONCURRENT_REQUESTS = 40


def test_concurrent_status_requests_do_not_serialise(asgi_server: UvicornServer) -> None:
    replies: list[Reply] = []
    sent = threading.Semaphore(0)
    lock = threading.Lock()

    def probe() -> None:
        # Counts as sent once the request is written, before the answer is read.
        reply = asgi_server.fetch("/api/status", on_sent=sent.release)
        with lock:
            replies.append(reply)

    threads = [threading.Thread(target=probe) for _ in range(CONCURRENT_REQUESTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    try:
        all_sent = all(sent.acquire(timeout=10) for _ in threads)
        with lock:
            answered_before_hello = len(replies)
        hello_started = time.perf_counter()
        hello = asgi_server.fetch("/hello")
        hello_seconds = time.perf_counter() - hello_started
    finally:
        for thread in threads:
            thread.join(timeout=15)
    total_seconds = time.perf_counter() - started

    assert all_sent
    assert answered_before_hello < CONCURRENT_REQUESTS, "the status requests were not in flight"
    assert hello.status == 200
    assert hello.body == b"hello"
    assert hello_seconds < 1.0
    # Serialised, 40 requests whose checks take 0.2 s would need 8 s.
    assert total_seconds < 3.0
    assert len(replies) == CONCURRENT_REQUESTS
    for reply in replies:
        assert reply.status == 200
        assert reply.json() == {
            "status": "OK",
            "version": "2.0.0",
            "sync_check": "ok",
            "async_check": "ok",
        }


SAME_ANSWER_CASES = {
    "healthy": ("GET", "/api/status", {}),
    "head": ("HEAD", "/api/status", {}),
    "down": ("GET", "/api/down", {}),
    "head-down": ("HEAD", "/api/down", {}),
    "timed-out": ("GET", "/api/hung", {}),
    "contexts": ("GET", "/ctx/async?q=1", {"X-User": "alice", "X-Probe": "abc"}),
    "aborted-by-before-request": ("GET", "/api/status", {"X-Throttle": "1"}),
    "rejected-by-authenticator": ("GET", "/private", {}),
    "edited-by-authenticator": ("GET", "/summary", {}),
    "wrong-method": ("POST", "/api/status", {}),
}
COMPARED_HEADERS = ("content-type", "cache-control", "x-served-by")


def allowed_methods(reply: Reply) -> set[str]:
    # Werkzeug lists methods in set order, which differs between processes.
    return {method.strip() for method in reply.headers.get("allow", "").split(",") if method}


def assert_same_answer(got: Reply, expected: Reply) -> None:
    assert got.status == expected.status
    assert got.body == expected.body
    for header in COMPARED_HEADERS:
        assert got.headers.get(header) == expected.headers.get(header), header
    assert allowed_methods(got) == allowed_methods(expected)


@pytest.mark.parametrize(
    ("method", "path", "headers"), SAME_ANSWER_CASES.values(), ids=SAME_ANSWER_CASES.keys()
)
def test_native_answer_equals_wsgi_answer(
    asgi_server: UvicornServer, wsgi_fetch: Fetch, method: str, path: str, headers: dict[str, str]
) -> None:
    expected = wsgi_fetch(path, method=method, headers=headers)

    got = asgi_server.fetch(path, method=method, headers=headers)

    assert_same_answer(got, expected)


def test_hooks_error_handler_and_headers_on_the_native_path(asgi_server: UvicornServer) -> None:
    healthy = asgi_server.fetch("/api/status")
    throttled = asgi_server.fetch("/api/status", headers={"X-Throttle": "1"})
    down = asgi_server.fetch("/api/down")

    assert healthy.status == 200
    assert healthy.headers["cache-control"] == "no-store"
    assert healthy.headers["content-type"] == "application/json"
    assert healthy.headers["x-served-by"] == status_app.APP_NAME

    assert throttled.status == 429
    assert throttled.json() == {"error": "throttled"}
    assert throttled.headers["x-served-by"] == status_app.APP_NAME

    assert down.status == 503
    assert down.headers["cache-control"] == "no-store"
    assert down.headers["content-type"] == "application/json"
    assert down.headers["x-served-by"] == status_app.APP_NAME
    assert down.json() == {
        "service": status_app.APP_NAME,
        "status": "DOWN",
        "database": status_app.REFUSED,
        "cache": "warm",
    }


@pytest.mark.parametrize(
    ("method", "path", "headers"), SAME_ANSWER_CASES.values(), ids=SAME_ANSWER_CASES.keys()
)
def test_plain_wsgi_to_asgi_answers_as_wsgi(
    plain_asgi_server: UvicornServer,
    wsgi_fetch: Fetch,
    method: str,
    path: str,
    headers: dict[str, str],
) -> None:
    expected = wsgi_fetch(path, method=method, headers=headers)

    got = plain_asgi_server.fetch(path, method=method, headers=headers)

    assert_same_answer(got, expected)
