"""Status routes under real server processes: gunicorn with sync, gthread, gevent and uvicorn
workers (with and without ``--preload``), and hypercorn. Each serves an app of ``served_app``."""

from __future__ import annotations

import http.client
import importlib
import inspect
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import served_app
from helpers import REQUEST_TIMEOUT, Reply, ServerProcess
from servers import gunicorn, hypercorn
from uvicorn.config import Config

#: Seconds within which a route whose hung check times out after 0.2 s must answer: far more
#: than the timeout, far less than the 2 s the check blocks.
HUNG_ANSWER_LIMIT = 1.5

#: Requests sent over one keep-alive connection.
KEEP_ALIVE_REQUESTS = 300

#: Requests to the ``--preload`` server: at least this many, and until every worker answered.
PRELOAD_REQUESTS = 20
PRELOAD_REQUEST_LIMIT = 200


def log_tail(server: ServerProcess, chars: int = 3000) -> str:
    return f"\n--- server log ---\n{server.log()[-chars:]}"


def shown(reply: Reply, server: ServerProcess) -> str:
    """An answer and the end of the server's log, for an assertion's message."""
    return f"{reply.status} {reply.body[:1000]!r}{log_tail(server)}"


def canonical(reply: Reply) -> str:
    """The body: JSON with sorted keys, or as it came when it is not JSON."""
    try:
        return json.dumps(reply.json(), sort_keys=True)
    except ValueError:
        return reply.body.decode(errors="replace")


def timed_fetch(server: ServerProcess, path: str) -> tuple[Reply, float]:
    started = time.monotonic()
    reply = server.fetch(path)
    return reply, time.monotonic() - started


# -- gunicorn -k gevent ------------------------------------------------------------------


@pytest.fixture(scope="module")
def gevent_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("gevent") / "gunicorn.log"
    with gunicorn("served_app:create_gevent_app()", log, worker_class="gevent") as server:
        yield server


def test_gevent_async_view_answers_after_a_status_request_with_an_async_check(
    gevent_server: ServerProcess,
) -> None:
    before = gevent_server.fetch("/async-view")
    status = gevent_server.fetch("/api/status")
    after = gevent_server.fetch("/async-view")

    assert (before.status, before.body) == (200, b"async view")
    assert (status.status, status.json()) == (200, served_app.STATUS_BODY), shown(
        status, gevent_server
    )
    # The loop of async checks must not run in the gevent hub's OS thread, where asgiref
    # then refuses to run Flask's async views.
    assert (after.status, after.body) == (200, b"async view"), shown(after, gevent_server)


def test_gevent_check_blocking_its_os_thread_is_cut_off_at_its_timeout(
    gevent_server: ServerProcess,
) -> None:
    # The hung check blocks in gevent's unpatched sleep: unless it runs in an OS thread of its
    # own, it blocks the hub, and the whole worker with it, for 2 s.
    reply, seconds = timed_fetch(gevent_server, "/api/hung")
    hello, hello_seconds = timed_fetch(gevent_server, "/hello")

    assert (reply.status, reply.json()) == (200, served_app.HUNG_BODY), shown(reply, gevent_server)
    assert seconds < HUNG_ANSWER_LIMIT
    assert hello.status == 200
    assert hello_seconds < HUNG_ANSWER_LIMIT


def test_gevent_sync_check_cannot_use_anyio_from_thread_and_says_so(
    gevent_server: ServerProcess,
) -> None:
    """Under gevent sync checks run in real OS threads, not anyio worker threads: the
    documented limit is a clear error in that field alone, not a hang or a 500."""
    reply = gevent_server.fetch("/api/from-thread")

    assert reply.status == 503, shown(reply, gevent_server)
    error = reply.json()["from_thread"]["error"]
    assert error.startswith("NoEventLoopError: Not running inside an AnyIO worker thread"), error


# -- gunicorn --preload -w 2 -------------------------------------------------------------


@pytest.fixture
def preload_server(tmp_path: Path) -> Iterator[ServerProcess]:
    with gunicorn(
        "served_app:create_preload_app()",
        tmp_path / "gunicorn.log",
        workers=served_app.PRELOAD_WORKERS,
        preload=True,
    ) as server:
        yield server


def test_preload_workers_forked_during_an_evaluation_answer_correctly(
    preload_server: ServerProcess,
) -> None:
    state = preload_server.fetch("/warm-up").json()
    assert state["in_flight_at_fork"], "the import-time evaluation ended before the fork"

    answers: Counter[tuple[int, str]] = Counter()  # (status, JSON body) -> how many
    workers: set[str] = set()
    for count in range(1, PRELOAD_REQUEST_LIMIT + 1):
        reply = preload_server.fetch("/api/warm")  # a fresh connection: any worker may answer
        answers[reply.status, canonical(reply)] += 1
        workers.add(reply.headers["x-pid"])
        if count >= PRELOAD_REQUESTS and len(workers) == served_app.PRELOAD_WORKERS:
            break

    expected = json.dumps({"status": "OK", "sync_check": "ok", "async_check": "ok"}, sort_keys=True)
    assert answers == {(200, expected): count}, log_tail(preload_server)
    assert len(workers) == served_app.PRELOAD_WORKERS


# -- gunicorn -k sync / gthread ----------------------------------------------------------


@pytest.fixture(scope="module", params=["sync", "gthread"])
def threaded_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    worker_class: str = request.param
    log = tmp_path_factory.mktemp(worker_class) / "gunicorn.log"
    threads = 4 if worker_class == "gthread" else None
    with gunicorn(
        "served_app:create_app()", log, worker_class=worker_class, threads=threads
    ) as server:
        yield server


