"""Settings of a status route: constructor arguments first, then ``app.config``, then defaults."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .details import check_show_details
from .fields import (
    DEFAULT_TIMEOUT,
    check_bool,
    check_count,
    check_message,
    check_seconds,
    check_url,
)
from .history import DEFAULT_HISTORY_SIZE, check_history_size
from .store import RedisStore


def check_store(name: str, value: Any) -> RedisStore:
    """A result store: a ``RedisStore``, or a Redis URL to make one of."""
    if isinstance(value, RedisStore):
        return value
    if isinstance(value, str):
        return RedisStore(value)
    raise TypeError(f"{name} must be a RedisStore or a redis:// URL, got {type(value).__name__}")


def check_drain_file(name: str, value: Any) -> str:
    """A path where a file can be created: its directory exists, and it is not one itself."""
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty str (a file path), got {value!r}")
    if os.path.isdir(value):  # it would "exist" from the start: the route would never serve
        raise ValueError(f"{name} {value!r} is a directory, not a file path")
    directory = os.path.dirname(os.path.abspath(value))
    if not os.path.isdir(directory):
        raise ValueError(f"{name} {value!r}: its directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):  # a read-only root filesystem, say
        raise ValueError(f"{name} {value!r}: its directory {directory!r} is not writable")
    return value


#: Default upper bound on sync checks running at once, per FlaskStatus instance.
DEFAULT_MAX_WORKERS = 256


@dataclass(frozen=True)
class Settings:
    """Resolved settings of one FlaskStatus on one app."""

    url: str = "/api/status"
    message: Mapping[str, Any] = field(default_factory=lambda: {"status": "OK"})
    timeout: float = DEFAULT_TIMEOUT
    cache_ttl: float = 0.0
    #: ``None``: a failed result is reused as long as a good one (each field's ``cache_ttl``).
    cache_ttl_failure: float | None = None
    expose_errors: bool = True
    max_workers: int = DEFAULT_MAX_WORKERS
    drain_file: str | None = None
    #: ``None``: served when an ``authenticator`` guards the route, else not.
    drain_trigger: bool | None = None
    store: RedisStore | None = None
    #: ``None``: ``"when_authorized"`` when an ``is_authorized`` is given, else ``"always"``.
    show_details: str | None = None
    history_size: int = DEFAULT_HISTORY_SIZE
    html_for_browsers: bool = False
    #: OpenTelemetry spans and metrics of the checks, when opentelemetry-api is installed.
    telemetry: bool = True
    #: Seconds a live status stream lasts before the server ends it (the client reconnects).
    watch_max_seconds: float = 300.0
    #: Live status streams served at once by this route in this process; more get a 503.
    max_watchers: int = 16
    #: Whether a WSGI server whose workers serve one request at a time may serve streams.
    watch_sync_workers: bool = False


DEFAULTS = Settings()

#: Setting name -> validator taking (name for errors, value).
VALIDATORS: dict[str, Callable[[str, Any], Any]] = {
    "url": check_url,
    "message": check_message,
    "timeout": check_seconds,
    "cache_ttl": lambda name, value: check_seconds(name, value, allow_zero=True),
    "cache_ttl_failure": lambda name, value: check_seconds(name, value, allow_zero=True),
    "expose_errors": check_bool,
    "max_workers": check_count,
    "drain_file": check_drain_file,
    "drain_trigger": check_bool,
    "store": check_store,
    "show_details": check_show_details,
    "history_size": check_history_size,
    "html_for_browsers": check_bool,
    "telemetry": check_bool,
    "watch_max_seconds": check_seconds,
    "max_watchers": check_count,
    "watch_sync_workers": check_bool,
}


def config_key(name: str) -> str:
    """The ``app.config`` key of a setting: ``timeout`` -> ``STATUS_TIMEOUT``."""
    return "STATUS_" + name.upper()


def validate(given: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the settings passed as arguments, dropping those left as ``None``."""
    return {
        name: VALIDATORS[name](name, value) for name, value in given.items() if value is not None
    }


def resolve(given: Mapping[str, Any], config: Mapping[str, Any]) -> Settings:
    """Combine validated arguments with ``app.config`` and the defaults."""
    values = {}
    for name, check in VALIDATORS.items():
        if name in given:
            values[name] = given[name]
        elif config_key(name) in config:
            values[name] = check(config_key(name), config[config_key(name)])
        else:
            values[name] = getattr(DEFAULTS, name)
    return Settings(**values)
