"""Sharing check results across processes (gunicorn workers, pods) through Redis.

For a field with a ``cache_ttl`` (or ``cache_ttl_failure``) or an ``interval``, a fresh result
in the store serves every process; when there is none, one process takes a lease (``SET NX
PX``) and runs the check, and the others wait for its result (notified through pub/sub, up to
the field's deadline). A lease expires, so a process that dies mid-check blocks nobody for
longer than the lease. How long a result stays fresh depends on how it ended: a failed one is
kept for ``cache_ttl_failure``.
Values are JSON outcomes, size-limited; nothing stored is ever executed.

The store is a dependency too: when it is down or slow, every process evaluates locally, as
without a store, and says so; sharing resumes as soon as it answers again.

A stored result is the run of the process that stored it, known by its ``measured_at``: each
process takes it at most once (a result no newer than the last it has, its own or read before,
is not news), and only when it is well-formed and no older than the field's freshness allows.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, cast, get_args

import anyio
from anyio.lowlevel import EventLoopToken, current_token

from .extras import requires_extra
from .fields import MAX_SECONDS, check_seconds
from .fork import reset_after_fork
from .outcome import MAX_FIELD_BYTES, ErrorKind, Outcome, describe
from .redact import redact_url

#: Largest stored outcome read back: a value's limit plus room for the rest of the outcome.
MAX_STORED_BYTES = MAX_FIELD_BYTES + 4096

#: Seconds another host's clock may be ahead of or behind ours (NTP keeps them far closer).
CLOCK_SKEW = 1.0

#: Seconds a wait listens for the result at a time (it blocks on the connection meanwhile).
_LISTEN_SECONDS = 0.25

#: Seconds the fleet remembers the last announced state of a field or route (renewed by each
#: run that announces): past it, a removed field's entry is gone, and a field's next state is
#: announced as its first.
ANNOUNCED_SECONDS = 7 * 24 * 3600.0

#: Shortest bound given to a call to the store while waiting (see :func:`_bound`).
_LEAST_SECONDS = 0.01

#: Deletes a lease only if it is still ours (it may have expired and been taken since).
_RELEASE = """
if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end
return 0
"""

#: Sets a key to a new value unless it holds it already; either way it keeps it for ARGV[2] ms.
#: Returns the value it held before, and 1 when it changed.
_SWAP = """
local old = redis.call("get", KEYS[1])
redis.call("set", KEYS[1], ARGV[1], "px", ARGV[2])
if old == ARGV[1] then return {old, 0} end
return {old, 1}
"""


class RedisStore:
    """Results shared through a Redis server: ``RedisStore("redis://127.0.0.1:6379/0")``.

    ``prefix`` starts every key; ``timeout`` (seconds) bounds each store operation, past
    which the process evaluates locally. Each event loop gets its own client (a
    ``redis.asyncio`` client belongs to the loop it first connected on), and a forked child
    makes new ones.
    """

    def __init__(self, url: str, *, prefix: str = "flask-status", timeout: float = 0.5) -> None:
        with requires_extra("RedisStore", "redis"):
            import redis.asyncio  # noqa: F401
        if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
            shown = redact_url(url) if isinstance(url, str) else type(url).__name__
            raise ValueError(f"store must be a redis://, rediss:// or unix:// URL, got {shown!r}")
        self.url = url
        self.prefix = prefix
        self.timeout = check_seconds("timeout", timeout)
        self._clients: dict[EventLoopToken, Any] = {}
        reset_after_fork(self)

    def _client(self) -> Any:
        import redis.asyncio

        loop = current_token()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = redis.asyncio.Redis.from_url(
                self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
            )
        return client

    def after_fork(self) -> None:
        """Drop the parent's connections: a forked child opens its own."""
        self._clients = {}

    async def get(self, key: str) -> bytes | None:
        """What is stored under ``key``, as it is."""
        data: bytes | None = await self._client().get(key)
        return data

    async def lease(self, key: str, seconds: float) -> str | None:
        """Take the lease of ``key`` for ``seconds``: its token, or None if another holds it."""
        token = secrets.token_hex(8)
        taken = await self._client().set(f"{key}:lease", token, nx=True, px=_ms(seconds))
        return token if taken else None

    async def put(self, key: str, outcome: Outcome, seconds: float, token: str) -> None:
        """Store ``outcome`` for ``seconds`` (not at all for none), tell the waiters, and give
        the lease back."""
        data = _encode(outcome)
        client = self._client()
        async with client.pipeline(transaction=False) as pipeline:
            if seconds > 0:  # a result fresh for no time is only for those waiting for it
                pipeline.set(key, data, px=_ms(seconds))
            pipeline.publish(f"{key}:done", data)
            pipeline.eval(_RELEASE, 1, f"{key}:lease", token)
            await pipeline.execute()

    async def release(self, key: str, token: str) -> None:
        """Give the lease of ``key`` back, if it is still the one ``token`` took."""
        await self._client().eval(_RELEASE, 1, f"{key}:lease", token)

    async def swap(self, key: str, value: str, seconds: float) -> tuple[bool, str | None]:
        """Set ``key`` to ``value`` for ``seconds`` in one step: whether that changed it, and
        what it held before (``None``: nothing)."""
        old, changed = await self._client().eval(_SWAP, 1, key, value, _ms(seconds))
        return bool(changed), old.decode() if isinstance(old, bytes) else None

    async def wait(
        self, key: str, accept: Callable[[bytes | None], Outcome | None]
    ) -> Outcome | None:
        """The result another process is producing for ``key``: the first that ``accept``
        takes; ``None`` once that process's lease is gone without a result (it died) or has
        no expiry (not a lease of ours). Waits until cancelled.

        Each call to the store is given half the time left at most (and never more than the
        store's timeout): a store that stops answering raises in time for the check to run
        here before the caller's deadline.
        """
        pubsub = self._client().pubsub()
        try:
            with anyio.fail_after(_bound(self.timeout, 2)):
                await pubsub.subscribe(f"{key}:done")
                # It may have come before the subscription.
                stored = accept(await self.get(key))
            while stored is None:
                listen = _bound(_LISTEN_SECONDS, 4)
                with anyio.fail_after(listen + _bound(self.timeout, 4)):
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=listen
                    )
                if message is not None:
                    stored = accept(message["data"])
                    continue
                with anyio.fail_after(_bound(self.timeout, 2)):
                    if await self._client().pttl(f"{key}:lease") < 0:  # gone, or no expiry
                        return accept(await self.get(key))
            return stored
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.timeout):
                await pubsub.aclose()


