"""Where a check runs in Flask's terms: in an app context of its own, for its whole run.

A check may outlive the request that started it (a sync check abandoned at its deadline runs
on in its thread; a run shared by other requests, or one no request started at all: a
background run, a run started ahead). So each run pushes an app context of its own, and pops
it when the check returns: its ``teardown_appcontext`` handlers then run exactly once, when
the check is done (Flask-SQLAlchemy returns the check's pooled connection there).

A run a request started sees that request (``request``); a run no request started sees none
(``has_request_context()`` is False there). ``g`` belongs to the app context, so it is the
run's own: what a check's teardown frees is what the check put there, never the request's. A
run a request started may still read what the request's hooks put on the request's ``g``.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from flask import Flask, g, has_app_context
from flask.ctx import AppContext
from flask.signals import appcontext_popped, appcontext_pushed, appcontext_tearing_down

from .loop import run_sync


def own_app_context(app: Flask) -> AppContext:
    """A new app context for one run; in a request's, its ``g`` reads through to the request's.

    The check's ``g`` holds only what the check sets: ``in``, ``pop`` and iteration see only
    that (so Flask's ``get_db()``/``close_db`` pattern gives the check a connection of its
    own, closed by its own teardown); reading an attribute the check has not set reads the
    request's (what a ``before_request`` hook put there).
    """
    context = app.app_context()
    if has_app_context():
        request_globals = g._get_current_object()
        globals_class: type[Any] = type(context.g)
        context.g = check_globals = _reading_through(globals_class)()
        # In a slot: never among the check's own attributes (``in``, iteration, ``pop``).
        object.__setattr__(check_globals, _READS_THROUGH, request_globals)
    return context


#: The slot of a check's ``g`` that holds the request's ``g``, which it reads through to.
_READS_THROUGH = "_flask_status_request_g"


#: The app's ``g`` class -> its subclass that reads through (made once per class).
_reading_classes: dict[type[Any], type[Any]] = {}


def _reading_through(globals_class: type[Any]) -> type[Any]:
    """The app's ``g`` class, reading attributes it lacks from the request's ``g``."""
    made = _reading_classes.get(globals_class)
    if made is not None:
        return made

    class CheckGlobals(globals_class):  # type: ignore[misc]
        __slots__ = (_READS_THROUGH,)

        def __getattr__(self, name: str) -> Any:
            try:
                return super().__getattr__(name)
            except AttributeError:
                if name.startswith("__") or name == _READS_THROUGH:
                    raise
                return getattr(object.__getattribute__(self, _READS_THROUGH), name)

        def get(self, name: str, default: Any = None) -> Any:
            if name in self.__dict__:
                return self.__dict__[name]
            return object.__getattribute__(self, _READS_THROUGH).get(name, default)

    _reading_classes[globals_class] = CheckGlobals
    return CheckGlobals


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

    Without teardown handlers or context signal receivers, pushing and popping it runs only
    Flask's own code: both happen here, on the loop. Otherwise the app context is pushed in a
    context object of the run's, and the check is a task of that context; so its push (with
    ``appcontext_pushed`` receivers) and its pop (with teardown handlers, or
    ``appcontext_tearing_down`` or ``appcontext_popped`` receivers) run in a worker thread:
    the pop resets what the push set, in that same context object. The app's own code never
    runs on the event loop.

    ``limiter`` must never make them wait: a pop that waited could be cut off by the deadline
    before it ran. A teardown that hangs is given ``teardown_seconds``, then left to its
    thread. What a push or pop raises propagates: it belongs to the check's field, as for a
    sync check.
    """
    # Receivers of this app's signals only (or of every app's): not those of other apps.
    app_code_on_pop = bool(app.teardown_appcontext_funcs) or any(
        signal.has_receivers_for(app) for signal in (appcontext_tearing_down, appcontext_popped)
    )
    app_code_on_push = appcontext_pushed.has_receivers_for(app)
    if not app_code_on_pop and not app_code_on_push:
        with own_app_context(app):  # Flask's own code only: all of it here, on the loop
            await check()
        return
    context = contextvars.copy_context()
    app_context = context.run(own_app_context, app)
    pushed: list[bool] = []

    def push() -> None:
        context.run(app_context.push)
        pushed.append(True)

    if app_code_on_push:
        # At the deadline the push is abandoned: the check does not start (it timed out) and
        # the context, pushed later in a context object nobody uses, holds nothing.
        await run_sync(push, limiter)
        if not pushed:
            return
    else:
        push()
    try:
        async with anyio.create_task_group() as task_group:
            context.run(task_group.start_soon, check)
    finally:

        def pop() -> None:
            context.run(app_context.pop, None)

        if app_code_on_pop:
            with anyio.move_on_after(teardown_seconds, shield=True):
                await run_sync(pop, limiter)
        else:
            pop()
