"""gunicorn hooks: keep serving, with readiness failing, for a while after SIGTERM.

gunicorn stops a worker as soon as it gets SIGTERM, while the load balancer may still send it
traffic until readiness has failed enough times. In ``gunicorn.conf.py``::

    from flask_status.gunicorn import drain_on_sigterm

    post_worker_init = drain_on_sigterm(seconds=10)

On SIGTERM each worker then drains (its readiness routes answer 503 DRAINING, every other
route serves on) for ``seconds``, and only then stops as gunicorn would have. Keep ``seconds``
below gunicorn's ``graceful_timeout`` (30 s by default), after which it kills the worker.
Works with the sync, gthread and gevent workers and with uvicorn's (``UvicornWorker``). Live
status streams end as the worker drains, and on its other stop signals.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from . import lifecycle
from .fields import check_seconds
from .threads import gevent_patched
from .watch import end_streams_on_signals

SignalHandler = Callable[[int, FrameType | None], Any]


def drain_on_sigterm(seconds: float) -> Callable[[Any], None]:
    """A ``post_worker_init`` hook that delays a worker's SIGTERM by ``seconds`` of draining."""
    delay = check_seconds("seconds", seconds)

    def post_worker_init(worker: Any) -> None:
        def install() -> None:
            stop = signal.getsignal(signal.SIGTERM)
            if callable(stop):  # else there is no handler of the server's to delay
                signal.signal(signal.SIGTERM, _DrainThenStop(worker, delay, stop))
            # In the worker's main thread, after the worker set its handlers: live status
            # streams served in other threads (gthread with --preload) end on its signals too.
            end_streams_on_signals()

        if _is_uvicorn_worker(worker):
            _once_uvicorn_serves(worker.config, install)
        else:
            install()

    return post_worker_init


class _DrainThenStop:
    """A SIGTERM handler: drain for ``seconds``, then hand SIGTERM to the server's ``stop``.

    When the time is up the process signals itself again: the server's handler then runs as
    a signal handler, as it expects (the sync worker waits in ``select`` for a signal to
    wake it).
    """

    def __init__(self, worker: Any, seconds: float, stop: SignalHandler) -> None:
        self.worker = worker
        self.seconds = seconds
        self.stop = stop
        self.draining = False
        self.drained = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.drained:
            self.stop(signum, frame)
        elif not self.draining:  # a second SIGTERM does not restart the wait
            self.draining = True
            _outside_gevent_hub(self._drain)

    def _drain(self) -> None:
        lifecycle.drain()
        self.worker.log.info("flask-status: draining for %gs before stopping", self.seconds)
        timer = threading.Timer(self.seconds, self._stop)
        timer.daemon = True
        timer.start()

    def _stop(self) -> None:
        self.drained = True
        os.kill(os.getpid(), signal.SIGTERM)


def _outside_gevent_hub(function: Callable[[], None]) -> None:
    """Call ``function`` now, or under gevent in a greenlet of its own, as gunicorn's gevent
    worker does with its signals: a signal handler may run in gevent's hub, which must not
    wait (here, for the timer's thread to start)."""
    if gevent_patched():
        sys.modules["gevent"].spawn(function)
    else:
        function()


def _is_uvicorn_worker(worker: Any) -> bool:
    uvicorn_worker = sys.modules.get("uvicorn_worker")
    return uvicorn_worker is not None and isinstance(worker, uvicorn_worker.UvicornWorker)


def _once_uvicorn_serves(config: Any, install: Callable[[], None]) -> None:
    """Call ``install()`` once uvicorn serves, on its first tick (which calls its
    ``callback_notify``): uvicorn sets its own SIGTERM handler as it starts serving, after
    ``post_worker_init``."""
    notify = config.callback_notify

    async def install_then_notify() -> None:
        config.callback_notify = notify
        install()
        if notify is not None:
            await notify()

    config.callback_notify = install_then_notify
