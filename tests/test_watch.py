"""The live status stream, served by real servers to a real client (httpx)."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask
from helpers import TOKEN, ServerProcess
from servers import gunicorn, hypercorn, uvicorn
from watch_app import FLAG_ENV

from flask_status import FlaskStatus, watch

ASGI_APP = "watch_app:create_asgi_app()"
WSGI_APP = "watch_app:create_app()"
#: Each server's own grace for requests in flight, far past the 1 s a stream has to end in:
#: an end within it is the stream's own, not a grace period running out.
GRACE = "30"
#: A stream ends within this many seconds of SIGTERM, SIGINT or draining.
END_SECONDS = 1.0


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event: its name (``message`` by default) and data; or a comment."""

    name: str
    data: str
    at: float  # time.monotonic() when it was read

    def json(self) -> Any:
        return json.loads(self.data)


class Watcher:
    """A live status stream, read by httpx as its events come."""

    def __init__(self, port: int, path: str = "/api/status?watch", **headers: str) -> None:
        self._client = httpx.Client(timeout=httpx.Timeout(10.0))
        request = self._client.build_request(
            "GET", f"http://127.0.0.1:{port}{path}", headers=headers
        )
        self.response = self._client.send(request, stream=True)
        self._lines = self.response.iter_lines()

    @property
    def status(self) -> int:
        return self.response.status_code

    def next(self) -> Event | None:
        """The next event or comment; ``None`` once the stream has ended."""
        name, data = "message", []
        try:
            for line in self._lines:
                if line.startswith(":"):
                    return Event("comment", line[1:].strip(), time.monotonic())
                if line.startswith("event:"):
                    name = line.partition(":")[2].strip()
                elif line.startswith("data:"):
                    data.append(line.partition(":")[2].removeprefix(" "))
                elif not line and data:
                    return Event(name, "\n".join(data), time.monotonic())
        except httpx.RemoteProtocolError:  # the server closed the connection mid-stream
            pass
        return None

    def document(self) -> Any:
        """The data of the next status event (skipping comments)."""
        event = self.next()
        while event is not None and event.name == "comment":
            event = self.next()
        assert event is not None and event.name == "message", event
        return event.json()

    def rest(self) -> list[Event]:
        """Every event up to the end of the stream."""
        events = []
        while (event := self.next()) is not None:
            events.append(event)
        return events

    def close(self) -> None:
        self.response.close()
        self._client.close()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@pytest.fixture
def flag_file(tmp_path: Path) -> Path:
    path = tmp_path / "flag"
    path.write_text("up")
    return path


def watch_env(flag_file: Path, **config: Any) -> dict[str, str]:
    """The environment of a server of ``watch_app``: its flag file and ``STATUS_*`` config."""
    env = {FLAG_ENV: str(flag_file)}
    env.update(
        {f"WATCH_STATUS_{name.upper()}": json.dumps(value) for name, value in config.items()}
    )
    return env


def uvicorn_server(
    flag_file: Path, tmp_path: Path, app: str = ASGI_APP, **config: Any
) -> ServerProcess:
    return uvicorn(
        app.removesuffix("()"),
        tmp_path / "uvicorn.log",
        "--factory",
        "--reset-contextvars",
        env=watch_env(flag_file, **config),
    )