class Freshness(NamedTuple):  # a tuple: made per run, it must cost next to nothing
    """Seconds a stored result stays fresh: a good (or degraded) one, and a failed one."""

    ok: float
    failed: float

    @property
    def longest(self) -> float:
        return max(self.ok, self.failed)

    def of(self, outcome: Outcome) -> float:
        return self.ok if outcome.ok else self.failed


class Sharing:
    """One status route's use of a store: its key namespace, and whether the store answers."""

    def __init__(self, store: RedisStore, namespace: str, logger: logging.Logger) -> None:
        self.store = store
        self.namespace = namespace
        self.logger = logger
        #: Why the store did not answer last time, or None while it does.
        self.unavailable: str | None = None
        #: Per key: the ``measured_at`` of the last result this process took, its own or stored.
        self._taken: dict[str, float] = {}
        self._ignoring: set[str] = set()  # keys whose ignored entries were logged

    def key(self, field_key: str) -> str:
        return f"{self.store.prefix}:{self.namespace}:{field_key}"

    async def announce(self, field_key: str | None, state: str) -> tuple[bool, str | None]:
        """Record ``state`` as the fleet's last announced state of a field (``None``: the
        route's overall state): whether it is a change nobody announced yet, and the state
        it replaces (``None`` if none was announced). Raises if the store does not answer."""
        name = "overall" if field_key is None else f"field:{field_key}"
        key = f"{self.store.prefix}:{self.namespace}:events:{name}"
        with anyio.fail_after(self.store.timeout):
            return await self.store.swap(key, state, ANNOUNCED_SECONDS)

    def slack(self, timeout: float) -> float:
        """Seconds a shared run may take beyond its check's ``timeout``: the store's lookup
        and the end of a wait (up to the store's timeout each), and a wait for another
        process's run that the store broke off before this process ran the check itself."""
        return timeout + 2 * self.store.timeout

    async def run(
        self,
        field_key: str,
        execute: Callable[[], Awaitable[Outcome | None]],
        freshness: Freshness,
        lease_for: float,
    ) -> Outcome | None:
        """A fresh stored outcome new to this process, another process's, or ``execute()``'s
        (then stored).

        ``None`` when waiting for another process ran past the caller's deadline (the
        caller's cancel scope ends the wait). A store that fails, or takes more than half the
        time left to the deadline, costs only the sharing: the check runs here.
        """
        key = self.key(field_key)

        def accept(data: bytes | None) -> Outcome | None:
            return self._accept(key, data, freshness)

        left = anyio.current_effective_deadline() - anyio.current_time()
        try:
            with anyio.fail_after(min(self.store.timeout, left / 2)):
                stored = accept(await self.store.get(key))
                token = None if stored is not None else await self.store.lease(key, lease_for)
                if token is not None:
                    # Another process may have stored a result and let its lease go between
                    # the two calls above: then that result it is.
                    stored = accept(await self.store.get(key))
                    if stored is not None:
                        await self.store.release(key, token)
        except Exception as exc:  # down, slow, or not Redis: evaluate here
            self._failed(exc)
            return await self._execute(key, execute)
        self._answered()
        if stored is not None:
            return stored
        if token is None:  # another process runs it: its result, by our deadline
            try:
                stored = await self.store.wait(key, accept)
            except Exception as exc:  # the store failed while we waited: evaluate here
                self._failed(exc)
                return await self._execute(key, execute)
            # None: the lease holder is gone without a result (or the lease is no lease of
            # ours, which expires never): evaluate here.
            return stored if stored is not None else await self._execute(key, execute)
        outcome = await self._execute(key, execute)
        if outcome is not None:
            try:
                with anyio.fail_after(self.store.timeout):
                    # Kept as long as it stays fresh: a good result of a field without a
                    # ``cache_ttl`` (but a ``cache_ttl_failure``) only reaches the waiters.
                    await self.store.put(key, outcome, freshness.of(outcome), token)
            except Exception as exc:
                self._failed(exc)
        return outcome

    async def _execute(
        self, key: str, execute: Callable[[], Awaitable[Outcome | None]]
    ) -> Outcome | None:
        outcome = await execute()
        if outcome is not None:
            self._taken[key] = outcome.measured_at  # read back later, it is not news
        return outcome

    def _accept(self, key: str, data: bytes | None, freshness: Freshness) -> Outcome | None:
        """The stored outcome in ``data`` if it is news: well-formed, fresh (as a good or as a
        failed result), and measured after the last one this process took. A malformed or
        stale entry is logged (once per key)."""
        if data is None:
            return None
        try:
            outcome = _decode(data, freshness.longest + self.store.timeout)
            _check_age(outcome, freshness.of(outcome) + self.store.timeout)
        except ValueError as exc:
            log = self.logger.debug if key in self._ignoring else self.logger.warning
            self._ignoring.add(key)
            log("status store: ignored the entry under %r, running the check: %s", key, exc)
            return None
        taken = self._taken.get(key)
        if taken is not None and outcome.measured_at <= taken:
            return None  # this run, or an older one: nothing new
        self._taken[key] = outcome.measured_at
        return outcome

    def _failed(self, exc: BaseException) -> None:
        reason = describe(exc) if not isinstance(exc, TimeoutError) else "no answer in time"
        if self.unavailable is None:
            self.logger.warning(
                "status store unavailable, evaluating locally: %s", reason, exc_info=exc
            )
        self.unavailable = f"unavailable: {reason}"

    def _answered(self) -> None:
        if self.unavailable is not None:
            self.logger.info("status store available again: sharing results")
        self.unavailable = None


