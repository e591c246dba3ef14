"""The evaluation engine: runs a request's callable fields concurrently, each under its timeout.

Sync checks run in worker threads; async checks run as tasks on an asyncio event loop (the
server's under ASGI, a shared background loop under WSGI), each cancelled at its deadline.
Every run is *single-flight*: requests that arrive while a field's check is in flight wait for
that run instead of starting another, so a hung check holds one thread however many probes
arrive. A finished run is reused for ``cache_ttl`` seconds.

A waiting request is woken once, when the last run it waits for finishes (or at the earliest
deadline still ahead), not once per finished run: thread wake-ups are what a fast check costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import inspect
import logging
import math
import threading
import time
from collections.abc import Awaitable, Coroutine, Iterable, Mapping
from typing import Any, Callable

from .fields import Field, Kind
from .outcome import Outcome, describe, timed_out
from .workers import BackgroundLoop, Batch, WorkerPool

# Errors a check may raise that must reach the server rather than be turned into a field error.
FATAL = (KeyboardInterrupt, SystemExit)

#: Seconds an async check may run past its deadline before it is reported as having outrun
#: its cancellation (the loop timer that cancels it fires within a few milliseconds).
OVERRUN_GRACE = 0.05

#: Seconds a request's sync checks run in turn on one thread before the ones not started yet
#: get a thread each: far longer than quick checks take, far shorter than a check's timeout.
SPREAD_AFTER = 0.002


class Run:
    """One execution of a field's check, shared by every request that waits for it."""

    def __init__(self, field: Field, timeout: float) -> None:
        self.field = field
        self.timeout = timeout
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.finished: float | None = None
        self.outcome: Outcome | None = None
        self.fatal: BaseException | None = None
        self.timeout_logged = False
        self.expired = False  # set when its deadline cancels its task
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[Run], object]] = []

    def finish(self, outcome: Outcome, fatal: BaseException | None = None) -> None:
        """Record the outcome (a late one counts as a timeout) and wake the waiters."""
        now = time.monotonic()
        if now > self.deadline and outcome.ok:
            outcome = timed_out(self.timeout, now - self.started)
        with self._lock:
            if self.outcome is not None:
                return
            self.finished, self.outcome, self.fatal = now, outcome, fatal
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    def on_finish(self, callback: Callable[[Run], object]) -> None:
        """Call ``callback(run)`` (from any thread) once the run has finished."""
        with self._lock:
            if self.outcome is None:
                self._callbacks.append(callback)
                return
        callback(self)

    def result(self, now: float) -> Outcome:
        """What a request that stops waiting at ``now`` reports for this run."""
        if self.outcome is not None:
            return self.outcome
        return timed_out(self.timeout, now - self.started)


