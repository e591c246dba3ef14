"""Where checks run: a thread pool for sync checks and one background event loop for async ones.

Both are started lazily and restarted in a forked child (gunicorn ``--preload``), where the
parent's threads do not exist.
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import weakref
from collections.abc import Iterable
from typing import Any, Callable

#: Default upper bound on threads running sync checks at once, per FlaskStatus instance.
DEFAULT_MAX_WORKERS = 256

#: Seconds an idle worker thread waits for work before it exits.
IDLE_SECONDS = 60.0


class _Mailbox:
    """Where an idle worker thread waits: a submitter leaves work in it and wakes that thread."""

    def __init__(self) -> None:
        self.work: Callable[[], object] | None = None
        self.ready = threading.Lock()  # held until work is left here
        self.ready.acquire()


class WorkerPool:
    """Daemon threads that run sync checks.

    Unlike ``concurrent.futures.ThreadPoolExecutor`` its threads are daemons, so a check that
    never returns cannot stop the interpreter from exiting, and idle threads exit after a while.
    Submitting hands work to the thread that became idle last and wakes that thread alone (with
    a shared queue, every hand-over would also wake the other idle threads in turn), or starts
    a thread, up to ``max_workers``; beyond that, work waits its turn (and its field times out).
    """

    def __init__(self, max_workers: int = DEFAULT_MAX_WORKERS) -> None:
        self.max_workers = max_workers
        _forkable.add(self)
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Mailbox] = []  # a stack: the thread idle for the shortest time is reused
        self._backlog: collections.deque[Callable[[], object]] = collections.deque()
        self._threads = 0

    @property
    def threads(self) -> int:
        """Worker threads alive now, busy or idle."""
        return self._threads

    def submit(self, work: Callable[[], object]) -> None:
        """Run ``work`` in a worker thread. ``work`` must not raise."""
        with self._lock:
            if self._idle:
                mailbox = self._idle.pop()
                mailbox.work = work
                mailbox.ready.release()
                return
            if self._threads >= self.max_workers:
                self._backlog.append(work)
                return
            self._threads += 1
        threading.Thread(
            target=self._work, args=(work,), name="flask-status-worker", daemon=True
        ).start()

    def _work(self, work: Callable[[], object]) -> None:
        mailbox = _Mailbox()
        while True:
            work()
            del work  # a finished check's objects are not kept alive while the thread idles
            next_work = self._next(mailbox)
            if next_work is None:
                return
            work = next_work

    def _next(self, mailbox: _Mailbox) -> Callable[[], object] | None:
        """The next work: waiting, else left in ``mailbox``; None after an idle timeout."""
        with self._lock:
            if self._backlog:
                return self._backlog.popleft()
            self._idle.append(mailbox)
        if not mailbox.ready.acquire(timeout=IDLE_SECONDS):
            with self._lock:
                if mailbox in self._idle:  # nobody handed it work: the thread leaves
                    self._idle.remove(mailbox)
                    self._threads -= 1
                    return None
            # A submitter took this thread just as it timed out, and has already left the work.
            mailbox.ready.acquire()
        work, mailbox.work = mailbox.work, None
        return work


class Batch:
    """Works run one after another by one worker thread, until :meth:`spread` is called.

    Most checks return in microseconds, and waking a thread costs more than that: one thread
    running a request's checks in turn costs one wake-up instead of one per check. A slow check
    would hold up the ones queued behind it, so the caller calls :meth:`spread` soon after:
    every work not started by then gets a thread of its own.
    """

    def __init__(self, pool: WorkerPool, works: Iterable[Callable[[], object]]) -> None:
        self._pool = pool
        self._works = collections.deque(works)
        pool.submit(self._drain)

    def _drain(self) -> None:
        while True:
            try:
                work = self._works.popleft()  # atomic: each work runs in one thread only
            except IndexError:
                return
            work()

    def spread(self) -> None:
        """Give every work not started yet a thread of its own; a no-op once all have started."""
        for _ in range(len(self._works)):
            self._pool.submit(self._drain)


class BackgroundLoop:
    """One asyncio event loop in a daemon thread, where async checks run for WSGI requests.

    Keeping one loop alive avoids creating an event loop per request, lets requests share an
    in-flight check, and lets an abandoned check finish in the background.
    """

    def __init__(self) -> None:
        _forkable.add(self)
        self._reset()

    def _reset(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="flask-status-loop", daemon=True
                ).start()
                self._loop = loop
            return self._loop

    def call(self, function: Callable[..., object], *args: Any) -> None:
        """Call ``function(*args)`` on the loop's thread, in a copy of the caller's context."""
        self._running_loop().call_soon_threadsafe(function, *args)


_forkable: weakref.WeakSet[Any] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for item in list(_forkable):
        item._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

#: The process-wide loop for async checks of WSGI requests.
background_loop = BackgroundLoop()
