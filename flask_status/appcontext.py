"""Where a check runs in Flask's terms: in an app context of its own, for its whole run.

A check may outlive the request that started it (a sync check abandoned at its deadline runs
on in its thread; a run shared by other requests, or one no request started at all: a
background run, a run started ahead). So each run pushes an app context of its own, and pops
it when the check returns: its ``teardown_appcontext`` handlers then run exactly once, when
the check is done (Flask-SQLAlchemy returns the check's pooled connection there).

A run a request started sees that request (``request``, and a copy of its ``g``); a run no
request started sees none (``has_request_context()`` is False there).
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio
from flask import Flask, g, has_app_context
from flask.ctx import AppContext
from flask.signals import appcontext_popped, appcontext_pushed

from .loop import run_sync

T = TypeVar("T")


def own_app_context(app: Flask) -> AppContext:
    """A new app context for one run, with a copy of the current ``g`` (a request's), if any.

    The copy keeps what request hooks put on ``g`` visible to the check, while the check's own
    attributes, and the resources an extension keys by app context, stay the check's.
    """
    context = app.app_context()
    if has_app_context():
        vars(context.g).update(vars(g._get_current_object()))
    return context


def call_in_app_context(app: Flask, check: Callable[[], T]) -> T:
    """Call a sync check in an app context of its own (in the check's worker thread)."""
    with own_app_context(app):
        return check()


def empty_context() -> contextvars.Context:
    """The context for a run that no request started: it must not see whichever request
    happened to trigger it, nor keep that request's app context alive."""
    return contextvars.Context()


async def await_in_app_context(
    app: Flask,
    check: Callable[[], Coroutine[Any, Any, None]],
    teardown_seconds: float,
    limiter: anyio.CapacityLimiter,
) -> None:
    """Await an async check in an app context of its own.

    The app context is pushed in a context object of the run's, and the check is a task of
    that context; so its pop (which resets what the push set) can run in a worker thread when
    the app has teardown handlers or context signal receivers: the app's own code never runs
    on the event loop. Those threads are the route's sync checks' (under ``limiter``). A
    teardown that hangs is given ``teardown_seconds``, then left to its thread.
    """
    context = contextvars.copy_context()
    app_context = context.run(own_app_context, app)
    in_thread = _app_code_on_context(app)
    if in_thread:
        await run_sync(functools.partial(context.run, app_context.push), limiter)
    else:
        context.run(app_context.push)
    try:
        async with anyio.create_task_group() as task_group:
            context.run(task_group.start_soon, check)
    finally:

        def pop() -> None:
            context.run(app_context.pop, None)

        if in_thread:
            with anyio.move_on_after(teardown_seconds, shield=True):
                await run_sync(pop, limiter)
        else:
            pop()


def _app_code_on_context(app: Flask) -> bool:
    """Whether pushing or popping an app context runs the app's own code."""
    return bool(
        app.teardown_appcontext_funcs or appcontext_pushed.receivers or appcontext_popped.receivers
    )