#: Keys every stored outcome has, and those it has only when set (so that a plain result
#: reads the same to a process of an earlier version during a rolling deploy).
_STORED_KEYS = frozenset({"value", "error", "duration", "measured_at"})
_OPTIONAL_KEYS = frozenset({"error_kind", "degraded"})
_ERROR_KINDS = frozenset(get_args(ErrorKind))


def _encode(outcome: Outcome) -> str:
    entry: dict[str, Any] = {
        "value": outcome.value,
        "error": outcome.error,
        "duration": outcome.duration,
        "measured_at": outcome.measured_at,
    }
    for key in _OPTIONAL_KEYS:
        if getattr(outcome, key) is not None:
            entry[key] = getattr(outcome, key)
    return json.dumps(
        entry,
        allow_nan=False,
        default=str,  # values were checked when their run ended; this only guards the store
    )


def _decode(data: bytes | str, max_age: float) -> Outcome:
    """The outcome stored as ``data``, measured at most ``max_age`` seconds ago.

    Raises ``ValueError`` saying why ``data`` is not one: too large, not JSON, not ours, or
    a number out of range (JSON's NaN and Infinity included).
    """
    if len(data) > MAX_STORED_BYTES:
        raise ValueError(f"larger than {MAX_STORED_BYTES} bytes")
    try:
        fields = json.loads(data, parse_constant=_refuse, parse_float=_finite)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"not JSON: {describe(exc)}") from None
    if not isinstance(fields, dict) or not _STORED_KEYS <= set(fields) <= (
        _STORED_KEYS | _OPTIONAL_KEYS
    ):
        raise ValueError("not a stored outcome")
    error, duration, measured_at = fields["error"], fields["duration"], fields["measured_at"]
    now = time.time()
    if not (error is None or isinstance(error, str)):
        raise ValueError(f"error is not a string: {type(error).__name__}")
    error_kind, degraded = fields.get("error_kind"), fields.get("degraded")
    if error_kind is not None and (
        error is None or not isinstance(error_kind, str) or error_kind not in _ERROR_KINDS
    ):
        raise ValueError(f"error_kind is not one of ours: {str(error_kind)[:40]}")
    if degraded is not None and (error is not None or not isinstance(degraded, str)):
        raise ValueError("degraded is not a reason on a result without an error")
    if not _number_within(duration, 0.0, MAX_SECONDS):
        raise ValueError(f"duration out of range: {duration!r}")
    if not _number_within(measured_at, now - max_age - CLOCK_SKEW, now + CLOCK_SKEW):
        raise ValueError(
            f"measured_at is not within the last {max_age:g}s: {str(measured_at)[:40]}"
        )
    return Outcome(
        fields["value"],
        error,
        float(duration),
        float(measured_at),
        error_kind=cast("ErrorKind | None", error_kind),  # checked to be one above
        degraded=degraded,
    )


def _check_age(outcome: Outcome, max_age: float) -> None:
    """Raise ``ValueError`` if ``outcome`` was measured more than ``max_age`` seconds ago."""
    if outcome.measured_at < time.time() - max_age - CLOCK_SKEW:
        raise ValueError(f"measured_at is not within the last {max_age:g}s: {outcome.measured_at}")


def _number_within(number: Any, lowest: float, highest: float) -> bool:
    return (
        isinstance(number, (int, float))
        and not isinstance(number, bool)
        and lowest <= number <= highest
    )


def _refuse(constant: str) -> Any:
    raise ValueError(f"{constant} is not a number JSON allows")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:40]} is out of range")
    return number


def _bound(seconds: float, share: int) -> float:
    """``seconds``, or the ``share``-th part of the time left to the deadline if that is less.

    At the very end the deadline itself ends the wait (the field timed out): a bound of
    nearly nothing would blame the store for it.
    """
    left = anyio.current_effective_deadline() - anyio.current_time()
    part = left / share
    return seconds if part < _LEAST_SECONDS else min(seconds, part)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
