"""Waiters on any event loop, each woken on its own loop through that loop's token.

Runs live on one loop (the process's own, or a server's) while requests and streams may wait
on another: an anyio Event can be set only on its own loop, so each waiter registers its loop's
token with its Event, and a ring sets each Event there. No waiter holds a thread.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable

import anyio
import anyio.from_thread
import anyio.to_thread
from anyio.lowlevel import EventLoopToken, current_token

from .threads import start_thread

Waiter = tuple[EventLoopToken, anyio.Event]


class Bell:
    """Wakes every task waiting on it, whichever event loop each waits on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # waiters come from any loop's thread
        self._waiters: list[Waiter] = []

    async def wait(self, ready: Callable[[], bool]) -> None:
        """Return once ``ready()`` is true (checked at once, then at each ring); the caller's
        cancel scope bounds the wait."""
        waiter = (current_token(), anyio.Event())
        with self._lock:
            if ready():
                return
            self._waiters.append(waiter)
        try:
            await waiter[1].wait()
        finally:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _take(self, update: Callable[[], object] | None) -> list[Waiter]:
        """Every waiter, after ``update()`` ran under the lock (so no waiter misses it)."""
        with self._lock:
            if update is not None:
                update()
            waiters, self._waiters = self._waiters, []
        return waiters

    async def ring(self, update: Callable[[], object] | None = None) -> None:
        """Wake every waiter; those on other loops from a worker thread (waking another loop
        blocks until it runs the call: not on this loop's thread)."""
        elsewhere = _wake_here(self._take(update), current_token())
        if elsewhere:
            await anyio.to_thread.run_sync(_wake, elsewhere)

    def ring_soon(self, update: Callable[[], object] | None = None, *, on_loop: bool) -> None:
        """Wake every waiter from sync code: a run's listener on its loop (``on_loop``: those
        of other loops from a thread of its own), or a thread without a loop."""
        waiters = self._take(update)
        if not on_loop:
            _wake(waiters)
            return
        elsewhere = _wake_here(waiters, current_token())
        if elsewhere:
            start_thread(functools.partial(_wake, elsewhere), "flask-status-wake")


def _wake_here(waiters: list[Waiter], here: EventLoopToken) -> list[Waiter]:
    """Set the waiters of this loop; the others, to wake on their own loops."""
    elsewhere = []
    for token, event in waiters:
        if token == here:
            event.set()
        else:
            elsewhere.append((token, event))
    return elsewhere


def _wake(waiters: list[Waiter]) -> None:
    for token, event in waiters:
        with contextlib.suppress(anyio.RunFinishedError):  # that loop is gone, and its waiter
            anyio.from_thread.run_sync(event.set, token=token)
