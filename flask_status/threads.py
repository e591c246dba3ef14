"""Real OS threads, for gevent and for the loop of WSGI requests.

gevent's monkey patching turns ``threading`` threads into greenlets on the calling OS thread.
There, anyio's worker threads would be greenlets on the event loop's own thread: a check that
blocks below gevent (a C database driver) would freeze the loop and outlive its deadline. So
under gevent the sync work of a status request runs in a new real OS thread
(:func:`run_in_os_thread`), from the original thread functions gevent keeps, and nothing else
changes: the work is still awaited under the field's cancel scope and the route's limiter.
Which threads run sync work under each server is decided in ``loop.run_sync``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sys
import threading
from collections.abc import Callable
from typing import Any

import anyio


def _gevent_monkey() -> Any:
    """``gevent.monkey`` if gevent has patched ``threading`` in this process, else ``None``."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey if monkey is not None and monkey.is_module_patched("threading") else None


def gevent_patched() -> bool:
    """Whether gevent has patched ``threading`` in this process."""
    return _gevent_monkey() is not None


def start_thread(target: Callable[[], object], name: str) -> None:
    """Start ``target`` in a daemon OS thread (a real one, even under gevent)."""
    monkey = _gevent_monkey()
    if monkey is not None:
        monkey.get_original("_thread", "start_new_thread")(target, ())
        return
    threading.Thread(target=target, name=name, daemon=True).start()


async def run_in_os_thread(func: Callable[[], Any]) -> Any:
    """``func`` in a new real OS thread; its result is handed back to this loop's thread."""
    loop = asyncio.get_running_loop()
    done = anyio.Event()
    result: list[Any] = []
    error: list[BaseException] = []
    context = contextvars.copy_context()  # the app and request context, as anyio gives

    def work() -> None:
        try:
            result.append(context.run(func))
        except BaseException as exc:  # handed to the awaiting task, which owns it
            error.append(exc)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(done.set)

    start_thread(work, "flask-status-check")
    await done.wait()
    if error:
        raise error[0]
    return result[0]
