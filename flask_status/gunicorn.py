"""gunicorn hooks: keep serving, with readiness failing, for a while after SIGTERM.

gunicorn stops a worker as soon as it gets SIGTERM, while the load balancer may still send it
traffic until readiness has failed enough times. In ``gunicorn.conf.py``::

    from flask_status.gunicorn import drain_on_sigterm

    post_worker_init = drain_on_sigterm(seconds=10)

On SIGTERM each worker then drains (its readiness routes answer 503 DRAINING, every other
route serves on) for ``seconds``, and only then stops as gunicorn would have. Keep ``seconds``
below gunicorn's ``graceful_timeout`` (30 s by default), after which it kills the worker.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from . import lifecycle
from .fields import check_seconds


def drain_on_sigterm(seconds: float) -> Callable[[Any], None]:
    """A ``post_worker_init`` hook that delays a worker's SIGTERM by ``seconds`` of draining."""
    delay = check_seconds("seconds", seconds)

    def post_worker_init(worker: Any) -> None:
        stop = signal.getsignal(signal.SIGTERM)
        if not callable(stop):  # no handler of gunicorn's to delay
            return

        def drain_then_stop(signum: int, frame: FrameType | None) -> None:
            lifecycle.drain()
            worker.log.info("flask-status: draining for %gs before stopping", delay)
            timer = threading.Timer(delay, stop, (signum, frame))
            timer.daemon = True
            timer.start()

        signal.signal(signal.SIGTERM, drain_then_stop)

    return post_worker_init
