"""The live status stream: a route's document as Server-Sent Events, sent when it changes.

``GET <url>`` with ``Accept: text/event-stream`` (or ``?watch``) answers a stream: the current
document first, then one event each time the document changes, a comment every
:data:`KEEPALIVE_SECONDS`, and an ``end`` event after ``watch_max_seconds``, on SIGTERM or
SIGINT, or once the process drains.

The document *changes* when the overall status does, or a field's state (``Outcome.state``) or
value as the caller sees them; a new error text on a field that keeps failing is no change.
Each finished run rings the route's :class:`Watching` when it changed its field's state or
value; a stream then renders from the latest outcomes (no check runs for it) and sends an event
only when what it shows changed. Fields that run on request are run again every
:data:`POLL_SECONDS` while a stream watches them, unless a request ran them since.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

import anyio

from . import formats, lifecycle
from .aggregate import Health
from .appcontext import empty_context
from .bell import Bell
from .config import Settings
from .engine import Evaluator
from .fields import Field, Kind
from .loop import LoopStopped, portal_loop
from .outcome import Outcome
from .threads import start_thread

#: Seconds between comments on a stream with no change: proxies close idle connections.
KEEPALIVE_SECONDS = 15.0
#: Seconds between runs of the fields that run on request, while a stream watches them.
POLL_SECONDS = 5.0
#: Seconds between looks at a ``drain_file`` (another process may create it).
DRAIN_FILE_SECONDS = 0.5
#: What a client waits before it reconnects once a stream ended (EventSource's ``retry``).
RETRY_MILLISECONDS = 2000

MEDIA_TYPE = "text/event-stream"

#: Set by SIGTERM or SIGINT: every stream of the process ends.
_stopping = False
#: Every route's :class:`Watching`, rung when streams must end.
_every_route: weakref.WeakSet[Watching] = weakref.WeakSet()


@dataclass(frozen=True)
class Document:
    """A stream's rendering of its fields: the text, and what changes it is told by (see
    ``formats.signature``)."""

    text: str
    signature: tuple[Any, ...]


class Pending(Protocol):
    """A request's fields (``route.Pending``)."""

    fields: list[Field]


class StatusRoute(Protocol):
    """What a stream needs of its route (``route.StatusRoute``)."""

    settings: Settings
    evaluator: Evaluator
    watching: Watching

    def readiness_state(self) -> Health | None: ...

    def document(
        self, pending: Any, results: Mapping[str, Outcome], cached: Collection[str], verbose: bool
    ) -> Document: ...


class Watching:
    """What the streams of one route watch: its latest outcomes, and a bell rung on changes."""

    def __init__(self, max_watchers: int) -> None:
        self.bell = Bell()
        #: Counts the changes rung so far: a stream waits for it to move.
        self.version = 0
        #: Each field's latest finished run, by key.
        self.latest: dict[str, Outcome] = {}
        self._shown: dict[str, tuple[str, Any]] = {}
        self.max_watchers = max_watchers
        self.watchers = 0
        self._lock = threading.Lock()
        _every_route.add(self)

    def record(self, item: Field, outcome: Outcome) -> None:
        """A run listener: keep the outcome; ring the streams when its state or value changed."""
        self.latest[item.key] = outcome
        shown = (outcome.state, outcome.value)
        if self._shown.get(item.key) == shown:
            return
        self._shown[item.key] = shown
        if self.watchers:
            self.bell.ring_soon(self._changed, on_loop=True)

    def _changed(self) -> None:
        self.version += 1

    def end(self) -> None:
        """Wake every stream, from a thread without an event loop, to see that it must end."""
        self.bell.ring_soon(self._changed, on_loop=False)

    def take_slot(self) -> bool:
        """Count a new stream in, unless ``max_watchers`` streams are open already."""
        with self._lock:
            if self.watchers >= self.max_watchers:
                return False
            self.watchers += 1
            return True

    def release_slot(self) -> None:
        with self._lock:
            self.watchers -= 1


def end_every_stream() -> None:
    """Wake every stream of the process; those that must end (draining) then end.

    From a thread of its own: this runs in signal handlers, which may have interrupted the
    main thread while it held a lock the waking takes.
    """
    start_thread(_wake_every_route, "flask-status-end")


