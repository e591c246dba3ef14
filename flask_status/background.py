"""Background checks: which fields run every ``interval`` seconds, and on which loop.

A background field runs on the process's own event loop (the one WSGI requests use), whatever
serves the app, so that it lives as long as the process: it starts with the first status
request, or at ASGI lifespan startup under StatusMiddleware; it stops at lifespan shutdown and
at interpreter exit; and it starts afresh in a forked child and after its loop was stopped.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from .appcontext import empty_context
from .engine import Evaluator
from .fields import Field
from .loop import Started, portal_loop


class BackgroundRuns:
    """The background fields of one status route, each with its task on the loop."""

    def __init__(self, evaluator: Evaluator) -> None:
        self.evaluator = evaluator
        self._lock = threading.Lock()
        self._tasks: dict[str, tuple[Field, Started]] = {}

    def ensure(self, fields: Iterable[Field]) -> None:
        """Start each background field among ``fields`` that does not run yet, and stop the
        task of a field replaced under its key (by a background field or not).

        Called from a request's thread or the server's loop, never from the portal's loop.
        """
        for item in fields:
            entry = self._tasks.get(item.key)
            if (entry is not None and entry[0] is not item) or (
                item.interval is not None and not self._running(item)
            ):
                with self._lock:
                    if item.interval is None:
                        self._stop(item.key)
                    elif not self._running(item):
                        self._replace(item)

    def _running(self, item: Field) -> bool:
        entry = self._tasks.get(item.key)
        return entry is not None and entry[0] is item and portal_loop.runs(entry[1])

    def _stop(self, key: str) -> None:
        previous = self._tasks.pop(key, None)
        if previous is not None:
            previous[1].task.cancel()

    def _replace(self, item: Field) -> None:
        self._stop(item.key)  # a field re-added under this key
        # Started by whichever request came first, the task must not run in its context.
        started = empty_context().run(portal_loop.start_soon, self.evaluator.run_every, item)
        self._tasks[item.key] = (item, started)

    def stop(self) -> None:
        """Cancel every background run (at ASGI lifespan shutdown)."""
        with self._lock:
            for _, started in self._tasks.values():
                started.task.cancel()
            self._tasks.clear()
