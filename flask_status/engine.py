"""The evaluation engine: a request's callable fields, gathered concurrently with anyio.

One evaluation is one task group. Each field is a task under its own cancel scope, whose
deadline is the field's timeout: async checks are awaited inside it (so
``anyio.current_effective_deadline()`` is the field's deadline there), sync checks run in anyio
worker threads under the instance's capacity limiter and are abandoned at the deadline.

Runs are *single-flight*: a request that finds a field's check already running waits for that
run (up to the run's deadline) instead of starting another, so a hung check holds one thread
however many probes arrive. The request that starts a run hosts it in a shielded scope, so a
client that hangs up does not cancel a run others wait for; the run's own deadline bounds it.
A finished run is reused for ``cache_ttl`` seconds.

A field with an ``interval`` runs in the background instead (:meth:`Evaluator.run_every`), and
a request only reads its latest result.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import anyio
from anyio.lowlevel import EventLoopToken, current_token
from flask import Flask

from .appcontext import await_in_app_context, empty_context, own_app_context
from .bell import Bell
from .fields import Field, Kind
from .fork import reset_after_fork
from .loop import run_sync, runs_ahead_host
from .outcome import Encode, Outcome, describe, overran, timed_out, unreportable
from .store import Sharing
from .thresholds import Streak, damp

#: Seconds an async check may run past its deadline before it is reported as having outrun
#: its cancellation (a cancelled check normally ends at its next await, within milliseconds).
OVERRUN_GRACE = 0.05


#: A sync check whose last run took less than this (seconds) is *quick*: the quick checks of a
#: request that share a timeout run one after another in one worker thread hop, where a hop
#: each would cost more thread wake-ups than the checks themselves.
QUICK_SECONDS = 0.001


@dataclasses.dataclass(eq=False)
class Run:
    """One execution of a field's check, shared by every request that waits for it."""

    field: Field
    timeout: float
    started_at: float  # time.monotonic()
    deadline: float  # on anyio's clock, for the cancel scope
    loop: EventLoopToken  # the event loop it runs on: its Event can be awaited only there
    #: Set when the run is over; made by the first request that waits for it (most runs
    #: have none, and an Event per run is not free).
    done: anyio.Event | None = None
    #: What the check produced so far: its outcome, an awaitable a sync check returned, or
    #: ``None`` while it has not returned.
    produced: Outcome | Awaitable[Any] | None = None
    error: BaseException | None = None  # what it raised, kept until logged
    outcome: Outcome | None = None  # final, once the run is over
    finished_at: float | None = None  # time.monotonic(); None while the check still runs
    thread_busy: bool = False  # a sync check abandoned at its deadline has not returned yet
    joined: int = 0  # requests that came while it ran, and waited for it
    #: When the run whose result this one took from the store began there (Unix time);
    #: ``None`` for a run of this process. Such a result was measured for no request here.
    began_elsewhere: float | None = None

    def result(self) -> Outcome:
        """The outcome, or "timed out" for a request that stopped waiting at the deadline."""
        return self.outcome or timed_out(self.timeout, self.timeout)


class FirstResult:
    """Set once a background field has its first result; awaited from any event loop.

    Background runs live on the process's own loop while requests may wait on a server's:
    each waiter is woken on its own loop (see :class:`~.bell.Bell`), and holds no thread.
    """

    def __init__(self) -> None:
        self._set = False
        self._bell = Bell()

    async def wait(self) -> None:
        """Return once the first result is in (the caller's cancel scope bounds the wait)."""
        await self._bell.wait(lambda: self._set)

    async def set(self) -> None:
        """Mark the first result in, and wake every waiter on its own loop."""
        if not self._set:
            await self._bell.ring(self._mark)

    def _mark(self) -> None:
        self._set = True


@dataclasses.dataclass(eq=False)
class FieldState:
    """What the engine keeps of one field between requests.

    Kept per :class:`Field`, not per key: a key added again is a new field, with a fresh
    streak, first-result signal and runs; the old field's state is dropped with it.
    """

    field: Field
    latest: Run | None = None  # its last run, in flight or finished
    last_background: Run | None = None  # a background field's last finished run
    streak: Streak | None = None  # flap damping, once a threshold applies
    failing: bool = False  # whether its last run failed (to log changes only)
    first_result: FirstResult = dataclasses.field(default_factory=FirstResult)