class Evaluator:
    """Runs fields for one FlaskStatus instance on one app, and keeps each field's last run."""

    def __init__(
        self,
        logger: logging.Logger,
        pool: WorkerPool,
        background_loop: BackgroundLoop,
        default_timeout: float,
        default_cache_ttl: float,
    ) -> None:
        self.logger = logger
        self.pool = pool
        self.background_loop = background_loop
        self.default_timeout = default_timeout
        self.default_cache_ttl = default_cache_ttl
        self._lock = threading.Lock()
        self._latest: dict[str, Run] = {}

    # -- starting runs -------------------------------------------------------------------

    def _claim(self, fields: Iterable[Field]) -> tuple[dict[str, Run], list[Run], list[Run]]:
        """Reuse each field's in-flight or still-fresh run, or create a new one.

        Returns all runs by key, and the new sync and async runs the caller must start.
        """
        runs: dict[str, Run] = {}
        new_sync: list[Run] = []
        new_async: list[Run] = []
        now = time.monotonic()
        with self._lock:
            for field in fields:
                run = self._latest.get(field.key)
                if run is None or run.field is not field or not self._reusable(run, now):
                    timeout = field.timeout if field.timeout is not None else self.default_timeout
                    run = self._latest[field.key] = Run(field, timeout)
                    (new_async if field.kind is Kind.ASYNC else new_sync).append(run)
                runs[field.key] = run
        return runs, new_sync, new_async

    def _reusable(self, run: Run, now: float) -> bool:
        if run.finished is None:
            return True
        ttl = run.field.cache_ttl if run.field.cache_ttl is not None else self.default_cache_ttl
        return now - run.finished < ttl

    def _start_sync(self, runs: list[Run]) -> Batch | None:
        if not runs:
            return None
        # A copy of the context per run, as each would get in a thread of its own.
        return Batch(
            self.pool,
            [
                functools.partial(contextvars.copy_context().run, self._run_sync, run)
                for run in runs
            ],
        )

    def _run_sync(self, run: Run) -> None:
        started = time.perf_counter()
        try:
            value = run.field.value()
            if inspect.isawaitable(value):
                # A plain callable that returned an awaitable: finish it here, on a private loop.
                value = asyncio.run(_awaited(value))
        except FATAL as exc:
            self._finish_failed(run, exc, started, fatal=exc)
        except BaseException as exc:  # any other error belongs to this field
            self._finish_failed(run, exc, started)
        else:
            self._finish(run, Outcome(value, None, time.perf_counter() - started, time.time()))

    def _start_async(self, runs: list[Run]) -> None:
        """Start each run as a task on the running loop (each in a copy of the current context)."""
        Expiry(asyncio.get_running_loop(), runs, self._run_async)

    async def _run_async(self, run: Run, expiry: Expiry) -> None:
        started = time.perf_counter()
        try:
            value = await run.field.value()
        except asyncio.CancelledError as exc:
            if run.expired:
                self._finish_late(run, time.perf_counter() - started)
            else:
                self._finish_failed(run, exc, started)  # raised by the check itself
            return
        except FATAL as exc:
            self._finish_failed(run, exc, started, fatal=exc)
            return
        except BaseException as exc:  # any other error belongs to this field
            self._finish_failed(run, exc, started)
            return
        finally:
            expiry.ended(run)
        duration = time.perf_counter() - started
        if duration > run.timeout:
            self._finish_late(run, duration)
        else:
            self._finish(run, Outcome(value, None, duration, time.time()))

    def _finish_late(self, run: Run, duration: float) -> None:
        """An async check past its deadline; name the cause when it outran its cancellation."""
        outcome = timed_out(run.timeout, duration)
        if duration > run.timeout + OVERRUN_GRACE:
            # Cancellation lands at an await: only a blocking call, or a check that swallows
            # cancellation, runs this far past its deadline. Under ASGI it held up the server.
            outcome = dataclasses.replace(
                outcome,
                error=f"{outcome.error}, yet ran {duration:.2g}s: it blocked the event loop "
                "or ignored cancellation",
            )
        self._finish(run, outcome)

    def _finish(self, run: Run, outcome: Outcome) -> None:
        run.finish(outcome)
        if run.outcome is not None and not run.outcome.ok and not run.timeout_logged:
            run.timeout_logged = True
            self.logger.warning("status field %r: %s", run.field.key, run.outcome.error)

    def _finish_failed(
        self,
        run: Run,
        exc: BaseException,
        started: float,
        fatal: BaseException | None = None,
    ) -> None:
        self.logger.error("status field %r failed", run.field.key, exc_info=exc)
        run.finish(Outcome(None, describe(exc), time.perf_counter() - started, time.time()), fatal)

    # -- evaluating ----------------------------------------------------------------------

    def evaluate_blocking(self, fields: Iterable[Field]) -> dict[str, Outcome]:
        """Evaluate from a WSGI worker thread: async checks go to the background loop."""
        runs, new_sync, new_async = self._claim(fields)
        if not runs:
            return {}
        batch = self._start_sync(new_sync)
        if new_async:
            self.background_loop.call(self._start_async, new_async)
        wait_blocking(runs.values(), batch)
        return self._results(runs)

    async def evaluate(self, fields: Iterable[Field]) -> dict[str, Outcome]:
        """Evaluate on the running event loop (ASGI): async checks run on this loop."""
        runs, new_sync, new_async = self._claim(fields)
        if not runs:
            return {}
        batch = self._start_sync(new_sync)
        if new_async:
            self._start_async(new_async)
        await wait_async(runs.values(), batch)
        return self._results(runs)

    def _results(self, runs: Mapping[str, Run]) -> dict[str, Outcome]:
        now = time.monotonic()
        for run in runs.values():
            if run.fatal is not None:
                raise run.fatal
            if run.outcome is None and not run.timeout_logged:
                run.timeout_logged = True  # once per run, not once per probe
                self.logger.warning(
                    "status field %r: timed out after %gs", run.field.key, run.timeout
                )
        return {key: run.result(now) for key, run in runs.items()}


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class Expiry:
    """The tasks of a batch of async runs, and one loop timer that cancels them at deadlines.

    One timer per batch rather than per task: most runs of a request share their deadline.
    Holding the tasks also keeps them alive until they end (the loop holds tasks weakly).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        runs: list[Run],
        run_async: Callable[[Run, Expiry], Coroutine[Any, Any, None]],
    ) -> None:
        self._loop = loop
        self._tasks: dict[Run, asyncio.Task[None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        for run in runs:
            task = loop.create_task(run_async(run, self))
            if not task.done():  # an eager task factory may have run it to its end already
                self._tasks[run] = task
        self._timer = self._schedule()

    def ended(self, run: Run) -> None:
        """Called by each run's task as it ends."""
        self._tasks.pop(run, None)
        if not self._tasks and self._timer is not None:
            self._timer.cancel()

    def _schedule(self) -> asyncio.TimerHandle | None:
        deadlines = [run.deadline for run in self._tasks if not run.expired]
        if not deadlines:
            return None
        return self._loop.call_later(min(deadlines) - time.monotonic(), self._expire)

    def _expire(self) -> None:
        now = time.monotonic()
        for run, task in self._tasks.items():
            if run.deadline <= now and not run.expired:
                run.expired = True  # tells the task the cancellation is its timeout
                task.cancel()
        self._timer = self._schedule()


