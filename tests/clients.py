"""Clients that call a Flask app the two ways it is served: WSGI, and ASGI through
StatusMiddleware (driven in-process, on an event loop thread as a server would)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import anyio
from asgiref.wsgi import WsgiToAsgi
from flask import Flask

from flask_status.asgi import StatusMiddleware

#: Seconds any single request of a test may take before the test gives up on it.
REQUEST_LIMIT = 30.0


@dataclass(frozen=True)
class Answer:
    """An HTTP answer, whichever way the app was called."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON, rejecting ``NaN`` and ``Infinity`` as strict parsers do."""
        return json.loads(self.body, parse_constant=_reject_constant)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class Client(Protocol):
    def get(self, url: str, headers: Mapping[str, str] | None = None) -> Answer: ...


class WsgiClient:
    """Flask's test client: the app's WSGI interface, in the calling thread."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def get(self, url: str, headers: Mapping[str, str] | None = None) -> Answer:
        # One test client per call: a test client is not meant to be shared between threads.
        response = self.app.test_client().get(url, headers=dict(headers or {}))
        return Answer(response.status_code, dict(response.headers), response.get_data())


async def asgi_get(asgi_app: Any, url: str, headers: Mapping[str, str] | None = None) -> Answer:
    """Call an ASGI app with one ``GET`` as an HTTP server would, and collect the answer."""
    parts = urlsplit(url)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": parts.path,
        "raw_path": parts.path.encode(),
        "root_path": "",
        "query_string": parts.query.encode(),
        "headers": [(b"host", b"localhost")]
        + [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
    }
    request_sent = False
    never = anyio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await never.wait()  # the client stays connected
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asgi_app(scope, receive, send)
    start = next(message for message in sent if message["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers_out = {name.decode().lower(): value.decode() for name, value in start["headers"]}
    return Answer(start["status"], headers_out, body)


def middleware(app: Flask) -> StatusMiddleware:
    """The app as served under an ASGI server."""
    return StatusMiddleware(WsgiToAsgi(app), app)


class LoopThread:
    """An asyncio event loop running in its own thread, as an ASGI server's loop does."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-asgi-loop")
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        """The thread the loop runs in."""
        return self._thread

    def start(self, coroutine: Any) -> concurrent.futures.Future[Any]:
        """Run ``coroutine`` on the loop; its future result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Any, timeout: float = REQUEST_LIMIT) -> Any:
        return self.start(coroutine).result(timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(REQUEST_LIMIT)
        self.loop.close()


class AsgiClient:
    """The app behind ``StatusMiddleware(WsgiToAsgi(app), app)``, called on a shared loop."""

    def __init__(self, app: Flask, loop: LoopThread) -> None:
        self.asgi_app = middleware(app)
        self.loop = loop

    def get(self, url: str, headers: Mapping[str, str] | None = None) -> Answer:
        return self.loop.run(asgi_get(self.asgi_app, url, headers))  # type: ignore[no-any-return]


MakeClient = Callable[[Flask], Client]


class Gate:
    """What hanging checks wait on: ``wait()`` blocks until ``release()`` (or 20 s)."""

    HANG = 20.0

    def __init__(self) -> None:
        self._event = threading.Event()
        self._waiting = 0
        self._lock = threading.Lock()

    def wait(self) -> bool:
        with self._lock:
            self._waiting += 1
        try:
            return self._event.wait(self.HANG)
        finally:
            with self._lock:
                self._waiting -= 1

    def release(self, settle: float = 0.2) -> None:
        """Let every waiting check return, and give the checks' threads time to finish with them."""
        self._event.set()
        deadline = time.monotonic() + REQUEST_LIMIT
        while self._waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(settle)


@dataclass(frozen=True)
class Timed:
    """One answer with when its request started and ended (``time.monotonic()``)."""

    started: float
    ended: float
    answer: Answer

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def timed_get(client: Client, url: str, headers: Mapping[str, str] | None = None) -> Timed:
    started = time.monotonic()
    answer = client.get(url, headers)
    return Timed(started, time.monotonic(), answer)


def in_threads(count: int, work: Callable[[int], None]) -> list[threading.Thread]:
    """Run ``work(index)`` in ``count`` threads started together; returns them once all ended.

    An exception in a thread is re-raised here, so that a failing client fails the test.
    """
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            barrier.wait(REQUEST_LIMIT)
            work(index)
        except BaseException as exc:  # handed to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), name=f"client-{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(REQUEST_LIMIT * 4)
    assert not any(thread.is_alive() for thread in threads), "a client thread is stuck"
    if errors:
        raise errors[0]
    return threads
