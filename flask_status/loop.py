"""The event loop of WSGI requests: one anyio blocking portal per process.

A WSGI server calls views in threads (or greenlets) that have no event loop, and creating one
per request costs about 0.6 ms. Instead, every WSGI request hands its evaluation to one
long-lived loop through an anyio :class:`~anyio.from_thread.BlockingPortal`, in a daemon
thread (a real OS thread under gevent). Sharing one loop also lets requests share a run.

Its worker threads are daemon threads too, as anyio's worker threads take the daemon flag of
their loop's thread: so a sync check that never returns does not hold the process's exit.
Sync checks evaluated on another loop (an ASGI server's) run in these threads as well.

The portal starts on first use. A forked child (gunicorn ``--preload``) starts its own, since
the parent's thread does not exist there; and if a check stops the loop, the next request
starts a new one.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import contextvars
import functools
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import anyio
import anyio.lowlevel
import anyio.to_thread
from anyio.abc import TaskGroup
from anyio.from_thread import BlockingPortal
from anyio.lowlevel import RunVar

from .fork import reset_after_fork
from .threads import gevent_patched, run_in_os_thread, start_thread

T = TypeVar("T")

#: Per event loop: a long-lived task group where a field's next run can start ahead of the
#: requests that will want it (the portal's loop and the ASGI lifespan set it).
runs_ahead_host: RunVar[TaskGroup | None] = RunVar("flask_status_runs_ahead", default=None)


class LoopStopped(Exception):
    """The event loop stopped while it ran this call (a check stopped it)."""


class _Host:
    """A running portal, and whether its loop is still running."""

    def __init__(self, portal: BlockingPortal) -> None:
        self.portal = portal
        self.running = True
        self.thread = threading.get_ident()  # the loop's own thread


@dataclass(frozen=True)
class Started:
    """A task started on the loop: its future, and the loop (host) it runs on."""

    task: Future[Any]
    host: _Host


class PortalLoop:
    """One event loop in a daemon thread, reached through an anyio blocking portal."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._host: _Host | None = None

    def call(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await ``func(*args)`` on the loop, from a thread without one, in its context."""
        host = self._running_host()
        try:
            return host.portal.call(func, *args)
        except BaseException:
            if host.running:
                raise
            raise LoopStopped("the event loop stopped while it evaluated this request") from None

    async def run_in_thread(self, func: Callable[[], T], limiter: anyio.CapacityLimiter) -> T:
        """Await ``func`` in one of the loop's worker threads, from another event loop.

        ``func`` runs in a copy of the caller's context, once ``limiter`` has a token for it,
        taken on this loop: a limiter is used on one loop only, as a caller waiting for a
        token sleeps on its own loop, which a token given back on another does not wake (a
        request waiting for a thread a background check held waited until its deadline).
        Cancelling the caller abandons the thread, as
        ``anyio.to_thread.run_sync(..., abandon_on_cancel=True)`` does; if the loop
        stops first, the thread is abandoned too and :class:`LoopStopped` is raised. What
        ``func`` raises is raised here, ``SystemExit`` too, and never in the loop's task: the
        portal lets such an exception through its task group, which would stop the loop.
        """
        host = self._running_host()
        in_thread = functools.partial(
            anyio.to_thread.run_sync,
            contextvars.copy_context().run,
            _caught,
            func,
            abandon_on_cancel=True,
            limiter=limiter,
        )
        try:
            result, raised = await host.portal.call_async(in_thread, abandon_on_cancel=True)
        except concurrent.futures.CancelledError:  # the loop cancelled its tasks as it stopped
            raise LoopStopped("the event loop stopped while a check ran in its thread") from None
        if raised is not None:
            raise raised
        return cast(T, result)

    def start_soon(self, func: Callable[..., Awaitable[Any]], *args: Any) -> Started:
        """Start ``func(*args)`` as a task of the loop (from a thread other than the loop's)."""
        host = self._running_host()
        return Started(host.portal.start_task_soon(func, *args), host)

    def here(self) -> bool:
        """Whether the caller runs on this loop's thread (where its portal cannot be called),
        stopping too: what its cancelled tasks still do (a check's teardown) is done there,
        and starts no other loop."""
        host = self._host
        return host is not None and host.thread == threading.get_ident()

    def runs(self, started: Started) -> bool:
        """Whether a task started by :meth:`start_soon` still runs on the current loop."""
        return started.host is self._host and started.host.running and not started.task.done()

    def stop(self, timeout: float = 2.0) -> None:
        """Cancel the loop's tasks and stop it, waiting ``timeout`` seconds at most."""
        host = self._host
        if host is None or not host.running:
            return

        def stop_portal() -> None:
            with contextlib.suppress(BaseException):  # already stopping, or stopped
                host.portal.start_task_soon(host.portal.stop, True).result(timeout)

        # In a thread of its own: a loop held by a blocking check must not hold up the exit.
        stopper = threading.Thread(target=stop_portal, name="flask-status-stop", daemon=True)
        stopper.start()
        stopper.join(timeout)

    def _running_host(self) -> _Host:
        with self._lock:
            if self._host is None or not self._host.running:
                self._host = _start_host()
            return self._host

    def after_fork(self) -> None:
        """Drop the portal without stopping it: in a forked child, its thread is gone."""
        self._lock = threading.Lock()
        self._host = None


def _caught(func: Callable[[], T]) -> tuple[T | None, BaseException | None]:
    """``func()``'s result, or what it raised (to be raised where it is awaited)."""
    try:
        return func(), None
    except BaseException as exc:
        return None, exc


def _start_host() -> _Host:
    started: Future[_Host] = Future()

    async def serve() -> None:
        async with BlockingPortal() as portal, anyio.create_task_group() as runs_ahead:
            runs_ahead_host.set(runs_ahead)
            host = _Host(portal)
            started.set_result(host)
            try:
                await portal.sleep_until_stopped()
            finally:
                host.running = False
                runs_ahead.cancel_scope.cancel()

    def run() -> None:
        try:
            anyio.run(serve)
        except BaseException as exc:  # e.g. a check stopped the loop: the next call restarts
            if not started.done():
                started.set_exception(exc)
        finally:
            if started.done() and started.exception() is None:
                started.result().running = False

    start_thread(run, "flask-status-loop")
    return started.result()


#: The process-wide loop of WSGI requests.
portal_loop = PortalLoop()

reset_after_fork(portal_loop)
# Background checks are cancelled, rather than left pending, when the interpreter exits.
atexit.register(portal_loop.stop)


def thread_limiter(total_tokens: float) -> anyio.CapacityLimiter:
    """A limiter for :func:`run_sync`, which takes it on the process's own loop (asyncio).

    anyio makes a limiter of the kind of event loop running where it is made, and one made on
    no loop takes the kind of the first loop to use it. Made on a trio server's loop (an app
    set up there), it could not be taken on the process's: so there it is made in a thread.
    """
    try:
        anyio.get_current_task()
    except anyio.NoEventLoopError:
        return anyio.CapacityLimiter(total_tokens)
    made: Future[anyio.CapacityLimiter] = Future()

    def make() -> None:
        try:
            made.set_result(anyio.CapacityLimiter(total_tokens))
        except BaseException as exc:  # e.g. a bad total: raised to the caller
            made.set_exception(exc)

    start_thread(make, "flask-status-limiter")
    return made.result()


async def raise_if_cancelled(error: BaseException) -> None:
    """Raise the caller's cancellation when ``error`` is one and the caller is cancelled.

    Otherwise return: a cancellation the app's code raised of its own (it awaited something
    cancelled elsewhere) is its failure, handled as any other.
    """
    if isinstance(error, anyio.get_cancelled_exc_class()):
        await anyio.lowlevel.checkpoint_if_cancelled()


async def run_sync(func: Callable[[], Any], limiter: anyio.CapacityLimiter) -> Any:
    """Run ``func`` in a daemon thread, abandoned if the caller's scope is cancelled.

    Where sync work of a status request runs, whichever loop awaits it: under gevent in a
    real OS thread; otherwise in the worker threads of the process's own loop, daemons, so
    that a hung check never holds the process's exit, and under ``limiter`` taken there (a
    route's limiter serves requests on an ASGI server's loop and background checks on the
    process's own: see :meth:`PortalLoop.run_in_thread`). ``None`` if the process's loop
    stopped before ``func`` returned (at exit, or a check stopped it): the caller stops
    waiting, as at its deadline.
    """
    if gevent_patched():
        async with limiter:
            return await run_in_os_thread(func)
    if portal_loop.here():
        return await anyio.to_thread.run_sync(func, abandon_on_cancel=True, limiter=limiter)
    try:
        return await portal_loop.run_in_thread(func, limiter)
    except LoopStopped:
        return None
