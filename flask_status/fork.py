"""What a forked child must not inherit: threads, event loops, runs in flight, connections.

gunicorn ``--preload`` forks workers from a master that may have served a status request at
import; none of the master's threads exist in a worker. Objects that hold such things register
here, and start afresh in the child.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class AfterFork(Protocol):
    def after_fork(self) -> None:
        """Forget what only the parent process has."""


_registered: weakref.WeakSet[AfterFork] = weakref.WeakSet()


def reset_after_fork(item: AfterFork) -> None:
    """Call ``item.after_fork()`` in every child forked from now on (while ``item`` lives)."""
    _registered.add(item)


def _after_fork_in_child() -> None:
    for item in list(_registered):
        item.after_fork()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