@dataclasses.dataclass
class Evaluation:
    """Every callable field's outcome for one request, and which of them are reused."""

    outcomes: dict[str, Outcome]
    #: Keys whose outcome was not measured for this request: a finished run reused through
    #: ``cache_ttl``, a hung run's shared "timed out", another process's stored result, a
    #: background run's. A run in flight that the request joined is fresh.
    cached: set[str]


class Evaluator:
    """Runs the fields of one FlaskStatus on one app, and keeps each field's latest run."""

    def __init__(
        self,
        app: Flask,
        fields: Mapping[str, Field],
        encode: Encode,
        default_timeout: float,
        default_cache_ttl: float,
        max_workers: int,
    ) -> None:
        self.app = app
        self.logger = app.logger
        #: The route's fields as they are now: a field no longer among them is stopped.
        self.fields = fields
        self.encode = encode
        self.default_timeout = default_timeout
        self.default_cache_ttl = default_cache_ttl
        self.max_workers = max_workers
        #: Called with ``(field, outcome)`` once per finished run (not per request served by it).
        self.run_listeners: list[Callable[[Field, Outcome], object]] = []
        #: Where results are shared with other processes, if anywhere.
        self.sharing: Sharing | None = None
        self.after_fork()
        reset_after_fork(self)

    def after_fork(self) -> None:
        """Forget runs and threads; called at start and in a forked child, where none exist."""
        self._states: dict[str, FieldState] = {}
        self.limiter = anyio.CapacityLimiter(self.max_workers)
        # For pushing and popping async checks' app contexts in threads: a pop must never wait
        # for a token that sync checks hold. As many as async checks in flight, at most.
        self.context_limiter = anyio.CapacityLimiter(math.inf)

    def _state(self, item: Field) -> FieldState:
        """``item``'s state; a field that was replaced gets a throwaway one, never stored."""
        state = self._states.get(item.key)
        if state is not None and state.field is item:
            return state
        state = FieldState(item)
        if self.current(item):
            self._states[item.key] = state
        return state

    def current(self, item: Field) -> bool:
        """Whether ``item`` is still the route's field under its key (not replaced since)."""
        return self.fields.get(item.key) is item

    def _timeout(self, item: Field) -> float:
        return item.timeout if item.timeout is not None else self.default_timeout

    async def evaluate(self, fields: Iterable[Field]) -> Evaluation:
        """Every callable field's outcome, gathered concurrently, each by its deadline.

        A background field's is its latest result. For the others, a run this request starts
        is hosted by a task of its own (quick sync checks with the same timeout share one); a
        run another request started is waited for, up to its deadline; a finished one still
        fresh is reused at once.
        """
        evaluation = Evaluation({}, set())
        on_request: list[Field] = []
        first_results: list[Field] = []  # background fields to wait for (``wait_first``)
        for item in fields:
            if item.interval is None:
                on_request.append(item)
            elif not self._read_background(item, evaluation):
                first_results.append(item)
        if not first_results:
            if on_request:
                await self._run_on_request(on_request, evaluation)
            return evaluation
        async with anyio.create_task_group() as task_group:
            for item in first_results:
                task_group.start_soon(self._wait_first_result, item, evaluation)
            if on_request:
                await self._run_on_request(on_request, evaluation)
        return evaluation

    def latest_background(self, fields: Iterable[Field]) -> Evaluation | None:
        """The background fields' latest results, when ``fields`` has no other callable and
        none needs waiting for: then a request needs no event loop at all."""
        evaluation = Evaluation({}, set())
        for item in fields:
            if item.interval is None or not self._read_background(item, evaluation):
                return None
        return evaluation

    def _read_background(self, item: Field, evaluation: Evaluation) -> bool:
        """Put a background field's latest result in ``evaluation``; False to wait for one."""
        outcome = self.background_result(item)
        if outcome is None:
            return False
        evaluation.outcomes[item.key] = outcome
        last = self._state(item).last_background
        if last is not None and outcome is last.outcome:  # a run's, not "starting"/"stale"
            evaluation.cached.add(item.key)
        return True

    async def _run_on_request(self, fields: list[Field], evaluation: Evaluation) -> None:
        now = time.monotonic()
        loop = current_token()
        runs: dict[str, Run] = {}
        waited: list[Run] = []
        quick: dict[float, list[Run]] = {}  # by timeout
        hosted: list[list[Run]] = []
        for item in fields:
            state = self._state(item)
            previous = state.latest
            if (
                previous is not None
                and item.single_flight
                and self._reusable(previous, item, now, loop)
            ):
                runs[item.key] = previous
                if previous.outcome is None:
                    previous.joined += 1
                    waited.append(previous)
                else:  # finished before this request: the cache, or a hung run's "timed out"
                    evaluation.cached.add(item.key)
                continue
            run = runs[item.key] = self._start(state, now, loop)
            if item.kind is Kind.SYNC and _was_quick(previous) and not self._shared(item):
                quick.setdefault(run.timeout, []).append(run)
            else:
                hosted.append([run])
        # Sync checks first: once in their threads, an async check that blocks the loop
        # cannot keep them from starting before their deadline.
        hosted.sort(key=lambda batch: batch[0].field.kind is Kind.ASYNC)
        async with anyio.create_task_group() as task_group:
            for batch in [*quick.values(), *hosted]:
                task_group.start_soon(self._host, batch)
            for run in waited:
                task_group.start_soon(self._wait, run)
        for key, run in runs.items():
            evaluation.outcomes[key] = run.result()
            if run.began_elsewhere is not None:  # another process's run, read from the store
                evaluation.cached.add(key)

    def _reusable(self, run: Run, item: Field, now: float, loop: EventLoopToken) -> bool:
        """Whether a request may take ``run`` (still running, or fresh) instead of a new one.

        Only the event loop's thread reads and writes a field's runs, so no lock is needed. A
        run in flight on another event loop is not waited for: its Event belongs to that loop.
        """
        if run.outcome is None and run.loop != loop:
            return False
        if run.thread_busy:
            return True  # a hung sync check: its "timed out" stands until its thread returns
        if run.finished_at is None:
            return True
        return now - run.finished_at < self._cache_ttl(item)

    def _start(self, state: FieldState, now: float, loop: EventLoopToken) -> Run:
        timeout = self._timeout(state.field)
        deadline = anyio.current_time() + timeout
        run = state.latest = Run(state.field, timeout, now, deadline, loop)
        return run

    # -- background fields ---------------------------------------------------------------

    async def run_every(self, item: Field) -> None:
        """Run a background field's check every ``item.interval`` seconds, until cancelled.

        While a sync check abandoned at its deadline still runs, each tick records another
        "timed out" instead of starting a second thread.
        """
        assert item.interval is not None
        loop = current_token()
        while self.current(item):  # a field replaced under its key stops at its next tick
            began = time.monotonic()
            state = self._state(item)
            previous = state.latest
            if previous is not None and previous.thread_busy:
                self._finish(previous, began - previous.started_at)
            else:
                run = self._start(state, began, loop)
                await self._host([run])
                if run.began_elsewhere is not None:
                    # Another process ran it: tick one interval after it did, as it will, so
                    # that the fleet keeps the interval.
                    elsewhere = time.monotonic() - (time.time() - run.began_elsewhere)
                    began = min(began, elsewhere)
            await state.first_result.set()
            await anyio.sleep(max(0.0, began + item.interval - time.monotonic()))

    def background_result(self, item: Field) -> Outcome | None:
        """A background field's latest result; ``None`` when a request should wait for one."""
        assert item.interval is not None
        run = self._state(item).last_background
        if run is None or run.outcome is None:
            if item.wait_first:
                return None
            return Outcome(
                error="starting: no result yet", measured_at=time.time(), error_kind="starting"
            )
        assert run.finished_at is not None
        age = time.monotonic() - run.finished_at
        late = item.interval + run.timeout
        if self.sharing is not None:
            late += self.sharing.slack(run.timeout)
        if age > late:  # the runner died or is stuck
            return Outcome(
                error=f"stale: the last result is {age:.0f}s old (interval {item.interval:g}s)",
                measured_at=time.time(),
                error_kind="stale",
            )
        return run.outcome

    async def _wait_first_result(self, item: Field, evaluation: Evaluation) -> None:
        """``wait_first``: wait for a background field's first result, up to its timeout
        (and the store's, which the first run may wait for before it starts)."""
        timeout = self._timeout(item)
        if self.sharing is not None:
            timeout += self.sharing.store.timeout
        with anyio.move_on_after(timeout):
            await self._state(item).first_result.wait()
        if not self._read_background(item, evaluation):
            evaluation.outcomes[item.key] = Outcome(
                error=f"starting: no result within {timeout:g}s",
                measured_at=time.time(),
                error_kind="starting",
            )

    @staticmethod
    async def _wait(run: Run) -> None:
        if run.outcome is not None:  # it ended before this task started
            return
        if run.done is None:
            run.done = anyio.Event()
        with anyio.CancelScope(deadline=run.deadline):
            await run.done.wait()

    async def _host(self, runs: list[Run]) -> None:
        """Run checks under their (shared) deadline, then record each outcome and log it.

        The scope is shielded: other requests may wait for these runs, so a client that hangs
        up must not cancel them; the deadline bounds them all the same. (So a cancellation
        inside is the deadline's, or the check's own.)
        """
        started = time.perf_counter()
        try:
            with anyio.CancelScope(shield=True, deadline=runs[0].deadline) as scope:
                shared = self._sharing_of(runs[0])
                if shared is None:
                    await self._execute(runs, scope)
                else:
                    await self._execute_shared(runs[0], scope, *shared)
        except Exception as exc:  # around the check (its app context's push or pop): its field's
            for run in runs:
                self._failed(run, exc, started)
        for run in runs:
            self._finish(run, time.perf_counter() - started)
            self._run_ahead(run)

    def _run_ahead(self, run: Run) -> None:
        """Start the field's next run now, when requests joined this one.

        Probes that arrive together are released together when their shared run ends, and
        come back together: without a run in flight for them then, each wave would wait for
        a whole run plus the gap before the first of them starts one. Single-flight holds:
        there is still one run at a time, and a run nobody joined starts none.
        """
        item, outcome, host = run.field, run.outcome, runs_ahead_host.get()
        if (
            host is None
            or not run.joined
            or item.interval is not None
            or self._cache_ttl(item) > 0  # the cache serves these
            or self._state(item).latest is not run
            or run.thread_busy
            or outcome is None
            or not outcome.ok  # a failing dependency is not hit back to back
            or outcome.duration < QUICK_SECONDS  # cheaper to run than to run ahead
        ):
            return
        ahead = self._start(self._state(item), time.monotonic(), run.loop)
        # No request started it: it must not run in the context of the one that ended.
        empty_context().run(host.start_soon, self._host, [ahead])

    async def _execute(self, runs: list[Run], scope: anyio.CancelScope) -> None:
        if runs[0].field.kind is Kind.ASYNC:
            await self._await(runs[0], runs[0].field.value, scope)
            return
        await run_sync(functools.partial(self._call_all, runs), self.limiter)
        for run in runs:
            if inspect.isawaitable(run.produced):  # a plain function returned one
                await self._await(run, functools.partial(_awaited, run.produced), scope)

    async def _await(
        self, run: Run, check: Callable[[], Awaitable[Any]], scope: anyio.CancelScope
    ) -> None:
        """Await an async check, in an app context of its own, under the run's deadline."""
        await await_in_app_context(
            self.app,
            functools.partial(self._awaited, run, check, scope),
            run.timeout,
            self.context_limiter,
        )

    def _sharing_of(self, run: Run) -> tuple[float, float] | None:
        """How long a shared result of this run stays fresh, and how long its lease lasts;
        ``None`` for a run not shared across processes."""
        item = run.field
        if not self._shared(item):
            return None
        fresh_for = item.interval if item.interval is not None else self._cache_ttl(item)
        return fresh_for, run.timeout

    def _shared(self, item: Field) -> bool:
        """Whether this field's results are shared with other processes (through a store)."""
        return self.sharing is not None and (item.interval is not None or self._cache_ttl(item) > 0)

    def _cache_ttl(self, item: Field) -> float:
        return item.cache_ttl if item.cache_ttl is not None else self.default_cache_ttl

    async def _execute_shared(
        self, run: Run, scope: anyio.CancelScope, fresh_for: float, lease_for: float
    ) -> None:
        """A result from the store, another process's, or this run's (then stored).

        A background check's timeout is its own, not the store's: its deadline counts from
        when it starts, however long the store took before (no request waits for the run).
        """
        assert self.sharing is not None
        background = run.field.interval is not None
        if background:
            scope.deadline += self.sharing.store.timeout

        async def execute() -> Outcome | None:
            if background:
                scope.deadline = max(scope.deadline, anyio.current_time() + run.timeout)
            await self._execute([run], scope)
            return run.produced if isinstance(run.produced, Outcome) else None

        outcome = await self.sharing.run(run.field.key, execute, fresh_for, lease_for)
        if outcome is not None and outcome is not run.produced:  # another process's run
            run.produced = outcome
            run.began_elsewhere = outcome.measured_at - outcome.duration

    async def _awaited(
        self, run: Run, check: Callable[[], Awaitable[Any]], scope: anyio.CancelScope
    ) -> None:
        started = time.perf_counter()
        try:
            value = await check()
        except anyio.get_cancelled_exc_class() as exc:
            if scope.cancel_called:
                raise  # the deadline: the scope catches it
            self._failed(run, exc, started)  # raised by the check itself: an error like others
        except BaseException as exc:  # whatever a check raises belongs to its field
            self._failed(run, exc, started)
        else:
            run.produced = self._checked(value, started)

    def _call_all(self, runs: list[Run]) -> None:
        """In a worker thread: call each sync check in turn."""
        for run in runs:
            run.thread_busy = True  # until it returns, even if abandoned at its deadline
            started = time.perf_counter()
            try:
                # Its own app context, torn down once it returned (not timed as the check).
                with own_app_context(self.app):
                    try:
                        value = run.field.value()
                    except BaseException as exc:  # whatever a check raises is its field's
                        self._failed(run, exc, started)
                    else:
                        # An awaitable is awaited by the host, on the loop, under the deadline.
                        run.produced = (
                            value if inspect.isawaitable(value) else self._checked(value, started)
                        )
            except Exception as exc:  # its app context's teardown raised: its field's too
                self._failed(run, exc, started)
            finally:
                run.thread_busy = False

    def _checked(self, value: Any, started: float) -> Outcome:
        """A returned value as its outcome: checked and sized once, here, not per request."""
        error = unreportable(value, self.encode)
        duration = time.perf_counter() - started
        return Outcome(None if error else value, error, duration, time.time())

    @staticmethod
    def _failed(run: Run, exc: BaseException, started: float) -> None:
        run.error = exc
        run.produced = Outcome(None, describe(exc), time.perf_counter() - started, time.time())

    def _finish(self, run: Run, elapsed: float) -> None:
        """Settle the run's outcome (late or missing is a timeout), wake its waiters, log."""
        outcome = run.produced
        if not isinstance(outcome, Outcome) or outcome.duration > run.timeout:
            outcome = timed_out(run.timeout, elapsed)
            # A shared run may also have waited for the store (up to its timeout) first.
            allowed = run.timeout + OVERRUN_GRACE
            if self.sharing is not None and self._shared(run.field):
                allowed += self.sharing.store.timeout
            if elapsed > allowed and run.field.kind is Kind.ASYNC:
                outcome = overran(outcome)
        run.outcome = self._damped(run.field, outcome)
        # A result shared by another process is as old as it was when measured there.
        age = max(0.0, time.time() - outcome.measured_at)
        run.finished_at, run.produced = time.monotonic() - age, None
        state = self._state(run.field)
        if run.field.interval is not None:
            state.last_background = run
        if run.done is not None:
            run.done.set()
        error, run.error = run.error, None
        self._log(state, outcome, error)
        if not self.current(run.field):
            return  # a replaced field's run: its key's history and metrics are the new field's
        for listener in self.run_listeners:
            try:
                listener(run.field, outcome)
            except Exception:  # a broken listener must not break the field
                self.logger.exception("status run listener %r failed", listener)

    def _damped(self, item: Field, raw: Outcome) -> Outcome:
        """What the field shows for a run: ``raw``, unless its thresholds hold it back."""
        if item.failure_threshold == item.success_threshold == 1:
            return raw
        state = self._state(item)
        if state.streak is None:
            state.streak = Streak()
        return damp(state.streak, raw, item.failure_threshold, item.success_threshold)

    def _log(self, state: FieldState, outcome: Outcome, error: BaseException | None) -> None:
        """Log state changes: the first failure at ERROR, repeats at DEBUG, recovery at INFO."""
        key, was_failing = state.field.key, state.failing
        state.failing = not outcome.ok
        try:
            if outcome.ok:
                if was_failing:
                    self.logger.info("status field %r recovered", key)
            elif was_failing:
                self.logger.debug("status field %r still failing: %s", key, outcome.error)
            else:
                self.logger.error("status field %r failed: %s", key, outcome.error, exc_info=error)
        except BaseException:  # a broken log handler or filter must not break the field
            pass


def _was_quick(run: Run | None) -> bool:
    """Whether a field's last run (a sync check's) was quick and healthy."""
    return (
        run is not None
        and run.outcome is not None
        and run.outcome.ok
        and run.outcome.duration < QUICK_SECONDS
    )


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
