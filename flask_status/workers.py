"""Where checks run: a thread pool for sync checks and one background event loop for async ones.

Both are started lazily and restarted in a forked child (gunicorn ``--preload``), where the
parent's threads do not exist.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, Callable, Optional

#: Default upper bound on threads running sync checks at once, per FlaskStatus instance.
DEFAULT_MAX_WORKERS = 256

#: Seconds an idle worker thread waits for work before it exits.
IDLE_SECONDS = 60.0


class WorkerPool:
    """Daemon threads that run sync checks.

    Unlike ``concurrent.futures.ThreadPoolExecutor`` its threads are daemons, so a check that
    never returns cannot stop the interpreter from exiting, and idle threads exit after a while.
    Submitting hands work to an idle thread or starts one, up to ``max_workers``; beyond that
    work waits in the queue (and its field times out).
    """

    def __init__(self, max_workers: int = DEFAULT_MAX_WORKERS) -> None:
        self.max_workers = max_workers
        _forkable.add(self)
        self._reset()

    def _reset(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], object]] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads = 0

    @property
    def threads(self) -> int:
        """Worker threads alive now, busy or idle."""
        return self._threads

    def submit(self, work: Callable[[], object]) -> None:
        """Run ``work`` in a worker thread. ``work`` must not raise."""
        self._queue.put(work)
        if self._idle.acquire(blocking=False):
            return  # an idle thread will take it
        with self._lock:
            if self._threads >= self.max_workers:
                return
            self._threads += 1
        threading.Thread(target=self._work, name="flask-status-worker", daemon=True).start()

    def _work(self) -> None:
        while True:
            try:
                work = self._queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                # Leave only if no submitter has counted on this thread being idle.
                if self._idle.acquire(blocking=False):
                    with self._lock:
                        self._threads -= 1
                    return
                continue
            work()
            del work
            self._idle.release()


class BackgroundLoop:
    """One asyncio event loop in a daemon thread, where async checks run for WSGI requests.

    Keeping one loop alive avoids creating an event loop per request, lets requests share an
    in-flight check, and lets an abandoned check finish in the background.
    """

    def __init__(self) -> None:
        _forkable.add(self)
        self._reset()

    def _reset(self) -> None:
        self._loop: Optional[asyncio.AbstractEventLoop] = None
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

    def spawn(self, coro_factory: Callable[[], Coroutine[Any, Any, object]]) -> None:
        """Start ``coro_factory()`` as a task on the loop, in a copy of the caller's context."""
        loop = self._running_loop()
        loop.call_soon_threadsafe(spawn_task, loop, coro_factory)


_tasks: set[asyncio.Task[object]] = set()


def spawn_task(
    loop: asyncio.AbstractEventLoop, coro_factory: Callable[[], Coroutine[Any, Any, object]]
) -> None:
    """Create a task that nobody awaits, holding a reference until it ends (asyncio keeps weak ones)."""
    task = loop.create_task(coro_factory())
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


_forkable: weakref.WeakSet[Any] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for item in list(_forkable):
        item._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

#: The process-wide loop for async checks of WSGI requests.
background_loop = BackgroundLoop()
