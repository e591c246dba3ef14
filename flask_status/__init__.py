"""Health and status endpoints for Flask."""

from .extension import FlaskStatus

__all__ = ["FlaskStatus"]
