"""Health and status endpoints for Flask."""

from .extension import FlaskStatus
from .lifecycle import drain, mark_started

__all__ = ["FlaskStatus", "drain", "mark_started"]