def _wake_every_route() -> None:
    for watching in list(_every_route):
        watching.end()


class _EndOnSignal:
    """A stop signal's handler: end every stream, then do what the server's handler does."""

    def __init__(self, previous: Callable[[int, FrameType | None], Any] | int) -> None:
        self.previous = previous

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        global _stopping
        _stopping = True
        end_every_stream()
        if callable(self.previous):
            self.previous(signum, frame)
        elif self.previous == signal.SIG_DFL:  # the default action, as without this handler
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


#: SIGTERM and SIGINT stop servers; gunicorn's master stops its workers with SIGQUIT on SIGINT.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def end_streams_on_signals() -> None:
    """Put :class:`_EndOnSignal` before the current handlers of :data:`_STOP_SIGNALS`.

    Python runs signal handlers in the main thread only, and only there can they be set: so
    this is called when a route is registered and as a stream starts, and does nothing
    elsewhere. A server that sets its handlers later (uvicorn, hypercorn, gunicorn's workers)
    has them wrapped at the first stream served in the main thread.
    """
    _end_with_hypercorn_workers()
    for signum in _STOP_SIGNALS:
        try:
            previous = signal.getsignal(signum)
            if previous in (None, signal.SIG_IGN) or isinstance(previous, _EndOnSignal):
                continue  # set outside Python (cannot be passed on), ignored, or ours already
            signal.signal(signum, _EndOnSignal(previous))
        except ValueError:  # not the main thread
            return


#: The stop event of the hypercorn worker process this is, once a thread waits for it.
_hypercorn_stop: Any = None


def _end_with_hypercorn_workers() -> None:
    """In a hypercorn worker process, end every stream when hypercorn tells it to stop.

    hypercorn's parent process takes the signal and tells its workers through a
    multiprocessing event handed to each worker's function (``shutdown_event``); no signal
    reaches them. That function's arguments are the worker process's own, in the
    ``multiprocessing`` process object: a thread of ours waits for the event there.
    """
    global _hypercorn_stop
    if _hypercorn_stop is not None or "hypercorn" not in sys.modules:
        return
    arguments = getattr(multiprocessing.current_process(), "_kwargs", None)
    event = arguments.get("shutdown_event") if isinstance(arguments, dict) else None
    if event is None or not callable(getattr(event, "wait", None)):
        return
    _hypercorn_stop = event

    def wait_for_the_stop() -> None:
        event.wait()
        global _stopping
        _stopping = True
        _wake_every_route()

    start_thread(wait_for_the_stop, "flask-status-hypercorn-stop")


lifecycle.on_drain.append(end_every_stream)


