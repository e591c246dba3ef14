"""Health and status endpoints for Flask."""

from .events import ChangeEvent
from .extension import FlaskStatus
from .lifecycle import drain, mark_started
from .logs import quiet_access_logs
from .outcome import Degraded

__all__ = ["ChangeEvent", "Degraded", "FlaskStatus", "drain", "mark_started", "quiet_access_logs"]
