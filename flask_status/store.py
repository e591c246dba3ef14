"""Sharing check results across processes (gunicorn workers, pods) through Redis.

For a field with a ``cache_ttl`` or an ``interval``, a fresh result in the store serves every
process; when there is none, one process takes a lease (``SET NX PX``) and runs the check,
and the others wait for its result (notified through pub/sub, up to the field's deadline). A
lease expires, so a process that dies mid-check blocks nobody for longer than the lease.
Values are JSON outcomes, size-limited; nothing stored is ever executed.

The store is a dependency too: when it is down or slow, every process evaluates locally, as
without a store, and says so; sharing resumes as soon as it answers again.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from .extras import requires_extra
from .fork import reset_after_fork
from .outcome import MAX_FIELD_BYTES, Outcome, describe
from .redact import redact_url

#: Largest stored outcome read back: a value's limit plus room for the rest of the outcome.
MAX_STORED_BYTES = MAX_FIELD_BYTES + 4096

#: Seconds a wait listens for the result at a time (it blocks on the connection meanwhile).
_LISTEN_SECONDS = 0.25

#: Deletes a lease only if it is still ours (it may have expired and been taken since).
_RELEASE = """
if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end
return 0
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
        self.timeout = timeout
        self._clients: dict[int, Any] = {}
        reset_after_fork(self)

    def _client(self) -> Any:
        import redis.asyncio

        thread = threading.get_ident()  # the event loop's thread
        client = self._clients.get(thread)
        if client is None:
            client = self._clients[thread] = redis.asyncio.Redis.from_url(
                self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
            )
        return client

    def after_fork(self) -> None:
        """Drop the parent's connections: a forked child opens its own."""
        self._clients = {}

    async def get(self, key: str) -> Outcome | None:
        return _decode(await self._client().get(key))

    async def lease(self, key: str, seconds: float) -> str | None:
        """Take the lease of ``key`` for ``seconds``: its token, or None if another holds it."""
        token = secrets.token_hex(8)
        taken = await self._client().set(f"{key}:lease", token, nx=True, px=_ms(seconds))
        return token if taken else None

    async def put(self, key: str, outcome: Outcome, seconds: float, token: str) -> None:
        """Store ``outcome`` for ``seconds``, tell the waiters, and give the lease back."""
        data = _encode(outcome)
        client = self._client()
        async with client.pipeline(transaction=False) as pipeline:
            pipeline.set(key, data, px=_ms(seconds))
            pipeline.publish(f"{key}:done", data)
            pipeline.eval(_RELEASE, 1, f"{key}:lease", token)
            await pipeline.execute()

    async def release(self, key: str, token: str) -> None:
        """Give the lease of ``key`` back, if it is still the one ``token`` took."""
        await self._client().eval(_RELEASE, 1, f"{key}:lease", token)

    async def wait(self, key: str) -> Outcome:
        """The result another process is producing for ``key``; waits until cancelled."""
        pubsub = self._client().pubsub()
        try:
            await pubsub.subscribe(f"{key}:done")
            stored = await self.get(key)  # it may have come before the subscription
            while stored is None:
                # A store that stops answering raises here, rather than hold the wait.
                with anyio.fail_after(self.timeout + _LISTEN_SECONDS):
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=_LISTEN_SECONDS
                    )
                if message is not None:
                    stored = _decode(message["data"])
            return stored
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.timeout):
                await pubsub.aclose()


class Sharing:
    """One status route's use of a store: its key namespace, and whether the store answers."""

    def __init__(self, store: RedisStore, namespace: str, logger: logging.Logger) -> None:
        self.store = store
        self.namespace = namespace
        self.logger = logger
        #: Why the store did not answer last time, or None while it does.
        self.unavailable: str | None = None

    def key(self, field_key: str) -> str:
        return f"{self.store.prefix}:{self.namespace}:{field_key}"

    async def run(
        self,
        field_key: str,
        execute: Callable[[], Awaitable[Outcome | None]],
        fresh_for: float,
        lease_for: float,
    ) -> Outcome | None:
        """A fresh stored outcome, another process's, or ``execute()``'s (then stored).

        ``None`` when waiting for another process ran past the caller's deadline (the
        caller's cancel scope ends the wait). A store that fails costs only the sharing.
        """
        key = self.key(field_key)
        try:
            with anyio.fail_after(self.store.timeout):
                stored = await self.store.get(key)
                token = None if stored is not None else await self.store.lease(key, lease_for)
                if token is not None:
                    # Another process may have stored a result and let its lease go between
                    # the two calls above: then that result it is.
                    stored = await self.store.get(key)
                    if stored is not None:
                        await self.store.release(key, token)
        except Exception as exc:  # down, slow, or not Redis: evaluate here
            self._failed(exc)
            return await execute()
        self._answered()
        if stored is not None:
            return stored
        if token is None:  # another process runs it: its result, by our deadline
            try:
                return await self.store.wait(key)
            except Exception as exc:  # the store failed while we waited: evaluate here
                self._failed(exc)
                return await execute()
        outcome = await execute()
        if outcome is not None:
            try:
                with anyio.fail_after(self.store.timeout):
                    await self.store.put(key, outcome, fresh_for, token)
            except Exception as exc:
                self._failed(exc)
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


def _encode(outcome: Outcome) -> str:
    return json.dumps(
        {
            "value": outcome.value,
            "error": outcome.error,
            "duration": outcome.duration,
            "measured_at": outcome.measured_at,
        },
        allow_nan=False,
        default=str,  # values were checked when their run ended; this only guards the store
    )


def _decode(data: bytes | str | None) -> Outcome | None:
    """A stored outcome, or None for nothing, too much, or anything not ours."""
    if data is None or len(data) > MAX_STORED_BYTES:
        return None
    try:
        fields = json.loads(data)
        return Outcome(
            fields["value"],
            None if fields["error"] is None else str(fields["error"]),
            float(fields["duration"]),
            float(fields["measured_at"]),
        )
    except (ValueError, TypeError, KeyError):
        return None


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
