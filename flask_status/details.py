"""Who may read the checks' details: the ``show_details`` setting and ``is_authorized``.

A caller without details gets the message and the overall status, with the truthful HTTP
code: no field names, values, errors or timings. The checks run all the same, since the
status depends on them.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from flask import Request, request

from .fields import is_async_callable
from .loop import raise_if_cancelled, run_sync

ALWAYS = "always"
NEVER = "never"
WHEN_AUTHORIZED = "when_authorized"
MODES = (ALWAYS, NEVER, WHEN_AUTHORIZED)

#: ``is_authorized(request)``: whether this caller may read details; sync or async.
IsAuthorized = Callable[[Request], bool | Awaitable[bool]]


def check_show_details(name: str, value: Any) -> str:
    """Validate ``show_details``: one of :data:`MODES`."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if value not in MODES:
        choices = ", ".join(repr(mode) for mode in MODES)
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_is_authorized(value: Any) -> IsAuthorized | None:
    if value is not None and not callable(value):
        raise TypeError(
            f"is_authorized must be a callable taking the request, got {type(value).__name__}"
        )
    return value  # type: ignore[no-any-return]


def resolve_mode(
    show_details: str | None, is_authorized: IsAuthorized | None, name: str = "show_details"
) -> str:
    """The mode in force; raise if it needs an ``is_authorized`` that was not given.

    Left unset, it is ``when_authorized`` when an ``is_authorized`` was given (passing one
    means details are meant for some callers only), else ``always`` (as before this setting).
    """
    if show_details is None:
        return ALWAYS if is_authorized is None else WHEN_AUTHORIZED
    if show_details == WHEN_AUTHORIZED and is_authorized is None:
        raise ValueError(
            f"{name}='when_authorized' needs is_authorized, a callable taking the request"
        )
    return show_details


class Access:
    """Decides, per request, whether the caller sees details."""

    def __init__(
        self,
        mode: str,
        is_authorized: IsAuthorized | None,
        timeout: float,
        limiter: Callable[[], anyio.CapacityLimiter],
        logger: logging.Logger,
    ) -> None:
        self.mode = mode
        self.is_authorized = is_authorized
        self.timeout = timeout
        self._limiter = limiter  # read per call: a forked child's evaluator makes a new one
        self.logger = logger

    @property
    def per_request(self) -> bool:
        """Whether each request needs a decision (which may take the event loop)."""
        return self.mode == WHEN_AUTHORIZED

    async def decide(self, decided: bool | None) -> bool | None:
        """Ask ``is_authorized`` about this request, unless it needs no asking or was
        ``decided`` already; the decision, or ``None`` when none is needed."""
        if self.per_request and decided is None:
            return await self.authorized()
        return decided

    def shows(self, decided: bool | None) -> bool:
        """Whether this request's answer carries details, given the ``decided`` one.

        Undecided (no ``decide`` ran, as when the loop stopped) means no, unless details are
        shown to everyone: an error never reveals more.
        """
        if decided is None:
            return self.mode == ALWAYS
        return decided

    async def authorized(self) -> bool:
        """Call ``is_authorized`` with the request; no answer in time, or an error, is a no.

        A sync one runs in a worker thread (under the route's limiter), so one that looks up
        a session or a token store cannot stall the event loop; an async one is awaited, in a
        task of its own: a cancellation it raises of its own (it awaited something cancelled
        elsewhere) is its failure, while the request's own cancellation still ends the request.
        """
        check = self.is_authorized
        assert check is not None  # resolve_mode() requires it for this mode
        caller = request._get_current_object()  # type: ignore[attr-defined]
        answers: list[bool] = []
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(self._ask, check, caller, answers)
        return answers == [True]

    async def _ask(self, check: IsAuthorized, caller: Request, answers: list[bool]) -> None:
        try:
            with anyio.fail_after(self.timeout):
                if is_async_callable(check):
                    result = await check(caller)  # type: ignore[misc]
                else:
                    result = await run_sync(functools.partial(check, caller), self._limiter())
                if inspect.isawaitable(result):  # a plain function returned a coroutine
                    result = await result
        except TimeoutError:
            self.logger.warning(
                "status is_authorized took longer than %gs: details not shown", self.timeout
            )
            return
        except BaseException as exc:  # a broken authorizer shows no details, and never a 500
            # (nor, raising SystemExit, stops the event loop it runs on)
            await raise_if_cancelled(exc)  # the request's cancellation goes on
            self.logger.exception("status is_authorized %r failed: details not shown", check)
            return
        answers.append(bool(result))
