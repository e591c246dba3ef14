"""A fleet of real gunicorn processes sharing results through a real redis-server."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import served_app
from conftest import RedisServer
from helpers import ServerProcess, http_fetch
from servers import gunicorn

#: Two gunicorn processes of four workers stand in for two pods.
PODS, WORKERS = 2, 4
CLIENTS = 20


@pytest.fixture
def executions(tmp_path: Path) -> Path:
    path = tmp_path / "executions"
    path.touch()
    return path


@pytest.fixture
def fleet(
    tmp_path: Path, redis_server: RedisServer, executions: Path
) -> Iterator[list[ServerProcess]]:
    with serving(tmp_path, redis_server, executions, "create_store_app()", PODS) as servers:
        yield servers


@contextmanager
def serving(
    tmp_path: Path, redis_server: RedisServer, executions: Path, factory: str, pods: int
) -> Iterator[list[ServerProcess]]:
    """``pods`` gunicorn processes of :data:`WORKERS` workers serving ``served_app:factory``."""
    env = {served_app.STORE_URL_ENV: redis_server.url, served_app.EXECUTIONS_ENV: str(executions)}
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                gunicorn(
                    f"served_app:{factory}",
                    tmp_path / f"pod{pod}.log",
                    workers=WORKERS,
                    env=env,
                )
            )
            for pod in range(pods)
        ]


def load(fleet: list[ServerProcess], seconds: float, during: object = None) -> list[int]:
    """Probes from :data:`CLIENTS` threads, spread over ``seconds``; every answer's status.

    Each answer must name the field healthy: whatever happens to the store, the checks go on.
    """
    statuses: list[int] = []
    errors: list[str] = []
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        while time.monotonic() < stop_at:
            reply = http_fetch(fleet[index % len(fleet)].port, "/api/status")
            statuses.append(reply.status)
            if reply.json()["database"] != "up":
                errors.append(reply.body.decode())
            time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    if callable(during):
        during()
    for thread in threads:
        thread.join(seconds + 30)
    assert errors == []
    return statuses


def execution_times(path: Path) -> list[float]:
    return sorted(float(line) for line in path.read_text().split())


def test_a_check_runs_once_per_cache_period_across_the_fleet(
    fleet: list[ServerProcess], executions: Path
) -> None:
    statuses = load(fleet, 6.0)

    assert set(statuses) == {200} and len(statuses) > 200
    times = execution_times(executions)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # Without the store, each of the 8 workers would run it every 2 s.
    assert len(times) <= 6.0 / served_app.STORE_CACHE_TTL + 2, times
    assert min(gaps, default=served_app.STORE_CACHE_TTL) > served_app.STORE_CACHE_TTL * 0.9


def test_redis_stopped_mid_load_then_restarted(
    fleet: list[ServerProcess], redis_server: RedisServer, executions: Path
) -> None:
    def outage() -> None:
        time.sleep(1.5)
        redis_server.stop()
        time.sleep(2.5)
        redis_server.start()

    statuses = load(fleet, 8.0, during=outage)

    assert set(statuses) == {200}  # DEGRADED while the store is down, never a failure
    resumed = [t for t in execution_times(executions) if t > time.time() - 2.5]
    assert len(resumed) <= 2  # shared again after one cache period


def test_a_background_check_runs_once_per_interval_and_no_worker_reads_stale(
    tmp_path: Path, redis_server: RedisServer, executions: Path
) -> None:
    factory = "create_background_store_app()"
    with serving(tmp_path, redis_server, executions, factory, pods=1) as one_pod:
        statuses = load(one_pod, 6.0)  # every answer "up": none "stale"

    assert set(statuses) == {200}
    # Once per interval for the four workers: about 7 in 6 s (without the store, 28).
    times = execution_times(executions)
    assert 5 <= len(times) <= 6.0 / served_app.STORE_INTERVAL + 3, times