@pytest.fixture
def served(flag_file: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """``watch_app`` behind StatusMiddleware under uvicorn, details shown to everyone."""
    with uvicorn_server(flag_file, tmp_path, show_details="always") as server:
        yield server


def test_a_stream_sends_the_document_then_each_change_within_a_second_of_its_run(
    served: ServerProcess, flag_file: Path
) -> None:
    with Watcher(served.port) as watcher:
        assert watcher.status == 200
        headers = watcher.response.headers
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["cache-control"] == "no-store"
        assert headers["x-accel-buffering"] == "no"
        assert watcher.document() == {"status": "OK", "flag": "up", "version": "1.0"}

        flag_file.write_text("down")
        probe = served.fetch("/api/status")  # runs the check
        answered = time.monotonic()
        assert probe.status == 503
        event = watcher.next()
        assert event is not None and event.name == "message", event
        assert event.json() == {
            "status": "DOWN",
            "flag": {"error": "RuntimeError: the flag is down"},
            "version": "1.0",
        }
        assert event.at - answered < 1.0, f"seen {event.at - answered:.2f}s after the run"

        # Runs that change nothing send nothing: the next event is the next change.
        for _ in range(3):
            assert served.fetch("/api/status").status == 503
        flag_file.write_text("v2")
        assert served.fetch("/api/status").status == 200
        assert watcher.document() == {"status": "OK", "flag": "v2", "version": "1.0"}


def test_the_accept_header_asks_for_a_stream_too(served: ServerProcess) -> None:
    with Watcher(served.port, "/api/status/flag", accept="text/event-stream") as watcher:
        assert watcher.status == 200
        assert watcher.document() == {"status": "OK", "flag": "up"}


def test_fields_that_run_on_request_are_run_again_while_a_stream_watches(
    served: ServerProcess, flag_file: Path
) -> None:
    """With no request at all, the stream still sees the change (within the poll period)."""
    with Watcher(served.port) as watcher:
        assert watcher.document()["status"] == "OK"
        flag_file.write_text("down")
        assert watcher.document()["status"] == "DOWN"


def test_a_stream_shows_what_the_same_caller_would_see(flag_file: Path, tmp_path: Path) -> None:
    """``show_details="when_authorized"``: fields only for an authorized caller; an
    authenticator refuses the stream as it refuses the answer."""
    with uvicorn_server(flag_file, tmp_path, show_details="when_authorized") as server:
        with Watcher(server.port) as anonymous:
            assert anonymous.document() == {"status": "OK"}
        with Watcher(server.port, "/api/status?watch&token=s3cret") as authorized:
            assert authorized.document() == {"status": "OK", "flag": "up", "version": "1.0"}
        for url in ("/api/guarded", "/api/guarded-async"):
            with Watcher(server.port, f"{url}?watch") as refused:
                assert refused.status == 401
            with Watcher(server.port, f"{url}?watch", **TOKEN) as allowed:
                assert allowed.status == 200
                assert allowed.document() == {"status": "OK", "flag": "up"}


def test_max_watchers_then_503_and_a_client_that_leaves_frees_its_slot(
    flag_file: Path, tmp_path: Path
) -> None:
    with uvicorn_server(flag_file, tmp_path, max_watchers=2) as server:
        first, second = Watcher(server.port), Watcher(server.port)
        try:
            for watcher in (first, second):
                assert watcher.document()["status"] == "OK"
            with Watcher(server.port) as third:
                assert third.status == 503
                third.response.read()
                error = third.response.json()["error"]
                assert "max_watchers" in error
            assert server.fetch("/api/status").status == 200  # probes are not streams
            first.close()
            deadline = time.monotonic() + 5
            while True:
                with Watcher(server.port) as again:
                    if again.status == 200:
                        assert again.document()["status"] == "OK"
                        break
                assert time.monotonic() < deadline, "the slot of a client that left stays taken"
                time.sleep(0.05)
        finally:
            first.close()
            second.close()


@pytest.mark.parametrize("app", [ASGI_APP, "watch_app:create_wrapped_asgi_app()"])
def test_a_stream_ends_at_watch_max_seconds(flag_file: Path, tmp_path: Path, app: str) -> None:
    """Also where ``app.wsgi_app`` is wrapped, and the middleware serves it in threads."""
    server = uvicorn_server(flag_file, tmp_path, app, watch_max_seconds=1)
    with server, Watcher(server.port) as watcher:
        opened = time.monotonic()
        watcher.document()
        events = watcher.rest()
        lasted = time.monotonic() - opened
    assert [(event.name, event.json()) for event in events] == [("end", {"reason": "limit"})]
    assert 0.9 < lasted < 3, lasted


def test_a_stream_ends_when_the_process_drains(served: ServerProcess) -> None:
    with Watcher(served.port) as watcher:
        watcher.document()
        httpx.post(f"http://127.0.0.1:{served.port}/drain-now").raise_for_status()
        drained = time.monotonic()
        events = watcher.rest()
    assert [(event.name, event.json()) for event in events] == [("end", {"reason": "draining"})]
    assert events[-1].at - drained < END_SECONDS


# -- where a stream would hold a whole worker or the whole app: 406 -------------------------


def test_a_sync_worker_refuses_a_stream_unless_opted_in(flag_file: Path, tmp_path: Path) -> None:
    with gunicorn(WSGI_APP, tmp_path / "sync.log", env=watch_env(flag_file)) as server:
        with Watcher(server.port) as watcher:
            assert watcher.status == 406
            watcher.response.read()
            error = watcher.response.json()["error"]
        assert "watch_sync_workers=True" in error and "STATUS_WATCH_SYNC_WORKERS" in error
        assert server.fetch("/api/status").status == 200  # a plain answer is served
    opted_in = watch_env(flag_file, watch_sync_workers=True)
    server = gunicorn(WSGI_APP, tmp_path / "opted-in.log", env=opted_in)
    with server, Watcher(server.port) as watcher:
        assert watcher.status == 200
        assert watcher.document()["status"] == "OK"


def test_a_bare_wsgi_to_asgi_refuses_a_stream(flag_file: Path, tmp_path: Path) -> None:
    """asgiref's WsgiToAsgi alone runs the app in one thread: a stream would hold it all."""
    for app in ("watch_app:create_bare_asgi_app",):
        with uvicorn_server(flag_file, tmp_path, app) as server:
            with Watcher(server.port) as watcher:
                assert watcher.status == 406
                watcher.response.read()
                assert "StatusMiddleware" in watcher.response.json()["error"]
            assert server.fetch("/api/status").status == 200


# -- every stream ends within a second of SIGTERM or SIGINT, under every server form --------

SERVER_FORMS: dict[str, Callable[[Path, Mapping[str, str]], ServerProcess]] = {
    "uvicorn": lambda log, env: uvicorn(
        ASGI_APP.removesuffix("()"), log, "--factory", "--reset-contextvars",
        "--timeout-graceful-shutdown", GRACE, env=env,
    ),
    # As the README runs it: one worker process, which hears of the stop through an event of
    # hypercorn's, not a signal; and --workers 0, serving in the process the signal reaches.
    "hypercorn": lambda log, env: hypercorn(ASGI_APP, log, "--graceful-timeout", GRACE, env=env),
    "hypercorn-workers-0": lambda log, env: hypercorn(
        ASGI_APP, log, "--graceful-timeout", GRACE, "--workers", "0", env=env
    ),
    "gunicorn-uvicorn-worker": lambda log, env: gunicorn(
        ASGI_APP, log, "--graceful-timeout", GRACE,
        worker_class="flask_status.uvicorn_worker.UvicornWorker", env=env,
    ),
    "gunicorn-sync": lambda log, env: gunicorn(
        WSGI_APP, log, "--graceful-timeout", GRACE,
        env={**env, "WATCH_STATUS_WATCH_SYNC_WORKERS": "true"},
    ),
    "gunicorn-sync-preload": lambda log, env: gunicorn(
        WSGI_APP, log, "--graceful-timeout", GRACE, preload=True,
        env={**env, "WATCH_STATUS_WATCH_SYNC_WORKERS": "true"},
    ),
    "gunicorn-gthread": lambda log, env: gunicorn(
        WSGI_APP, log, "--graceful-timeout", GRACE, worker_class="gthread", threads=4, env=env,
    ),
    "gunicorn-gevent": lambda log, env: gunicorn(
        WSGI_APP, log, "--graceful-timeout", GRACE, worker_class="gevent", env=env,
    ),
    "gunicorn-gevent-preload": lambda log, env: gunicorn(
        WSGI_APP, log, "--graceful-timeout", GRACE, worker_class="gevent", preload=True,
        env=env,
    ),
    # Served in threads of a worker forked after the app was loaded: drain_on_sigterm's hook,
    # in the worker's main thread, puts the streams' handler in place (docs/live-stream.md).
    "gunicorn-gthread-preload-hook": lambda log, env: gunicorn(
        WSGI_APP, log, "--graceful-timeout", GRACE, "-c", str(drain_hook(log.parent)),
        worker_class="gthread", threads=4, preload=True, env=env,
    ),
}  # fmt: skip


def drain_hook(directory: Path) -> Path:
    """A gunicorn config file with :func:`flask_status.gunicorn.drain_on_sigterm`'s hook."""
    config = directory / "gunicorn.conf.py"
    config.write_text(
        "from flask_status.gunicorn import drain_on_sigterm\n"
        "post_worker_init = drain_on_sigterm(seconds=0.5)\n"
    )
    return config


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("form", SERVER_FORMS)
def test_a_stream_ends_within_a_second_of_the_server_s_signal(
    form: str, sig: signal.Signals, flag_file: Path, tmp_path: Path
) -> None:
    server = SERVER_FORMS[form](tmp_path / "server.log", watch_env(flag_file))
    with server, Watcher(server.port) as watcher:
        assert watcher.status == 200, watcher.response.read()
        watcher.document()
        signalled = time.monotonic()
        server.signal(sig)
        events = watcher.rest()
        ended = time.monotonic() - signalled
        code = server.wait()
        exited = time.monotonic() - signalled
    log = server.log()
    assert ended < END_SECONDS, f"ended {ended:.2f}s after {sig.name}: {events}\n{log[-3000:]}"
    # gunicorn's workers quit at once on SIGINT (their SIGQUIT): the stream is cut, not ended.
    assert events in ([], [Event("end", '{"reason": "stopping"}', events[-1].at if events else 0)])
    assert exited < 5, f"exited {exited:.1f}s after {sig.name}\n{log[-3000:]}"
    assert code in (0, -sig), f"exit code {code}\n{log[-3000:]}"
    if not (form.startswith("gunicorn") and sig is signal.SIGINT):
        # (SIGINT is gunicorn's quick shutdown: its workers exit at once, from their signal
        # handler, and gunicorn logs the request it cut short.)
        assert "Traceback" not in log, log[-3000:]


# -- load: watchers and a probe storm at once ----------------------------------------------

#: Seconds of the probe storm while watchers come and go.
STORM_SECONDS = 10.0
#: A stream's limit under load: each watcher opens several in turn.
LOAD_WATCH_SECONDS = 3
RSS_GROWTH_LIMIT_KIB = 10 * 1024
#: Threads the second round may end with beyond the first's: the app's hooks run in pooled
#: threads, as many as requests overlap, which varies from round to round. A thread kept per
#: stream would add dozens (each round opens some 50 streams).
SPARE_THREADS = 8


def proc_status(pid: int, name: str) -> int:
    """A number from /proc/<pid>/status (``Threads``, ``VmRSS`` in KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {name} in /proc/{pid}/status")


@dataclass
class Load:
    """What a round of load saw: each probe's status, and how each stream began and ended."""

    probes: list[int]
    streams: list[tuple[int, str | None]]  # (status, the end event's data)


def load_round(port: int, watchers: int, connections: int, seconds: float) -> Load:
    """``watchers`` clients each reading streams to their end, one after another, while
    ``connections`` keep-alive connections probe the route, for ``seconds``."""
    until = time.monotonic() + seconds
    load = Load([], [])

    def watch() -> None:
        while time.monotonic() < until:
            with Watcher(port) as watcher:
                ending = None
                if watcher.status == 200:
                    events = watcher.rest()
                    ending = events[-1].data if events and events[-1].name == "end" else None
                load.streams.append((watcher.status, ending))

    def probe() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            while time.monotonic() < until:
                try:
                    connection.request("GET", "/api/status")
                    answer = connection.getresponse()
                    body = json.loads(answer.read())
                    ok = answer.status == 200 and body["flag"] == "up"
                    load.probes.append(answer.status if ok else -answer.status)
                except (OSError, http.client.HTTPException, ValueError):
                    load.probes.append(0)
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        finally:
            connection.close()

    threads = [threading.Thread(target=watch) for _ in range(watchers)]
    threads += [threading.Thread(target=probe) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + LOAD_WATCH_SECONDS + 20)
    return load


LOAD_FORMS: dict[str, tuple[Callable[[Path, Mapping[str, str]], ServerProcess], int]] = {
    "uvicorn": (SERVER_FORMS["uvicorn"], 16),
    # The README's gthread setting: 8 threads; streams hold 4 of them.
    "gunicorn-gthread": (
        lambda log, env: gunicorn(WSGI_APP, log, worker_class="gthread", threads=8, env=env),
        4,
    ),
}


@pytest.mark.parametrize("form", LOAD_FORMS)
def test_watchers_and_a_probe_storm(form: str, flag_file: Path, tmp_path: Path) -> None:
    """Every probe is answered right, every stream ends by its limit, and the server's threads
    and memory do not grow from one round of load to the next, equal one."""
    start, watchers = LOAD_FORMS[form]
    env = watch_env(flag_file, show_details="always", watch_max_seconds=LOAD_WATCH_SECONDS)
    with start(tmp_path / "server.log", env) as server:
        pid = int(server.fetch("/hello").headers["x-pid"])  # the worker, under gunicorn
        warm = load_round(server.port, watchers, 32, STORM_SECONDS)
        threads, rss = proc_status(pid, "Threads"), proc_status(pid, "VmRSS")
        stormed = load_round(server.port, watchers, 32, STORM_SECONDS)
        threads_after, rss_after = proc_status(pid, "Threads"), proc_status(pid, "VmRSS")
        log = server.log()

    for load in (warm, stormed):
        assert load.probes and set(load.probes) == {200}, Counter(load.probes)
        assert load.streams and set(load.streams) == {(200, '{"reason": "limit"}')}, Counter(
            load.streams
        )
    assert len(stormed.streams) >= watchers * 2  # each watcher's streams came and went
    assert threads_after <= threads + SPARE_THREADS, f"{threads} threads, then {threads_after}"
    assert rss_after - rss < RSS_GROWTH_LIMIT_KIB, f"RSS {rss} KiB, then {rss_after} KiB"
    assert "Traceback" not in log, log[-3000:]


# -- in process: the stream's parts, and its settings ----------------------------------------


def test_a_comment_keeps_a_quiet_stream_open_until_its_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the server serves one request at a time, ``watch_sync_workers`` opts in."""
    monkeypatch.setattr(watch, "KEEPALIVE_SECONDS", 0.2)
    app = Flask(__name__)
    status = FlaskStatus(app, watch_sync_workers=True, watch_max_seconds=1)
    status.add_field("version", "2.0.0")
    status.add_field("ok", lambda: "fine")

    answer = app.test_client().get("/api/status?watch", buffered=False)
    try:
        assert answer.status_code == 200
        text = b"".join(answer.response).decode()  # type: ignore[arg-type]
    finally:
        answer.close()

    blocks = text.split("\n\n")
    assert blocks[0].startswith("retry: 2000\nid: ")
    assert blocks[0].endswith('\ndata: {"ok": "fine", "status": "OK", "version": "2.0.0"}')
    assert set(blocks[1:-2]) == {": keep-alive"}  # nothing changed: comments only
    assert len(blocks[1:-2]) >= 3
    assert blocks[-2:] == ['event: end\ndata: {"reason": "limit"}', ""]


@pytest.mark.parametrize(
    ("name", "value", "error"),
    [
        ("watch_max_seconds", 0, ValueError),
        ("watch_max_seconds", "300", TypeError),
        ("max_watchers", 0, ValueError),
        ("max_watchers", 1.5, TypeError),
        ("watch_sync_workers", "yes", TypeError),
    ],
)
def test_bad_settings_name_the_parameter(name: str, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=name):
        FlaskStatus(Flask(__name__), **{name: value})
    app = Flask(__name__)
    app.config[f"STATUS_{name.upper()}"] = value
    with pytest.raises(error, match=f"STATUS_{name.upper()}"):
        FlaskStatus(app)
