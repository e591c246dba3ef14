"""What checks can rely on from the anyio engine, under WSGI and under StatusMiddleware:
their deadline, anyio cancellation, calls back into the loop from a sync check."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import anyio.from_thread
import httpx
from clients import MakeClient
from conftest import HttpServer
from flask import Flask

from flask_status import FlaskStatus

pytest_plugins = ["reliability_fixtures"]

URL = "/api/status"


def test_an_async_check_sees_its_own_deadline(make_client: MakeClient) -> None:
    app = Flask(__name__)
    status = FlaskStatus(app)

    async def remaining() -> float:
        return anyio.current_effective_deadline() - anyio.current_time()

    status.add_field("short", remaining, timeout=0.5)
    status.add_field("long", remaining, timeout=3)

    body = make_client(app).get(URL).json()

    assert 0 < body["short"] <= 0.5
    assert 0.5 < body["long"] <= 3


def test_a_timed_out_async_check_is_cancelled_the_anyio_way(make_client: MakeClient) -> None:
    app = Flask(__name__)
    seen: list[str] = []
    finished = threading.Event()

    async def slow() -> str:
        try:
            await anyio.sleep(10)
        except anyio.get_cancelled_exc_class():
            seen.append("cancelled")
            raise
        finally:
            seen.append("finally")
            finished.set()
        return "never"

    FlaskStatus(app).add_field("slow", slow, timeout=0.1)

    answer = make_client(app).get(URL)

    assert answer.status == 503
    assert answer.json()["slow"] == {"error": "timed out after 0.1s"}
    assert finished.wait(5)
    assert seen == ["cancelled", "finally"]


def test_a_sync_check_may_call_back_into_the_loop(make_client: MakeClient) -> None:
    app = Flask(__name__)

    async def on_the_loop() -> str:
        await anyio.sleep(0)
        return "from the loop"

    def sync_check() -> str:
        return anyio.from_thread.run(on_the_loop)

    FlaskStatus(app).add_field("callback", sync_check)

    assert make_client(app).get(URL).json() == {"callback": "from the loop", "status": "OK"}


def test_a_check_can_hand_its_remaining_budget_to_its_http_client(
    make_client: MakeClient, http_server: HttpServer
) -> None:
    """The docs' example: the client gives up just before the field's deadline, so the field
    says why (a read timeout from the dependency) rather than only "timed out"."""
    app = Flask(__name__)
    client = httpx.AsyncClient()  # made once, at setup: it is not free to build

    async def payments() -> int:
        budget = anyio.current_effective_deadline() - anyio.current_time()
        response = await client.get(http_server.url("/hang"), timeout=budget * 0.8)
        return response.status_code

    FlaskStatus(app).add_field("payments", payments, timeout=0.5)

    started = time.monotonic()
    answer = make_client(app).get(URL)

    assert time.monotonic() - started < 0.5 + 1.0
    assert answer.status == 503
    assert answer.json()["payments"]["error"].startswith("ReadTimeout")


def test_sync_checks_keep_the_app_and_request_context(make_client: MakeClient) -> None:
    from flask import current_app, g, request

    app = Flask("context_app")
    status = FlaskStatus(app)

    @app.before_request
    def remember() -> None:
        g.user = request.headers.get("X-User", "nobody")

    def sync_check() -> dict[str, Any]:
        return {"app": current_app.name, "user": g.user, "path": request.path}

    async def async_check() -> dict[str, Any]:
        return {"app": current_app.name, "user": g.user, "path": request.path}

    status.add_field("sync", sync_check)
    status.add_field("async", async_check)

    body = make_client(app).get(URL, headers={"X-User": "alice"}).json()

    expected = {"app": "context_app", "user": "alice", "path": URL}
    assert body == {"sync": expected, "async": expected, "status": "OK"}


def test_a_field_out_of_single_flight_sees_its_own_request(make_client: MakeClient) -> None:
    """A shared run sees the request that started it; ``single_flight=False`` gives each
    request a run of its own, which sees that request."""
    from clients import in_threads
    from flask import request

    app = Flask(__name__)
    status = FlaskStatus(app, timeout=5)

    async def caller() -> str | None:
        await anyio.sleep(0.2)  # long enough for the concurrent requests to overlap
        return request.headers.get("X-Caller")

    status.add_field("shared", caller)
    status.add_field("own", caller, single_flight=False)
    client = make_client(app)
    bodies: dict[int, Any] = {}

    def probe(index: int) -> None:
        bodies[index] = client.get(URL, headers={"X-Caller": str(index)}).json()

    in_threads(8, probe)

    assert all(body["own"] == str(index) for index, body in bodies.items())
    shared = {body["shared"] for body in bodies.values()}
    assert len(shared) < len(bodies)  # several requests shared one run
