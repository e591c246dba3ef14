"""The scenarios on real servers: uvicorn and gunicorn processes, and the load put on them.

Each server listens on a free port of 127.0.0.1, runs in a session of its own, writes its output
to a log under ``.venvs/logs/`` and is stopped when its scenario ends.

The servers bind their port themselves, as users run them. (Handed an open socket with
``--fd``, uvicorn takes it for a Unix socket and leaves ``TCP_NODELAY`` off, so that on
kept-alive connections every answer waits 40 ms for the client's delayed ACK.)
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import peers
from apps import BARE_URL, URL, Fields

HERE = Path(__file__).resolve().parent
LOGS = peers.VENVS / "logs"

#: wrk's connections, kept alive, all busy at once.
CONNECTIONS = 32
#: How long a server may take to answer its first request.
START_SECONDS = 20

#: The command line of a server listening on the given port of 127.0.0.1.
Command = Callable[[int], list[str]]

T = TypeVar("T")

# Requests to 127.0.0.1 never go through a proxy, whatever the environment says.
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))

#: The process of each running server, by its base URL: its CPU time is read under load.
_PIDS: dict[str, int] = {}


class BenchError(Exception):
    """The benchmark itself broke (a worker or server died, a route answered wrongly)."""


# -- servers -------------------------------------------------------------------------------


def uvicorn(
    app: str, fields: Fields, log: str, lifespan: str = "auto"
) -> AbstractContextManager[str]:
    """uvicorn serving ``asgi_app``'s ``app``, checking ``fields``; yields its base URL.

    Every app runs with ``--reset-contextvars``: without it, on kept-alive connections,
    ``WsgiToAsgi`` fails about half of the requests to Flask routes. ``lifespan="on"`` makes
    an app that fails its lifespan startup fail the benchmark.
    """

    def command(port: int) -> list[str]:
        return [
            *(sys.executable, "-m", "uvicorn", "asgi_app:create", "--factory"),
            *("--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port)),
            *("--reset-contextvars", "--lifespan", lifespan),
            *("--no-access-log", "--log-level", "warning"),
        ]

    environment = {"BENCH_APP": app, "BENCH_FIELDS": json.dumps(asdict(fields))}
    return serving(log, command, URL, environment)


@contextmanager
def uvicorns(apps: Iterable[str], fields: Fields, log: str) -> Iterator[dict[str, str]]:
    """A :func:`uvicorn` per app of ``apps``, each checking ``fields`` and logging to
    ``<log>-<app>``, all at once; yields the URL of each one's status route."""
    with ExitStack() as stack:
        yield {app: stack.enter_context(uvicorn(app, fields, f"{log}-{app}")) + URL for app in apps}


def gunicorn_gevent() -> AbstractContextManager[str]:
    """``gunicorn -k gevent -w 1`` serving ``gevent_app``; yields its base URL."""
    return gunicorn("gevent_app:app", "gunicorn-gevent", "-k", "gevent", "-w", "1")


def gunicorn(
    app: str, log: str, *options: str, environment: dict[str, str] | None = None
) -> AbstractContextManager[str]:
    """gunicorn serving ``app`` with ``options``; yields its base URL once ``/bare`` answers."""

    def command(port: int) -> list[str]:
        return [
            *(sys.executable, "-m", "gunicorn", *options),
            *("--bind", f"127.0.0.1:{port}", "--graceful-timeout", "2", "--log-level", "warning"),
            *_no_control_socket(),
            app,
        ]

    return serving(log, command, BARE_URL, environment)


def _no_control_socket() -> list[str]:
    """gunicorn 25.1 and later open a control socket under $HOME unless told not to."""
    from gunicorn.config import KNOWN_SETTINGS

    return [flag for s in KNOWN_SETTINGS if s.name == "control_socket_disable" for flag in s.cli]


