"""Property: whatever mix of checks a route has, the answer is timely and tells the truth."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clients import MakeClient, timed_get
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_status import FlaskStatus

pytest_plugins = ["reliability_fixtures"]

URL = "/api/status"
MARGIN = 1.0  # generous: the machine is shared


@dataclass(frozen=True)
class Spec:
    """One generated field: how its check behaves and how it is registered."""

    asynchronous: bool
    behaviour: str  # "ok", "raise", "slow" (10-50 ms) or "hang" (until the example ends)
    timeout: float
    critical: bool
    slow_seconds: float


specs = st.builds(
    Spec,
    asynchronous=st.booleans(),
    behaviour=st.sampled_from(["ok", "raise", "slow", "hang"]),
    timeout=st.integers(50, 200).map(lambda ms: ms / 1000),
    critical=st.booleans(),
    slow_seconds=st.integers(10, 50).map(lambda ms: ms / 1000),
)


def make_check(spec: Spec, value: Any, released: threading.Event) -> Callable[[], Any]:
    if spec.asynchronous:

        async def async_check() -> Any:
            if spec.behaviour == "raise":
                raise RuntimeError(f"{value} failed")
            if spec.behaviour == "slow":
                await asyncio.sleep(spec.slow_seconds)
            while spec.behaviour == "hang" and not released.is_set():
                await asyncio.sleep(0.01)
            return value

        return async_check

    def sync_check() -> Any:
        if spec.behaviour == "raise":
            raise RuntimeError(f"{value} failed")
        if spec.behaviour == "slow":
            threading.Event().wait(spec.slow_seconds)
        if spec.behaviour == "hang":
            released.wait(20)
        return value

    return sync_check


@settings(
    max_examples=25,
    deadline=None,
    # make_client builds clients; it holds no state that an example could leave behind.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(specs, min_size=1, max_size=6))
def test_answer_is_timely_and_agrees_with_its_fields(
    make_client: MakeClient, field_specs: list[Spec]
) -> None:
    released = threading.Event()
    app = Flask(__name__)
    status = FlaskStatus(app)
    for index, spec in enumerate(field_specs):
        check = make_check(spec, f"field {index}", released)
        status.add_field(f"f{index}", check, timeout=spec.timeout, critical=spec.critical)
    try:
        timed = timed_get(make_client(app), URL)
    finally:
        released.set()

    assert timed.seconds < max(spec.timeout for spec in field_specs) + MARGIN
    body = timed.answer.json()
    assert set(body) == {f"f{index}" for index in range(len(field_specs))} | {"status"}
    critical_failed = other_failed = False
    for index, spec in enumerate(field_specs):
        field = body[f"f{index}"]
        ok = f"field {index}"
        timed_out = {"error": f"timed out after {spec.timeout:g}s"}
        expected: list[Any] = {
            # A quick check misses a 50 ms timeout only when the shared machine stalls, and a
            # 10-50 ms one may miss it anyway: both may time out, but only after their timeout.
            "ok": [ok, timed_out],
            "slow": [ok, timed_out],
            "raise": [{"error": f"RuntimeError: field {index} failed"}],
            "hang": [timed_out],
        }[spec.behaviour]
        assert field in expected, (spec, field)
        if field == timed_out:
            assert timed.seconds >= spec.timeout, (spec, timed.seconds)
        if field != ok:
            critical_failed |= spec.critical
            other_failed |= not spec.critical
    if critical_failed:
        assert (timed.answer.status, body["status"]) == (503, "DOWN")
    elif other_failed:
        assert (timed.answer.status, body["status"]) == (200, "DEGRADED")
    else:
        assert (timed.answer.status, body["status"]) == (200, "OK")