def test_threaded_workers_answer_sync_and_async_checks(threaded_server: ServerProcess) -> None:
    reply = threaded_server.fetch("/api/status")
    async_view = threaded_server.fetch("/async-view")

    assert (reply.status, reply.json()) == (200, served_app.STATUS_BODY), shown(
        reply, threaded_server
    )
    assert reply.headers["cache-control"] == "no-store"
    assert (async_view.status, async_view.body) == (200, b"async view")


def test_threaded_workers_cut_a_hung_check_off_at_its_timeout(
    threaded_server: ServerProcess,
) -> None:
    reply, seconds = timed_fetch(threaded_server, "/api/hung")

    assert (reply.status, reply.json()) == (200, served_app.HUNG_BODY), shown(
        reply, threaded_server
    )
    assert seconds < HUNG_ANSWER_LIMIT


# -- gunicorn -k <uvicorn worker> --------------------------------------------------------

#: uvicorn 0.39 to 0.44 ran every request in a fresh context, and had no option for it; 0.39
#: is the last uvicorn for Python 3.9.
needs_reset_contextvars = pytest.mark.skipif(
    "reset_contextvars" not in inspect.signature(Config).parameters,
    reason="this uvicorn has no reset_contextvars option (added in 0.45)",
)


def keep_alive_statuses(server: ServerProcess, path: str, count: int) -> Counter[int]:
    """The status codes of ``count`` GETs of ``path`` over one keep-alive connection."""
    statuses: Counter[int] = Counter()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT)
    try:
        for _ in range(count):
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            statuses[response.status] += 1
    finally:
        connection.close()
    return statuses


@pytest.fixture
def asgi_worker(tmp_path: Path) -> Iterator[Callable[[str], ServerProcess]]:
    """Starts gunicorn with the given worker class serving the ASGI app; stops it at teardown."""
    started: list[ServerProcess] = []

    def start(worker_class: str) -> ServerProcess:
        log = tmp_path / f"gunicorn-{len(started)}.log"
        server = gunicorn("served_app:create_asgi_app()", log, worker_class=worker_class)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@needs_reset_contextvars
def test_flask_status_uvicorn_worker_answers_every_keep_alive_request(
    asgi_worker: Callable[[str], ServerProcess],
) -> None:
    server = asgi_worker("flask_status.uvicorn_worker.UvicornWorker")

    statuses = keep_alive_statuses(server, "/hello", KEEP_ALIVE_REQUESTS)
    status = server.fetch("/api/status")

    assert statuses == {200: KEEP_ALIVE_REQUESTS}, log_tail(server)
    assert (status.status, status.json()) == (200, served_app.STATUS_BODY), shown(status, server)


@needs_reset_contextvars
def test_plain_uvicorn_worker_fails_keep_alive_requests(
    asgi_worker: Callable[[str], ServerProcess],
) -> None:
    """What the worker of flask_status.uvicorn_worker avoids: here about a third of these
    requests fail, the first within a few dozen."""
    server = asgi_worker("uvicorn_worker.UvicornWorker")

    statuses = keep_alive_statuses(server, "/hello", KEEP_ALIVE_REQUESTS)

    assert statuses[500] > 0, statuses
    assert "CurrentThreadExecutor already quit or is broken" in server.log()


def test_uvicorn_worker_module_names_the_extra_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "flask_status.uvicorn_worker", raising=False)
    monkeypatch.setitem(sys.modules, "uvicorn_worker", None)  # as if it were not installed

    needs_extra = r"needs the 'uvicorn-worker' extra: pip install -e '\.\[uvicorn-worker\]'"
    with pytest.raises(ImportError, match=needs_extra):
        importlib.import_module("flask_status.uvicorn_worker")


def test_uvicorn_worker_module_rejects_a_uvicorn_without_reset_contextvars(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import uvicorn.config

    class OldConfig:  # uvicorn before 0.45
        def __init__(self, app: object, reload: bool = False) -> None:
            pass

    monkeypatch.delitem(sys.modules, "flask_status.uvicorn_worker", raising=False)
    monkeypatch.setattr(uvicorn.config, "Config", OldConfig)

    with pytest.raises(ImportError, match=r"uvicorn 0\.45 or later"):
        importlib.import_module("flask_status.uvicorn_worker")


@needs_reset_contextvars
def test_flask_status_uvicorn_worker_sets_reset_contextvars() -> None:
    from uvicorn_worker import UvicornWorker as PlainWorker

    from flask_status.uvicorn_worker import UvicornWorker

    assert issubclass(UvicornWorker, PlainWorker)
    assert UvicornWorker.CONFIG_KWARGS == {**PlainWorker.CONFIG_KWARGS, "reset_contextvars": True}


# -- hypercorn ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hypercorn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("hypercorn") / "hypercorn.log"
    with hypercorn("served_app:create_asgi_app()", log, worker_class="asyncio") as server:
        yield server


def test_hypercorn_serves_the_status_route(hypercorn_server: ServerProcess) -> None:
    reply = hypercorn_server.fetch("/api/status")
    hello = hypercorn_server.fetch("/hello")

    assert (reply.status, reply.json()) == (200, served_app.STATUS_BODY), shown(
        reply, hypercorn_server
    )
    assert reply.headers["cache-control"] == "no-store"
    assert (hello.status, hello.body) == (200, b"hello")