@contextmanager
def serving(
    log: str, command: Command, ready: str, environment: dict[str, str] | None = None
) -> Iterator[str]:
    """A server started on a free port, once its ``ready`` path answers 200; yields its base URL.

    Its output goes to ``LOGS/<log>.log``; it is stopped on exit.
    """
    LOGS.mkdir(parents=True, exist_ok=True)
    log_path = LOGS / f"{log}.log"
    port = free_port()
    with log_path.open("w") as output:
        server = subprocess.Popen(
            command(port),
            cwd=HERE,
            env={**os.environ, **(environment or {})},
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_for_ok(base + ready, server, log_path)
            _PIDS[base] = server.pid
            yield base
        finally:
            _PIDS.pop(base, None)
            _stop(server)


def cpu_seconds(pid: int) -> float:
    """User and system time of a process so far, all its threads (Linux: from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pid_serving(url: str) -> int | None:
    """The process of the server :func:`serving` started for ``url``, if any."""
    return next((pid for base, pid in _PIDS.items() if url.startswith(base + "/")), None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_ok(url: str, server: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise BenchError(f"the server exited; its log: {log_path}")
        if timed_get(url, timeout=1)[1] == 200:
            return
        time.sleep(0.1)
    raise BenchError(f"{url} did not answer 200 within {START_SECONDS} s; log: {log_path}")


def _stop(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's session; SIGKILL if it is still there 10 s later."""
    for signal_number in (signal.SIGTERM, signal.SIGKILL):
        with suppress(ProcessLookupError):
            os.killpg(server.pid, signal_number)
        with suppress(subprocess.TimeoutExpired):
            server.wait(timeout=10)
            return


def timed_get(url: str, timeout: float) -> tuple[float, int | str]:
    """How long a GET of ``url`` took, on a connection of its own, and its status code (or the
    error that came instead)."""
    sent = time.perf_counter()
    try:
        with _direct.open(url, timeout=timeout) as response:
            response.read()
            status: int | str = response.status
    except urllib.error.HTTPError as exc:
        exc.close()
        status = exc.code
    except OSError as exc:
        status = type(exc).__name__
    return time.perf_counter() - sent, status


def get_json(url: str) -> Any:
    """The JSON document at ``url``, which must answer 200."""
    with _direct.open(url, timeout=10) as response:
        return json.load(response)


# -- load ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """What wrk measured in one round."""

    rate: float  # requests/s
    p50: float  # latency, seconds
    p99: float
    #: CPU seconds of the server's process (all its threads) per request answered, where
    #: :func:`serving` started it (the process it started: a gunicorn's arbiter, not workers)
    cpu_per_request: float | None = None


def alternate(
    wrk: str, urls: dict[str, str], rounds: int, seconds: int, connections: int = CONNECTIONS
) -> dict[str, list[Load]]:
    """``rounds`` rounds of wrk's load on every URL in turn, each round starting one URL later.

    Every URL gets a one-second warm-up first.
    """
    return interleave(
        urls,
        rounds,
        lambda url: load(wrk, url, seconds, connections),
        warm_up=lambda url: load(wrk, url, 1, connections),
    )


def interleave(
    urls: dict[str, str],
    rounds: int,
    measure: Callable[[str], T],
    warm_up: Callable[[str], object],
) -> dict[str, list[T]]:
    """``rounds`` rounds of ``measure(url)`` on every URL in turn, each round starting one URL
    later, after ``warm_up(url)`` of each."""
    for url in urls.values():
        warm_up(url)
    names = list(urls)
    results: dict[str, list[T]] = {name: [] for name in names}
    for round_number in range(rounds):
        for offset in range(len(names)):
            name = names[(round_number + offset) % len(names)]
            results[name].append(measure(urls[name]))
    return results


def load(wrk: str, url: str, seconds: int, connections: int = CONNECTIONS) -> Load:
    """wrk's measure of ``url`` over ``seconds``, with ``connections`` kept-alive connections,
    and the CPU time its server spent meanwhile, per request.

    Any answer other than 2xx, and any socket error, breaks the benchmark.
    """
    command = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    pid = _pid_serving(url)
    cpu_started = cpu_seconds(pid) if pid is not None else 0.0
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - cpu_started if pid is not None else None
    if "Non-2xx" in output or "Socket errors" in output:
        raise BenchError(f"{url} answered errors under load:\n{output}")
    answered = int(_find(r"(\d+) requests in", output))
    return Load(
        float(_find(r"Requests/sec:\s+([\d.]+)", output)),
        _duration(_find(r"\s50%\s+(\S+)", output)),
        _duration(_find(r"\s99%\s+(\S+)", output)),
        cpu / answered if cpu is not None and answered else None,
    )


def _find(pattern: str, output: str) -> str:
    found = re.search(pattern, output)
    if not found:
        raise BenchError(f"no {pattern!r} in wrk's output:\n{output}")
    return found.group(1)


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _duration(text: str) -> float:
    """Seconds of one of wrk's durations: ``812.00us``, ``1.25ms``, ``2.01s``."""
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not found:
        raise BenchError(f"wrk's duration {text!r} not understood")
    return float(found.group(1)) * _UNITS[found.group(2)]


# -- bursts --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One request of a burst: how long its answer took, and its status code."""

    seconds: float
    status: int


def burst(url: str, count: int, timeout: float = 10.0) -> list[Answer]:
    """``count`` GETs of ``url`` sent at once, each on a connection of its own.

    The connections are opened first, so that only the requests are timed: each from the moment
    it is written to the end of its answer (the server closes the connection after it).
    """
    return asyncio.run(asyncio.wait_for(_burst(url, count), timeout))


async def _burst(url: str, count: int) -> list[Answer]:
    parts = urllib.parse.urlsplit(url)
    request = (
        f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
    ).encode()
    connections = [await asyncio.open_connection(parts.hostname, parts.port) for _ in range(count)]
    try:
        return list(await asyncio.gather(*(_ask(*pair, request) for pair in connections)))
    finally:
        for _, writer in connections:
            writer.close()


async def _ask(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> Answer:
    sent = time.perf_counter()
    writer.write(request)
    status_line = await reader.readline()
    await reader.read()  # the rest of the answer, up to the server's close
    if not status_line:
        raise BenchError("the server closed a connection of the burst without answering")
    return Answer(time.perf_counter() - sent, int(status_line.split()[1]))
