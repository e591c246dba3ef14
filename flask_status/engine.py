"""The evaluation engine: a request's callable fields, gathered concurrently with anyio.

One evaluation is one task group. Each field runs under a cancel scope whose deadline is the
field's timeout (the fields of a request that share a timeout share the scope): async checks are
tasks awaited inside it (so ``anyio.current_effective_deadline()`` is the field's deadline
there), sync checks run in anyio worker threads under the instance's capacity limiter and are
abandoned at the deadline.

Runs are *single-flight*: a request that finds a field's check already running waits for that
run (up to the run's deadline) instead of starting another, so a hung check holds one thread
however many probes arrive. It waits in its own task, with no task per run it joined: under a
burst of probes most requests only wait, and a task each cost more than the rest of them. The
request that starts a run hosts it in a shielded scope, so a client that hangs up does not
cancel a run others wait for; the run's own deadline bounds it. A finished run is reused for
``cache_ttl`` seconds, a failed one for ``cache_ttl_failure``.

A field with an ``interval`` runs in the background instead (:meth:`Evaluator.run_every`), and
a request only reads its latest result.

A field with ``depends_on`` starts its run with the others, so its deadline counts from the
request's start too, but its task first waits, on the loop, for its parents' outcomes of the
same evaluation (each through its run's Event); it runs its check only if all of them succeeded,
and is otherwise skipped, naming the root cause (:meth:`Evaluator._host_after_parents`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeGuard

import anyio
from anyio.lowlevel import EventLoopToken, current_token
from flask import Flask

from .appcontext import await_in_app_context, empty_context, own_app_context
from .bell import Bell
from .fields import Field, Kind
from .fork import reset_after_fork
from .loop import run_sync, runs_ahead_host, thread_limiter
from .outcome import (
    Degraded,
    Encode,
    Origin,
    Outcome,
    describe,
    one_line,
    overran,
    timed_out,
    unreportable,
)
from .store import Freshness, Sharing
from .telemetry import Telemetry
from .thresholds import Streak, damp

if TYPE_CHECKING:
    from opentelemetry.trace import Span

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
    #: Seconds the finished run is reused for: its field's ``cache_ttl``, or its
    #: ``cache_ttl_failure`` when the check failed.
    fresh_for: float = 0.0
    thread_busy: bool = False  # a sync check abandoned at its deadline has not returned yet
    joined: int = 0  # requests that came while it ran, and waited for it
    #: When the run whose result this one took from the store began there (Unix time);
    #: ``None`` for a run of this process. Such a result was measured for no request here.
    began_elsewhere: float | None = None
    #: Its OpenTelemetry span, from when its check starts here until the run is over.
    span: Span | None = None

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
        default_cache_ttl_failure: float | None = None,
    ) -> None:
        self.app = app
        self.logger = app.logger
        #: The route's fields as they are now: a field no longer among them is stopped.
        self.fields = fields
        self.encode = encode
        self.default_timeout = default_timeout
        self.default_cache_ttl = default_cache_ttl
        #: ``None``: a failed run is reused as long as a good one (each field's ``cache_ttl``).
        self.default_cache_ttl_failure = default_cache_ttl_failure
        self.max_workers = max_workers
        #: Called with ``(field, outcome)`` once per finished run (not per request served by it).
        self.run_listeners: list[Callable[[Field, Outcome], object]] = []
        #: Called with ``(field, outcome, origin)`` whenever what a field shows may have changed:
        #: once per finished run, with the outcome the field shows (after its thresholds), and
        #: when a background field is found without a recent result.
        self.state_listeners: list[Callable[[Field, Outcome, Origin], object]] = []
        #: Where results are shared with other processes, if anywhere.
        self.sharing: Sharing | None = None
        #: Spans and metrics of the runs of this process, if on.
        self.telemetry: Telemetry | None = None
        self.after_fork()
        reset_after_fork(self)

    def after_fork(self) -> None:
        """Forget runs and threads; called at start and in a forked child, where none exist."""
        self._states: dict[str, FieldState] = {}
        self.limiter = thread_limiter(self.max_workers)
        # For pushing and popping async checks' app contexts in threads: a pop must never wait
        # for a token that sync checks hold. As many as async checks in flight, at most.
        self.context_limiter = thread_limiter(math.inf)

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
        is hosted by a task of its own (quick sync checks with the same timeout share one;
        when all share a deadline, the evaluation's own task hosts the first sync batch); a run
        another request started is waited for, up to its deadline; a finished one still fresh
        is reused at once.
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
        now, clock, loop = time.monotonic(), anyio.current_time(), current_token()
        runs: dict[str, Run] = {}
        waited: list[Run] = []
        quick: dict[float, list[Run]] = {}  # by deadline
        hosted: list[list[Run]] = []
        alone: list[Run] = []  # shared through a store: a scope each (its lease may extend it)
        dependents: list[Run] = []  # hosted once their parents are done
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
            run = runs[item.key] = self._start(state, now, loop, clock)
            if item.depends_on:
                dependents.append(run)
            elif self._shared(item):
                alone.append(run)
            elif item.kind is Kind.SYNC and _was_quick(previous):
                quick.setdefault(run.deadline, []).append(run)
            else:
                hosted.append([run])
        # The batches that share a deadline share a cancel scope. Sync checks first: once in
        # their threads, an async check that blocks the loop cannot keep them from starting
        # before their deadline.
        groups: dict[float, list[list[Run]]] = {}
        for batch in sorted(
            [*quick.values(), *hosted], key=lambda batch: batch[0].field.kind is Kind.ASYNC
        ):
            groups.setdefault(batch[0].deadline, []).append(batch)
        # A joined run is finished by its host once the deadline has cancelled it (a check that
        # returned beside one that hung shows its value): wait for that, up to the grace of a
        # check that outruns it. A dependent's run may end just after its deadline, skipped
        # because of a parent that timed out at that deadline (waited for up to that grace).
        joined = [(run, (2 if run.field.depends_on else 1) * OVERRUN_GRACE) for run in waited]
        if len(groups) == 1 and not alone and not dependents:
            # One deadline for all (the usual): the evaluation's own task hosts them.
            (batches,) = groups.values()
            await self._host_together(batches, in_a_task=False)
        elif groups or alone or dependents:
            async with anyio.create_task_group() as task_group:
                for batches in groups.values():
                    task_group.start_soon(self._host_together, batches, True)
                for run in alone:
                    task_group.start_soon(self._host, [run])
                for run in dependents:
                    task_group.start_soon(self._host_after_parents, run, runs)
        # The runs it joined went on meanwhile: each is over by now, or is waited for up to
        # its own deadline.
        await self._wait(joined)
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
        # A skip is no result of the check: once its parents recover, the check runs at once.
        return now - run.finished_at < run.fresh_for and run.result().state != "skipped"

    def _start(self, state: FieldState, now: float, loop: EventLoopToken, clock: float) -> Run:
        """A new run of the field, from ``now`` (``time.monotonic()``) and ``clock`` (anyio's):
        runs a request starts with one timeout share a deadline."""
        timeout = self._timeout(state.field)
        run = state.latest = Run(state.field, timeout, now, clock + timeout, loop)
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
                run = self._start(state, began, loop, anyio.current_time())
                if item.depends_on:
                    await self._host_after_parents(run, {})
                else:
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
        age = time.monotonic() - run.finished_at if run.finished_at is not None else 0.0
        stale_at = self.stale_at(item)
        if stale_at is not None and time.monotonic() > stale_at:  # the runner died or is stuck
            stale = Outcome(
                error=f"stale: the last result is {age:.0f}s old (interval {item.interval:g}s)",
                measured_at=time.time(),
                error_kind="stale",
            )
            self._tell(self.state_listeners, item, stale, "local")
            return stale
        return run.outcome

    def stale_at(self, item: Field) -> float | None:
        """When (``time.monotonic()``) a background field's latest result turns stale unless
        another comes; ``None`` before its first result."""
        assert item.interval is not None
        run = self._state(item).last_background
        if run is None or run.finished_at is None:
            return None
        late = item.interval + run.timeout
        if self.sharing is not None:
            late += self.sharing.slack(run.timeout)
        return run.finished_at + late

    async def _wait_first_result(self, item: Field, evaluation: Evaluation) -> None:
        """``wait_first``: wait for a background field's first result (:meth:`_latest`)."""
        await self._latest(item, wait=True)
        if not self._read_background(item, evaluation):
            evaluation.outcomes[item.key] = self._no_first_result(item)

    async def _latest(self, item: Field, wait: bool) -> Outcome:
        """A background field's latest result; ``wait``: before its first one, that is waited
        for up to its timeout (and the store's, which the first run may wait for first)."""
        if wait and self._state(item).last_background is None:
            with anyio.move_on_after(self._first_result_timeout(item)):
                await self._state(item).first_result.wait()
        return self.background_result(item) or self._no_first_result(item)

    def _first_result_timeout(self, item: Field) -> float:
        timeout = self._timeout(item)
        if self.sharing is not None:
            timeout += self.sharing.store.timeout
        return timeout

    def _no_first_result(self, item: Field) -> Outcome:
        return Outcome(
            error=f"starting: no result within {self._first_result_timeout(item):g}s",
            measured_at=time.time(),
            error_kind="starting",
        )

    # -- dependencies --------------------------------------------------------------------

    async def _host_after_parents(self, run: Run, runs: Mapping[str, Run]) -> None:
        """A dependent's run: its check once every parent succeeded; else, without running
        it, a skip naming the root cause (or, for a parent that is no field, a failure).

        ``runs`` are the evaluation's runs, its parents' among them; a background run reads its
        parents' latest results instead. The wait is shielded like the run it belongs to (others
        may join it), and has no deadline of its own: each parent's run is waited for up to its
        deadline (and a short grace), which is no later than this run's (a parent's timeout is
        at most its dependent's), so a parent that timed out at this run's deadline, or outran
        it, is still named as the cause.
        """
        started = time.perf_counter()
        with anyio.CancelScope(shield=True):
            blocked = await self._blocked(run.field, runs)
        if blocked is not None:
            self._open_span(run)  # a skip is a run's result too: its span says so
            run.produced = blocked
            self._finish(run, time.perf_counter() - started)
            return
        if run.field.interval is not None:
            # A background run's deadline counts from when its check starts, as for any.
            run.deadline = anyio.current_time() + run.timeout
        await self._host([run])

    async def _blocked(self, item: Field, runs: Mapping[str, Run]) -> Outcome | None:
        """Why ``item`` must not run now: a parent that is no field, or one that did not
        succeed (its parents in their order); ``None`` once all succeeded."""
        # The parents as they are now: one removed while an earlier one is awaited is still
        # waited for, as the request chose its fields before.
        parents = {key: self.fields.get(key) for key in item.depends_on}
        missing = [key for key, parent in parents.items() if parent is None]
        if missing:
            names = ", ".join(repr(key) for key in missing)
            error = f"depends_on: no field {names} (fields: {', '.join(self.fields)})"
            return Outcome(error=one_line(error), measured_at=time.time())
        for key, parent in parents.items():
            assert parent is not None
            outcome = await self._parent_outcome(parent, runs, item.interval is not None)
            if not outcome.ok:
                return Outcome(
                    error=_skip_reason(key, outcome), measured_at=time.time(), error_kind="skipped"
                )
        return None

    async def _parent_outcome(
        self, parent: Field, runs: Mapping[str, Run], for_background: bool
    ) -> Outcome:
        """A parent's outcome: its run in this evaluation (awaited through its Event, no
        thread held), its latest background result, or its constant."""
        if parent.constant is not None:
            return parent.constant
        if parent.interval is not None:
            # A background dependent waits for its parents' first results (no request waits
            # for it); a request waits only as the parent's ``wait_first`` says.
            return await self._latest(parent, parent.wait_first or for_background)
        run = runs.get(parent.key)
        if run is None:  # added since the request chose its fields: its last run, if over
            run = self._state(parent).latest
            if run is None or run.outcome is None:
                return Outcome(
                    error="no result yet", measured_at=time.time(), error_kind="starting"
                )
        else:  # a parent that outran its deadline (it ignores cancellation) has timed out
            await self._wait([(run, OVERRUN_GRACE)])
        return run.result()

    @staticmethod
    async def _wait(runs: Iterable[tuple[Run, float]]) -> None:
        """Wait for ``(run, grace)``'s runs to end, each up to its deadline and its grace.

        The waiting task holds no thread and starts no task: the runs go on meanwhile, so
        waiting for one after another ends once the last is over or due. Runs that share a
        deadline (one request's, with the same timeout) share a cancel scope.
        """
        due: dict[float, list[Run]] = {}
        for run, grace in runs:
            if run.outcome is None:  # not over yet: woken through its Event when it is
                if run.done is None:
                    run.done = anyio.Event()
                due.setdefault(run.deadline + grace, []).append(run)
        for deadline in sorted(due):
            with anyio.CancelScope(deadline=deadline):
                for run in due[deadline]:
                    if run.done is not None and run.outcome is None:
                        await run.done.wait()

    async def _host(self, runs: list[Run]) -> None:
        """Host one batch of runs (or one run shared through a store): :meth:`_host_together`."""
        await self._host_together([runs], in_a_task=True)

    async def _host_together(self, batches: list[list[Run]], in_a_task: bool) -> None:
        """Run batches that share a deadline under one cancel scope, and record each outcome
        and log it as soon as its batch is done.

        The scope is shielded: other requests may wait for these runs, so a client that hangs
        up must not cancel them; the deadline bounds them all the same. (So a cancellation
        inside is the deadline's, or the check's own.) Each batch but the first is a task; this
        task runs the first if it is a sync batch (sent to its thread, in a copy of this
        context) or ``in_a_task`` (a task of its own, not the request's).
        """
        with anyio.CancelScope(shield=True, deadline=batches[0][0].deadline) as scope:
            first = batches[0] if in_a_task or batches[0][0].field.kind is Kind.SYNC else None
            if first is not None and len(batches) == 1:
                await self._run_batch(first, scope)
                return
            async with anyio.create_task_group() as task_group:
                for batch in batches[1:] if first is not None else batches:
                    task_group.start_soon(self._run_batch, batch, scope)
                if first is not None:
                    await self._run_batch(first, scope)

    async def _run_batch(self, runs: list[Run], scope: anyio.CancelScope) -> None:
        """Run a batch's checks (or take a shared run's result) in ``scope``, then, when they
        are done or at the deadline, record each outcome and log it (timed from the batch's
        start: the time it ran, whatever ran before it)."""
        started = time.perf_counter()
        try:
            shared = self._sharing_of(runs[0])
            if shared is None:
                await self._execute(runs, scope)
            else:
                await self._execute_shared(runs[0], scope, *shared)
        except anyio.get_cancelled_exc_class():
            raise  # the deadline's: the scope catches it
        except BaseException as exc:  # around the checks (a worker thread that could not
            # start): their fields', never the request's, nor, out of a task, the event loop's
            for run in runs:
                self._failed(run, exc, started)
        finally:  # at the deadline too: the runs time out
            for run in runs:
                self._finish(run, time.perf_counter() - started)

    def _run_ahead(self, run: Run) -> None:
        """Start the field's next run now, when requests joined this one.

        Probes that arrive together are released together when their shared run ends, and
        come back together: without a run in flight for them then, each wave would wait for
        a whole run plus the gap before the first of them starts one. Single-flight holds:
        there is still one run at a time, and a run nobody joined starts none.
        """
        item, outcome = run.field, run.outcome
        if (
            not run.joined
            or item.interval is not None
            or item.depends_on  # it runs only after its parents, not on its own
            or run.fresh_for > 0  # the cache serves these
            or self._state(item).latest is not run
            or run.thread_busy
            or outcome is None
            or not outcome.ok  # a failing dependency is not hit back to back
            or outcome.duration < QUICK_SECONDS  # cheaper to run than to run ahead
        ):
            return
        host = runs_ahead_host.get()
        if host is None:
            return
        ahead = self._start(self._state(item), time.monotonic(), run.loop, anyio.current_time())
        # No request started it: it must not run in the context of the one that ended.
        empty_context().run(host.start_soon, self._host, [ahead])

    async def _execute(self, runs: list[Run], scope: anyio.CancelScope) -> None:
        """Run the checks here (not served by another process): each opens its span now, in
        the context of whoever started the run (a request's span, or none: a root)."""
        for run in runs:
            self._open_span(run)
        if runs[0].field.kind is Kind.ASYNC:
            await self._await(runs[0], runs[0].field.value, scope)
            return
        await run_sync(functools.partial(self._call_all, runs), self.limiter)
        for run in runs:
            produced = run.produced
            if not isinstance(produced, Outcome) and _awaitable(produced):
                # A plain function returned one: awaited in a task (this may be the request's
                # own), so that what it leaves in its context stays there.
                async with anyio.create_task_group() as task_group:
                    check = functools.partial(_awaited, produced)
                    task_group.start_soon(self._await, run, check, scope)

    def _open_span(self, run: Run) -> None:
        """Open the run's span, in the context of whoever started the run."""
        if self.telemetry is None:
            return
        try:
            run.span = self.telemetry.start(run.field)
        except Exception:  # a broken sampler or processor must not break the field
            self.logger.exception("status telemetry failed for field %r", run.field.key)

    async def _await(
        self, run: Run, check: Callable[[], Awaitable[Any]], scope: anyio.CancelScope
    ) -> None:
        """Await an async check, in an app context of its own, under the run's deadline.

        What its app context's push or pop raises (the app's receivers and teardowns) is its
        field's, as for a sync check: a failure the run ends with (stored, when it is shared),
        ``SystemExit`` included (out of a task, it would stop the event loop), and a
        cancellation of its own (the deadline's is the scope's).
        """
        started = time.perf_counter()
        try:
            await await_in_app_context(
                self.app,
                functools.partial(self._awaited, run, check, scope),
                run.timeout,
                self.context_limiter,
            )
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()) and scope.cancel_called:
                raise  # the deadline's: the scope catches it
            self._failed(run, exc, started)

    def _sharing_of(self, run: Run) -> tuple[Freshness, float] | None:
        """How long a shared result of this run stays fresh (by how it ended), and how long
        its lease lasts; ``None`` for a run not shared across processes."""
        item = run.field
        if not self._shared(item):
            return None
        return self._freshness(item), run.timeout

    def _shared(self, item: Field) -> bool:
        """Whether this field's results are shared with other processes (through a store)."""
        return self.sharing is not None and (
            item.interval is not None or self._freshness(item).longest > 0
        )

    def _freshness(self, item: Field) -> Freshness:
        """How long the field's results are reused: a background field's until its next run,
        another's for its ``cache_ttl``, or ``cache_ttl_failure`` when its check failed."""
        if item.interval is not None:
            return Freshness(item.interval, item.interval)
        ttl = item.cache_ttl if item.cache_ttl is not None else self.default_cache_ttl
        if item.cache_ttl_failure is not None:
            return Freshness(ttl, item.cache_ttl_failure)
        if self.default_cache_ttl_failure is not None:
            return Freshness(ttl, self.default_cache_ttl_failure)
        return Freshness(ttl, ttl)

    async def _execute_shared(
        self, run: Run, scope: anyio.CancelScope, freshness: Freshness, lease_for: float
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

        outcome = await self.sharing.run(run.field.key, execute, freshness, lease_for)
        if outcome is not None and outcome is not run.produced:  # another process's run
            run.produced = outcome
            run.began_elsewhere = outcome.measured_at - outcome.duration

    async def _awaited(
        self, run: Run, check: Callable[[], Awaitable[Any]], scope: anyio.CancelScope
    ) -> None:
        started = time.perf_counter()
        try:
            with self._running(run):
                value = await check()
        except anyio.get_cancelled_exc_class() as exc:
            if scope.cancel_called:
                raise  # the deadline: the scope catches it
            self._failed(run, exc, started)  # raised by the check itself: an error like others
        except Degraded as exc:  # working, but not well: a result, not a failure
            run.produced = self._checked(exc, started)
        except BaseException as exc:  # whatever a check raises belongs to its field
            self._failed(run, exc, started)
        else:
            run.produced = self._checked(value, started)

    def _call_all(self, runs: list[Run]) -> None:
        """In a worker thread: call each sync check in turn, while its run is awaited."""
        for run in runs:
            run.thread_busy = True  # until it returns, even if abandoned at its deadline
            if run.outcome is not None:
                # Its host gave up at the deadline, while a check before it hung: later
                # requests run it again, so this thread must not (busy first: a run that is
                # not yet over here is one they wait for instead).
                run.thread_busy = False
                continue
            started = time.perf_counter()
            try:
                # Its own app context, torn down once it returned (not timed as the check).
                with self._running(run), own_app_context(self.app):
                    try:
                        value = run.field.value()
                    except Degraded as exc:  # working, but not well: a result, not a failure
                        run.produced = self._checked(exc, started)
                    except BaseException as exc:  # whatever a check raises is its field's
                        self._failed(run, exc, started)
                    else:
                        # An awaitable is awaited by the host, on the loop, under the deadline.
                        run.produced = value if _awaitable(value) else self._checked(value, started)
            except BaseException as exc:  # its app context's teardown raised: its field's too
                self._failed(run, exc, started)
            finally:
                run.thread_busy = False

    def _running(self, run: Run) -> contextlib.AbstractContextManager[None]:
        """Where the check runs, its run's span is the current one (when it records)."""
        if run.span is None or self.telemetry is None:
            return _NOTHING
        return self.telemetry.running(run.span)

    def _checked(self, value: Any, started: float) -> Outcome:
        """A returned value as its outcome: checked and sized once, here, not per request.

        A :class:`Degraded` (returned or raised) is its value, with its reason.
        """
        reason = None
        if isinstance(value, Degraded):
            reason, value = one_line(value.reason), value.value
        error = unreportable(value, self.encode)
        duration = time.perf_counter() - started
        if error is not None:
            return Outcome(None, error, duration, time.time())
        return Outcome(value, None, duration, time.time(), degraded=reason)

    @staticmethod
    def _failed(run: Run, exc: BaseException, started: float) -> None:
        run.error = exc
        run.produced = Outcome(None, describe(exc), time.perf_counter() - started, time.time())

    def _finish(self, run: Run, elapsed: float) -> None:
        """Settle the run's outcome (late or missing is a timeout), wake its waiters, log."""
        outcome = run.produced
        # A sync check that never started (held up behind one that hung in its batch, or
        # waiting for a thread): its "timed out" says nothing of its dependency, to reuse.
        never_started = outcome is None and not run.thread_busy and run.field.kind is Kind.SYNC
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
        # By how the check ended, not by what thresholds show: a failure held back as healthy
        # is retried as soon as any other failure.
        run.fresh_for = 0.0 if never_started else self._freshness(run.field).of(outcome)
        state = self._state(run.field)
        if run.field.interval is not None:
            state.last_background = run
        # The next run starts before the waiters wake: they may be many, and each goes on with
        # its whole answer before the loop would get to a run started after them.
        self._run_ahead(run)
        if run.done is not None:
            run.done.set()
        error, run.error = run.error, None
        span, run.span = run.span, None
        if span is not None and self.telemetry is not None:
            try:
                self.telemetry.finish(span, run.field, outcome, error)
            except Exception:  # a broken exporter or processor must not break the field
                self.logger.exception("status telemetry failed for field %r", run.field.key)
        self._log(state, outcome, error)
        if not self.current(run.field):
            return  # a replaced field's run: its key's history and metrics are the new field's
        self._tell(self.run_listeners, run.field, outcome)
        origin: Origin = "local"
        if self._shared(run.field):
            origin = "shared" if run.began_elsewhere is None else "elsewhere"
        self._tell(self.state_listeners, run.field, run.outcome, origin)

    def _tell(self, listeners: list[Callable[..., object]], *args: Any) -> None:
        for listener in listeners:
            try:
                listener(*args)
            except Exception:  # a broken listener must not break the field
                self.logger.exception("status run listener %r failed", listener)

    def _damped(self, item: Field, raw: Outcome) -> Outcome:
        """What the field shows for a run: ``raw``, unless its thresholds hold it back."""
        if item.failure_threshold == item.success_threshold == 1 or raw.state == "skipped":
            return raw  # a skip is not the check's failure: its parent's threshold applied
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
            elif outcome.state == "skipped":  # its parent's failure is logged as its own
                self.logger.info("status field %r %s", key, outcome.error)
            else:
                self.logger.error("status field %r failed: %s", key, outcome.error, exc_info=error)
        except BaseException:  # a broken log handler or filter must not break the field
            pass


def _skip_reason(parent: str, outcome: Outcome) -> str:
    """What a field skipped because of ``parent``'s ``outcome`` reports: the root cause, so a
    field skipped because its parent was skipped repeats its parent's reason."""
    if outcome.state == "skipped" and outcome.error is not None:
        return outcome.error
    if outcome.error_kind == "timed_out":
        return f"skipped: {parent} timed out"
    if outcome.state == "starting":
        return f"skipped: {parent} has no result yet"
    if outcome.state == "stale":
        return f"skipped: {parent} has no recent result"
    return f"skipped: {parent} is failing"


_NOTHING = contextlib.nullcontext()


def _was_quick(run: Run | None) -> bool:
    """Whether a field's last run (a sync check's) was quick and healthy."""
    return (
        run is not None
        and run.outcome is not None
        and run.outcome.ok
        and run.outcome.duration < QUICK_SECONDS
    )


#: What checks return most: never awaitable (``inspect.isawaitable`` costs more than a check).
_PLAIN_TYPES = frozenset({type(None), bool, int, float, str, dict, list, tuple})


def _awaitable(value: Any) -> TypeGuard[Awaitable[Any]]:
    return type(value) not in _PLAIN_TYPES and inspect.isawaitable(value)


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