class Stream:
    """One live status stream: its request's fields, and its slot among the route's streams."""

    def __init__(
        self, route: StatusRoute, pending: Pending, verbose: bool, max_seconds: float
    ) -> None:
        self.route = route
        self.pending = pending
        self.verbose = verbose
        self.max_seconds = max_seconds
        self.readiness = route.readiness_state()  # DRAINING or STARTING as it began, or None
        self._open = True

    def close(self) -> None:
        """Give the stream's slot back (once)."""
        if self._open:
            self._open = False
            self.route.watching.release_slot()

    async def events(self) -> AsyncIterator[bytes]:
        """The stream's bytes: the document now, then each change, until it must end."""
        route, pending, watching = self.route, self.pending, self.route.watching
        now = anyio.current_time()
        ends_at = now + self.max_seconds
        # Read before each rendering: a change rung while it renders wakes the next wait.
        seen = watching.version
        evaluation = await route.evaluator.evaluate(_callables(pending))
        document = route.document(pending, evaluation.outcomes, evaluation.cached, self.verbose)
        shown = document.signature
        yield f"retry: {RETRY_MILLISECONDS}\n".encode() + _event(document)
        next_poll, next_comment = now + POLL_SECONDS, now + KEEPALIVE_SECONDS
        polled = time.time()  # the fields ran just now, for the first document
        while True:
            changed = functools.partial(_moved, watching, seen)
            wake_at = min(next_poll, next_comment, ends_at)
            if route.settings.drain_file is not None:
                wake_at = min(wake_at, anyio.current_time() + DRAIN_FILE_SECONDS)
            if self._ended(ends_at) is None:
                with anyio.move_on_after(max(0.0, wake_at - anyio.current_time())):
                    await watching.bell.wait(changed)
            reason = self._ended(ends_at)
            if reason is not None:
                yield _end(reason)
                return
            now = anyio.current_time()
            if now >= next_poll:
                since, polled = polled, time.time()
                await self._run_on_request_fields(since)
                next_poll = now + POLL_SECONDS
            seen = watching.version
            document = route.document(pending, self._latest(), (), self.verbose)
            if document.signature != shown:
                shown = document.signature
                next_comment = now + KEEPALIVE_SECONDS
                yield _event(document)
            elif now >= next_comment:
                next_comment = now + KEEPALIVE_SECONDS
                yield b": keep-alive\n\n"

    def _ended(self, ends_at: float) -> str | None:
        """Why the stream must end now, if it must."""
        if _stopping:
            return "stopping"
        if lifecycle.draining(self.route.settings.drain_file):
            return "draining"
        if self.route.readiness_state() is not self.readiness:
            return "restart"  # started, on a readiness route: a new stream shows its fields
        if anyio.current_time() >= ends_at:
            return "limit"
        return None

    async def _run_on_request_fields(self, since: float) -> None:
        """Run the fields that run on request and that no run measured after ``since`` (the
        previous poll, a Unix time)."""
        latest = self.route.watching.latest
        due = [
            item
            for item in _callables(self.pending)
            if item.interval is None
            and (item.key not in latest or latest[item.key].measured_at <= since)
        ]
        if due:
            async with anyio.create_task_group() as tasks:
                # Runs no request asked for: roots of their own (spans, contexts), as
                # background runs are, not parts of a request that lasts as long as the stream.
                empty_context().run(tasks.start_soon, self.route.evaluator.evaluate, due)

    def _latest(self) -> dict[str, Outcome]:
        """Each callable field's latest outcome, without running any check."""
        evaluator, latest = self.route.evaluator, self.route.watching.latest
        outcomes = {}
        for item in _callables(self.pending):
            outcome = evaluator.background_result(item) if item.interval is not None else None
            if outcome is None:
                outcome = latest.get(item.key) or _NO_RESULT
            outcomes[item.key] = outcome
        return outcomes

    def wsgi(self) -> WsgiStream:
        return WsgiStream(self)


def _moved(watching: Watching, seen: int) -> bool:
    """Whether a stream that saw ``seen`` must wake: a change, or the process stops."""
    return _stopping or watching.version != seen


_NO_RESULT = Outcome(error="starting: no result yet", error_kind="starting")


class WsgiStream:
    """A stream as a WSGI response body: each chunk is awaited on the process's own loop, so
    the server's thread (or greenlet) waits, not the loop nor a check's thread."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._events: AsyncIterator[bytes] | None = None

    def __iter__(self) -> WsgiStream:
        return self

    def __next__(self) -> bytes:
        if self._events is None:
            end_streams_on_signals()  # the sync and gevent workers iterate in the main thread
            self._events = self.stream.events()
        try:
            chunk = portal_loop.call(_next_chunk, self._events)
        except LoopStopped:
            chunk = None
        if chunk is None:
            self.close()
            raise StopIteration
        return chunk

    def close(self) -> None:
        """Called by the server when the stream ends or the client has gone."""
        events, self._events = self._events, None
        try:
            if events is not None:
                with contextlib.suppress(Exception):
                    portal_loop.call(_close, events)
        finally:
            self.stream.close()


async def _next_chunk(events: AsyncIterator[bytes]) -> bytes | None:
    return await anext(events, None)


async def _close(events: AsyncIterator[bytes]) -> None:
    await events.aclose()  # type: ignore[attr-defined]


def _event(document: Document) -> bytes:
    """A document's Server-Sent Event: its version as the id (the page compares it with its
    own), each line of its text on a ``data:`` line of its own."""
    lines = "".join(f"data: {line}\n" for line in document.text.splitlines())
    return f"id: {formats.version(document.signature)}\n{lines}\n".encode()


def _end(reason: str) -> bytes:
    return f'event: end\ndata: {{"reason": "{reason}"}}\n\n'.encode()


def _callables(pending: Pending) -> list[Field]:
    return [item for item in pending.fields if item.kind is not Kind.CONSTANT]