class Waiter:
    """The runs one request still waits for; calls ``wake`` once, when the last one finishes."""

    def __init__(self, runs: Iterable[Run], wake: Callable[[], object]) -> None:
        self._lock = threading.Lock()
        self._wake = wake
        self._woken = False
        now = time.monotonic()
        # A run already past its deadline is not waited for: no callback piles up on a hung run.
        self._waiting = {run for run in runs if run.outcome is None and run.deadline > now}
        for run in list(self._waiting):
            run.on_finish(self._finished)

    def _finished(self, run: Run) -> None:
        with self._lock:
            self._waiting.discard(run)
            if self._waiting or self._woken:
                return
            self._woken = True
        self._wake()

    def next_deadline(self, now: float) -> float | None:
        """Drop the runs finished or past their deadline; the earliest deadline left, if any."""
        with self._lock:
            self._waiting = {
                run for run in self._waiting if run.outcome is None and run.deadline > now
            }
            return min((run.deadline for run in self._waiting), default=None)


def wait_blocking(runs: Iterable[Run], batch: Batch | None = None) -> None:
    """Block until every run has finished or passed its deadline.

    ``batch``, the sync runs this request started, is spread after :data:`SPREAD_AFTER`.
    """
    woken = threading.Lock()  # held until the waiter releases it: cheaper than an Event
    woken.acquire()
    waiter = Waiter(runs, woken.release)
    spread_at = time.monotonic() + SPREAD_AFTER if batch is not None else math.inf
    try:
        while True:
            now = time.monotonic()
            if now >= spread_at and batch is not None:
                batch.spread()
                spread_at = math.inf
            deadline = waiter.next_deadline(now)
            if deadline is None:
                return
            woken.acquire(timeout=min(deadline, spread_at) - now)
    finally:
        if batch is not None:
            batch.spread()  # leave no run queued behind a hung one


async def wait_async(runs: Iterable[Run], batch: Batch | None = None) -> None:
    """Wait on the running loop until every run has finished or passed its deadline.

    ``batch``, the sync runs this request started, is spread after :data:`SPREAD_AFTER`.
    """
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    woken = asyncio.Event()

    def wake() -> None:
        if threading.get_ident() == loop_thread:
            woken.set()
            return
        with contextlib.suppress(RuntimeError):  # a closed loop (shutdown) has no waiter left
            loop.call_soon_threadsafe(woken.set)

    waiter = Waiter(runs, wake)
    spreading = loop.call_later(SPREAD_AFTER, batch.spread) if batch is not None else None
    try:
        while True:
            woken.clear()
            now = time.monotonic()
            deadline = waiter.next_deadline(now)
            if deadline is None:
                return
            timer = loop.call_later(deadline - now, woken.set)
            try:
                await woken.wait()
            finally:
                timer.cancel()
    finally:
        if spreading is not None and batch is not None:
            spreading.cancel()
            batch.spread()  # leave no run queued behind a hung one
