"""The evaluation engine: runs a request's callable fields concurrently, each under its timeout.

Sync checks run in worker threads; async checks run together in one anyio task group on an
event loop (the server's under ASGI, a shared background loop under WSGI). Every run is
*single-flight*: requests that arrive while a field's check is in flight wait for that run
instead of starting another, so a hung check holds one thread however many probes arrive.
A finished run is reused for ``cache_ttl`` seconds.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Iterable, Mapping
from typing import Any, Callable, Optional

import anyio

from .fields import Field, Kind
from .outcome import Outcome, describe, timed_out
from .workers import BackgroundLoop, WorkerPool, spawn_task

# Errors a check may raise that must reach the server rather than be turned into a field error.
FATAL = (KeyboardInterrupt, SystemExit)


class Run:
    """One execution of a field's check, shared by every request that waits for it."""

    def __init__(self, field: Field, timeout: float) -> None:
        self.field = field
        self.timeout = timeout
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.finished: Optional[float] = None
        self.outcome: Optional[Outcome] = None
        self.fatal: Optional[BaseException] = None
        self.timeout_logged = False
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], object]] = []

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def finish(self, outcome: Outcome, fatal: Optional[BaseException] = None) -> None:
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
            callback()

    def on_finish(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` (from any thread) once the run has finished."""
        with self._lock:
            if self.outcome is None:
                self._callbacks.append(callback)
                return
        callback()

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

    def _start_sync(self, runs: list[Run]) -> None:
        for run in runs:
            # Each thread needs its own copy: one Context cannot be entered by two threads.
            context = contextvars.copy_context()
            self.pool.submit(lambda run=run, context=context: context.run(self._run_sync, run))

    def _run_sync(self, run: Run) -> None:
        started = time.perf_counter()
        try:
            value = run.field.value()
            if inspect.isawaitable(value):
                # A plain callable that returned an awaitable: finish it here, on a private loop.
                value = asyncio.run(_awaited(value))
        except FATAL as exc:
            self._finish_failed(run, exc, started, fatal=exc)
        except BaseException as exc:  # noqa: BLE001 - any other error belongs to this field
            self._finish_failed(run, exc, started)
        else:
            self._finish(run, Outcome(value, None, time.perf_counter() - started, time.time()))

    async def _run_async_batch(self, runs: list[Run]) -> None:
        async with anyio.create_task_group() as task_group:
            for run in runs:
                task_group.start_soon(self._run_async, run)

    async def _run_async(self, run: Run) -> None:
        started = time.perf_counter()
        with anyio.move_on_after(run.deadline - time.monotonic()) as scope:
            try:
                value = await run.field.value()
            except anyio.get_cancelled_exc_class() as exc:
                if scope.cancel_called:
                    raise  # our timeout: the scope absorbs it
                self._finish_failed(run, exc, started)  # raised by the check itself
                return
            except FATAL as exc:
                self._finish_failed(run, exc, started, fatal=exc)
                return
            except BaseException as exc:  # noqa: BLE001 - any other error belongs to this field
                self._finish_failed(run, exc, started)
                return
            self._finish(run, Outcome(value, None, time.perf_counter() - started, time.time()))
        if scope.cancelled_caught:
            self._finish(run, timed_out(run.timeout, time.perf_counter() - started))

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
        fatal: Optional[BaseException] = None,
    ) -> None:
        self.logger.error("status field %r failed", run.field.key, exc_info=exc)
        run.finish(Outcome(None, describe(exc), time.perf_counter() - started, time.time()), fatal)

    # -- evaluating ----------------------------------------------------------------------

    def evaluate_blocking(self, fields: Iterable[Field]) -> dict[str, Outcome]:
        """Evaluate from a WSGI worker thread: async checks go to the background loop."""
        runs, new_sync, new_async = self._claim(fields)
        self._start_sync(new_sync)
        if new_async:
            self.background_loop.spawn(lambda: self._run_async_batch(new_async))
        wait_blocking(runs.values())
        return self._results(runs)

    async def evaluate(self, fields: Iterable[Field]) -> dict[str, Outcome]:
        """Evaluate on the running event loop (ASGI): async checks run on this loop."""
        runs, new_sync, new_async = self._claim(fields)
        self._start_sync(new_sync)
        if new_async:
            spawn_task(asyncio.get_running_loop(), lambda: self._run_async_batch(new_async))
        await wait_async(runs.values())
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


def _open(runs: Iterable[Run], now: float) -> list[Run]:
    """Runs still worth waiting for: unfinished and before their deadline."""
    return [run for run in runs if run.outcome is None and run.deadline > now]


def wait_blocking(runs: Iterable[Run]) -> None:
    """Block until every run has finished or passed its deadline."""
    runs = list(runs)
    woken = threading.Event()
    for run in runs:
        run.on_finish(woken.set)
    while True:
        woken.clear()
        now = time.monotonic()
        pending = _open(runs, now)
        if not pending:
            return
        woken.wait(min(run.deadline for run in pending) - now)


async def wait_async(runs: Iterable[Run]) -> None:
    """Wait on the running loop until every run has finished or passed its deadline."""
    runs = list(runs)
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()

    def wake() -> None:
        loop.call_soon_threadsafe(woken.set)

    for run in runs:
        run.on_finish(wake)
    while True:
        woken.clear()
        now = time.monotonic()
        pending = _open(runs, now)
        if not pending:
            return
        with anyio.move_on_after(min(run.deadline for run in pending) - now):
            await woken.wait()
