"""Change events: ``listener(event)`` once per change of a field's state or a route's.

Three pieces. :class:`Tracker` is pure: each field's state and the route's overall state as
this process last saw them, and the changes a new observation makes. :class:`Events` feeds it
from the engine (under a lock: runs finish on any event loop) and queues what it finds, in
order. One dispatcher task per route, on the process's own loop, takes the queue in order,
asks the store whether a change shared by the fleet is news there (so that one process
announces it), and hands each event to one delivery task per listener, which calls it under
its timeout: a listener that hangs delays only its own later events, and no probe waits for
any of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from typing import Any

import anyio
import anyio.to_thread
from anyio.lowlevel import EventLoopToken, current_token
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .aggregate import Health
from .appcontext import empty_context
from .engine import Evaluator
from .fields import Field, check_seconds, is_async_callable
from .fork import reset_after_fork
from .loop import portal_loop, raise_if_cancelled, run_sync, runs_ahead_host, thread_limiter
from .outcome import Origin, Outcome

#: Events waiting for one listener, at most; past it the newest are dropped (and logged): a
#: listener that cannot keep up must not hold the process's memory.
MAX_QUEUED = 1000

#: Seconds a listener may take unless ``on_change(..., timeout=)`` says otherwise.
DEFAULT_TIMEOUT = 5.0

#: Seconds a route announces what it sees without asking the store, once the store did not
#: answer: asked for each event in turn, a silent store would hold each for its timeout.
STORE_RETRY_SECONDS = 5.0

#: Overall states of one process, never the fleet's.
_PER_PROCESS = frozenset({Health.STARTING.value, Health.DRAINING.value})

#: What a route's overall state is, given its fields' outcomes (``None`` while some field has
#: none yet): one of :class:`~flask_status.aggregate.Health`'s values, or ``None``.
Overall = Callable[[Mapping[str, Outcome] | None], str | None]
#: The keys of a route's fields that have states (its callable fields), as they are now.
Keys = Callable[[], Collection[str]]


@dataclasses.dataclass(frozen=True)
class ChangeEvent:
    """A change of state: of field ``key``, or of the route's overall state (``key=None``).

    ``old`` is ``None`` for the first state seen. ``at`` is when it was noticed (Unix time).
    ``outcome`` is the field's outcome that shows the new state (``None`` for the route's).
    """

    route: str
    key: str | None
    old: str | None
    new: str
    at: float
    outcome: Outcome | None


@dataclasses.dataclass(frozen=True)
class Change:
    """A change the tracker found; ``fleet``: to announce only if the fleet's store agrees
    it is news (then its ``old`` is the fleet's)."""

    key: str | None
    old: str | None
    new: str
    outcome: Outcome | None
    fleet: bool = False


class Tracker:
    """Each field's state and the route's overall state, as this process last saw them."""

    def __init__(self) -> None:
        self.fields: dict[str, Outcome] = {}
        self.overall: str | None = None

    def state(self, key: str) -> str | None:
        outcome = self.fields.get(key)
        return outcome.state if outcome is not None else None

    def field(
        self, key: str, outcome: Outcome, origin: Origin, keys: Keys, overall: Overall
    ) -> list[Change]:
        """Record what field ``key`` shows now, and return the changes to announce.

        A state of this process alone (a field not shared, ``stale``, or leaving ``stale``)
        is announced when it changes. A shared field's run is offered to the fleet each time,
        changed here or not (this process may have missed the fleet's last changes); another
        process's result, read from the store, is that process's to announce.
        """
        old = self.state(key)
        self.fields[key] = outcome
        new = outcome.state
        if new == old and origin != "shared":
            return []  # nor can the overall state have changed (most runs: kept cheap)
        if origin == "local" or "stale" in (old, new):
            changes = [Change(key, old, new, outcome)] if new != old else []
            return changes + self._recompute(keys, overall, fleet=False)
        if origin == "elsewhere":
            self._recompute(keys, overall, fleet=False)
            return []
        return [Change(key, old, new, outcome, fleet=True), *self._recompute(keys, overall, True)]

    def readiness(self, keys: Keys, overall: Overall) -> list[Change]:
        """Recompute the overall state when readiness may have changed (STARTING, DRAINING)."""
        return self._recompute(keys, overall, fleet=False)

    def _recompute(self, current: Keys, overall: Overall, fleet: bool) -> list[Change]:
        keys = current()
        complete = all(key in self.fields for key in keys)
        new = overall({key: self.fields[key] for key in keys} if complete else None)
        old, self.overall = self.overall, new if new is not None else self.overall
        fleet = fleet and new not in _PER_PROCESS
        if new is None or (new == old and not fleet):
            return []
        return [Change(None, old, new, None, fleet)]


@dataclasses.dataclass(eq=False)
class Subscription:
    """One ``on_change`` listener, its timeout, and whether it failed before."""

    listener: Callable[[ChangeEvent], Any]
    timeout: float
    failed: bool = False
    #: A sync listener's call runs (maybe abandoned at its timeout): while it does, no other
    #: starts, so that one that hangs holds one thread, not one per event.
    running: bool = False
    limiter: anyio.CapacityLimiter = dataclasses.field(default_factory=lambda: thread_limiter(1))

    def call(self, event: ChangeEvent) -> None:
        """Call a sync listener (in a worker thread)."""
        self.running = True
        try:
            self.listener(event)
        finally:
            self.running = False


class StillRunning(Exception):
    """A sync listener's call for an earlier event has not returned yet."""


def check_timeout(timeout: Any) -> float:
    """Validate ``on_change``'s ``timeout``."""
    return check_seconds("on_change: timeout", timeout)


def subscription(listener: Any, timeout: Any) -> Subscription:
    """Validate ``on_change``'s arguments."""
    if not callable(listener):
        raise TypeError(f"on_change: listener must be callable, got {type(listener).__name__}")
    return Subscription(listener, check_timeout(timeout))


class Events:
    """The change events of one status route: tracked, queued, deduplicated, delivered."""

    def __init__(
        self,
        route: str,
        subscriptions: list[Subscription],
        evaluator: Evaluator,
        overall: Overall,
        callables: Callable[[], Collection[Field]],
    ) -> None:
        self.route = route
        self.subscriptions = subscriptions  # the registration's: listeners added later count
        self.evaluator = evaluator
        self.logger = evaluator.logger
        self._overall = overall
        self._callables = callables
        self.after_fork()
        reset_after_fork(self)

    def after_fork(self) -> None:
        """Start afresh: a forked child has no dispatcher, and announces its own states."""
        self._lock = threading.Lock()
        self.tracker = Tracker()
        self._queued: deque[tuple[Change, float]] = deque()
        #: How to wake the dispatcher, and the loop it runs on.
        self._wake: tuple[MemoryObjectSendStream[None], EventLoopToken] | None = None
        self._store_failed = False
        self._store_retry_at = 0.0  # time.monotonic(): asked again from then on
        for subscription in self.subscriptions:  # a call of the parent's runs in no thread here
            subscription.running = False

    # -- what the engine and the route tell -----------------------------------------------

    def field_shows(self, item: Field, outcome: Outcome, origin: Origin) -> None:
        """An ``Evaluator.state_listeners`` callback: what ``item`` shows now."""
        if not self.subscriptions:
            return
        self._found(
            lambda: self.tracker.field(item.key, outcome, origin, self._keys, self._overall)
        )

    def readiness_looked(self) -> None:
        """The route looked at its readiness (STARTING, DRAINING) and may answer otherwise."""
        if not self.subscriptions:
            return
        self._found(lambda: self.tracker.readiness(self._keys, self._overall))

    def _keys(self) -> list[str]:
        return [field.key for field in self._callables()]

    def _found(self, track: Callable[[], list[Change]]) -> None:
        with self._lock:  # tracked and queued in one step: events keep their order
            changes = track()
            now = time.time()
            self._queued.extend((change, now) for change in changes)
        if changes:
            self._hand_over()

    def _hand_over(self) -> None:
        """Wake the dispatcher, on the process's loop, from wherever the changes were found."""
        if portal_loop.here():
            self._poke()
            return
        try:
            host = runs_ahead_host.get()
        except RuntimeError:  # no event loop here: a WSGI request's thread, which may wait
            host = None
        if host is None:  # (or a server's loop without lifespan: as background runs start)
            portal_loop.start_soon(self._poke_async)
            return
        # On a server's loop: a thread waits for the process's loop to take it, not this loop.
        empty_context().run(
            host.start_soon, anyio.to_thread.run_sync, portal_loop.start_soon, self._poke_async
        )

    async def _poke_async(self) -> None:
        self._poke()

    def _poke(self) -> None:
        """On the process's loop: wake the dispatcher, started first if it does not run."""
        if self._wake is None or self._wake[1] != current_token():
            # None yet, or one on a loop gone (a check stopped it): start one on this loop.
            send, receive = anyio.create_memory_object_stream[None](1)
            self._wake = (send, current_token())
            host = runs_ahead_host.get()
            assert host is not None  # the process's loop has one while it runs
            # No request started it: it must not run in the context of the one that did.
            empty_context().run(host.start_soon, self._dispatch, receive)
        with contextlib.suppress(anyio.WouldBlock):  # woken already
            self._wake[0].send_nowait(None)

    # -- the dispatcher, on the process's loop --------------------------------------------

    async def _dispatch(self, wake: MemoryObjectReceiveStream[None]) -> None:
        outlets: dict[int, MemoryObjectSendStream[ChangeEvent]] = {}
        mine = self._wake
        try:
            async with anyio.create_task_group() as deliveries:
                while True:
                    with anyio.move_on_after(self._until_next_look()):
                        await wake.receive()
                    self._look()
                    for subscription in self.subscriptions:  # listeners added since
                        if id(subscription) not in outlets:
                            send, receive = anyio.create_memory_object_stream[ChangeEvent](
                                MAX_QUEUED
                            )
                            outlets[id(subscription)] = send
                            deliveries.start_soon(self._deliver, subscription, receive)
                    while self._queued:
                        change, at = self._queued.popleft()
                        event = await self._confirmed(change, at)
                        if event is not None:
                            self._hand_out(event, outlets)
        except Exception:  # a bug of ours: it must not stop the loop it shares with the checks
            self.logger.exception("status change events of %s stopped", self.route)
        finally:
            if self._wake is mine:  # the next change starts another
                self._wake = None

    def _until_next_look(self) -> float:
        """Seconds until a background field's result turns stale, unless another comes."""
        now, soonest = time.monotonic(), math.inf
        for item in self._callables():
            if item.interval is None or self.tracker.state(item.key) == "stale":
                continue
            stale_at = self.evaluator.stale_at(item)
            if stale_at is not None:
                soonest = min(soonest, stale_at - now)
        return max(0.0, soonest) + 0.01

    def _look(self) -> None:
        """Look at what nothing asked about lately: results turned stale, readiness."""
        now = time.monotonic()
        for item in self._callables():
            if item.interval is not None and self.tracker.state(item.key) != "stale":
                stale_at = self.evaluator.stale_at(item)
                if stale_at is not None and stale_at < now:
                    self.evaluator.background_result(item)  # tells field_shows if stale
        self.readiness_looked()

    async def _confirmed(self, change: Change, at: float) -> ChangeEvent | None:
        """The event for ``change``; ``None`` when it is no change, or another process of the
        fleet announced it."""
        old = change.old
        sharing = self.evaluator.sharing
        # An overall state this process announces on its own is the fleet's last one too
        # (unless it is the process's own STARTING or DRAINING): a shared field's run that
        # leaves it so is then no change.
        recorded = change.key is None and change.new not in _PER_PROCESS
        if (
            sharing is not None
            and sharing.unavailable is None
            and (change.fleet or recorded)
            and time.monotonic() >= self._store_retry_at
        ):
            try:
                changed, fleet_old = await sharing.announce(change.key, change.new)
            except Exception as exc:  # the store failed: this process announces what it saw
                log = self.logger.debug if self._store_failed else self.logger.warning
                self._store_failed = True
                self._store_retry_at = time.monotonic() + STORE_RETRY_SECONDS
                log("status change events: the store did not answer, announcing here: %r", exc)
            else:
                self._store_failed = False
                if change.fleet and not changed:
                    return None
                if change.fleet:
                    old = fleet_old
        if old == change.new:
            return None
        return ChangeEvent(self.route, change.key, old, change.new, at, change.outcome)

    def _hand_out(
        self, event: ChangeEvent, outlets: Mapping[int, MemoryObjectSendStream[ChangeEvent]]
    ) -> None:
        for subscription in self.subscriptions:
            try:
                outlets[id(subscription)].send_nowait(event)
            except anyio.WouldBlock:
                self.logger.warning(
                    "status change listener %r is %d events behind: dropped %s",
                    subscription.listener,
                    MAX_QUEUED,
                    event,
                )

    async def _deliver(
        self, subscription: Subscription, events: MemoryObjectReceiveStream[ChangeEvent]
    ) -> None:
        """Call one listener with each of its events in turn, each call under its timeout."""
        listener = subscription.listener
        async for event in events:
            try:
                with anyio.fail_after(subscription.timeout):
                    if is_async_callable(listener):
                        await listener(event)
                    elif subscription.running:
                        raise StillRunning
                    else:
                        call = functools.partial(subscription.call, event)
                        await run_sync(call, subscription.limiter)
            except BaseException as exc:  # its failure is its own (SystemExit included, and
                # a cancellation of its own): the next event goes on, and the loop
                await raise_if_cancelled(exc)  # the loop stops: so do deliveries
                self._failed(subscription, event, exc)

    def _failed(self, subscription: Subscription, event: ChangeEvent, exc: BaseException) -> None:
        level = logging.DEBUG if subscription.failed else logging.ERROR
        subscription.failed = True
        exc_info: BaseException | None = None
        if isinstance(exc, TimeoutError):
            message = f"did not return within {subscription.timeout:g}s"
        elif isinstance(exc, StillRunning):
            message = "was not called: its call for an earlier event has not returned"
        else:
            message, exc_info = "raised", exc
        with contextlib.suppress(Exception):  # a broken log handler must not stop deliveries
            self.logger.log(
                level,
                "status change listener %r %s (event %s)",
                subscription.listener,
                message,
                event,
                exc_info=exc_info,
            )
