"""Field registration: what a status field is, and validation of everything a user passes in."""

from __future__ import annotations

import enum
import inspect
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flask.json.provider import DefaultJSONProvider

from .outcome import Outcome

#: Default per-field timeout in seconds. Kubernetes gives a probe 1 s by default; stopping a
#: check at 0.8 s leaves time to answer, so the kubelet reads "timed out" in the body instead
#: of giving up on the connection.
DEFAULT_TIMEOUT = 0.8


#: Top-level payload keys the route writes itself.
RESERVED_KEYS = {
    "status": "it holds the overall status",
    "cached": "it says when cached field values were measured",
}

#: Reserved keys a message may not hold. ``status`` is the message's own (the default message
#: is ``{"status": "OK"}``): the route only overrides it when something failed.
MESSAGE_RESERVED_KEYS = frozenset(RESERVED_KEYS) - {"status"}

#: Longest duration accepted for a timeout or a cache TTL, in seconds (one day). More is a
#: mistake (milliseconds given as seconds) and overflows the timers the value is passed to.
MAX_SECONDS = 86400


class Kind(enum.Enum):
    """How a field's value is produced on each request."""

    CONSTANT = "constant"
    SYNC = "sync"
    ASYNC = "async"


@dataclass(frozen=True, kw_only=True)
class FieldOptions:
    """How a field runs: every option of ``add_field`` but its key and value, validated.

    ``timeout``, ``cache_ttl`` and ``cache_ttl_failure`` of ``None`` mean "use the instance
    default".
    """

    #: Whether a failure makes the status DOWN (else DEGRADED).
    critical: bool = True
    #: Seconds the check may run; ``None``: the instance's default.
    timeout: float | None = None
    #: Seconds a finished result is reused; ``None``: the instance's default.
    cache_ttl: float | None = None
    #: Seconds a failed result is reused; ``None``: the instance's default, else ``cache_ttl``.
    cache_ttl_failure: float | None = None
    #: Whether concurrent requests share one run of the check (and so its request context).
    single_flight: bool = True
    #: Seconds between background runs; ``None``: the check runs on request.
    interval: float | None = None
    #: With ``interval``: whether a request before the first result waits for it.
    wait_first: bool = False
    #: Consecutive failed runs before a healthy field counts as failing.
    failure_threshold: int = 1
    #: Consecutive good runs before a failing field counts as healthy.
    success_threshold: int = 1
    #: Keys of the fields this one runs after; it is skipped when one of them did not succeed.
    depends_on: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_bool("critical", self.critical)
        check_bool("single_flight", self.single_flight)
        check_bool("wait_first", self.wait_first)
        check_count("failure_threshold", self.failure_threshold)
        check_count("success_threshold", self.success_threshold)
        # Normalised to float here, once: frozen, so through object.__setattr__.
        for name, allow_zero in (
            ("timeout", False),
            ("cache_ttl", True),
            ("cache_ttl_failure", True),
            ("interval", False),
        ):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check_seconds(name, value, allow_zero=allow_zero))
        if self.wait_first and self.interval is None:
            raise ValueError("wait_first applies only to a background check: give an interval")
        object.__setattr__(self, "depends_on", check_depends_on(self.depends_on))
        if self.cache_ttl_failure is not None and self.interval is not None:
            raise ValueError(
                "cache_ttl_failure applies only to a check run on request: a background check "
                "(with an interval) runs every interval, whatever its result"
            )


@dataclass(frozen=True, eq=False, kw_only=True)
class Field(FieldOptions):
    """One entry of the status payload: its key, its value, and its options.

    Fields compare by identity: re-adding a key creates a new field with fresh state.
    """

    key: str
    value: Any
    kind: Kind
    #: For a constant, its outcome, built once; ``None`` for a callable.
    constant: Outcome | None = None


def is_async_callable(value: Any) -> bool:
    """True for ``async def`` functions, partials of them, and objects with async ``__call__``."""
    return inspect.iscoroutinefunction(value) or inspect.iscoroutinefunction(
        getattr(value, "__call__", None)  # noqa: B004 - we need the attribute, not callable()
    )


def check_json(value: Any, what: str) -> None:
    """Raise ``TypeError`` naming ``what`` if Flask's JSON provider cannot encode ``value``."""
    try:
        json.dumps(value, default=DefaultJSONProvider.default, allow_nan=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"{what} must be JSON-serializable: {exc}") from None


def check_seconds(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Validate a duration parameter (at most :data:`MAX_SECONDS`) and return it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    lowest = ">= 0" if allow_zero else "> 0"
    bound = f"a number of seconds {lowest} and at most {MAX_SECONDS} (one day)"
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond float range: its repr alone could be huge
        raise ValueError(f"{name} must be {bound}, got an int too large for a float") from None
    if (
        math.isnan(seconds)
        or seconds < 0
        or (seconds == 0 and not allow_zero)
        or seconds > MAX_SECONDS  # infinity included
    ):
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return seconds


def check_url(name: str, url: Any) -> str:
    """Validate the status route and add the leading slash Flask requires."""
    if not isinstance(url, str):
        raise TypeError(f"{name} must be a str, got {type(url).__name__}")
    if not url.strip():
        raise ValueError(f"{name} must not be empty")
    path = url if url.startswith("/") else "/" + url
    problem = url_problem(path)
    if problem is not None:
        raise ValueError(f"{name} {path!r} {problem}")
    return path


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a status URL, or ``None``: it must be a fixed path below the root."""
    if "<" in url or ">" in url:
        # A converter would make the view receive an argument it does not take: every
        # request would be a 500.
        return "must not contain '<' or '>': a status URL is a fixed path, without converters"
    if "?" in url or "#" in url:
        return "must not contain '?' or '#': a route matches the path only, so it is unreachable"
    if not url.strip("/"):
        return (
            "must not be the root: its per-field route '/<field>' would take every "
            "one-segment path of the app"
        )
    return None


def check_message(name: str, message: Any) -> dict[str, Any]:
    """Turn the healthy payload into a private dict: a str becomes ``{"message": ...}``."""
    if isinstance(message, str):
        return {"message": message}
    if not isinstance(message, Mapping):
        raise TypeError(f"{name} must be a str or a mapping, got {type(message).__name__}")
    payload = dict(message)
    for key in payload:
        if not isinstance(key, str):
            raise TypeError(f"{name} keys must be str, got {key!r}")
        if key in MESSAGE_RESERVED_KEYS:
            raise ValueError(f"{name} key {key!r} is reserved: {RESERVED_KEYS[key]}")
    check_json(payload, name)
    return payload


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_count(name: str, value: Any) -> int:
    """Validate a positive whole number (workers, thresholds)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return value


def check_key(key: Any) -> str:
    """A field key: a non-empty str, not reserved, without ``/``."""
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, got {type(key).__name__}")
    if not key:
        raise ValueError("key must be a non-empty str")
    if key in RESERVED_KEYS:
        raise ValueError(f"key {key!r} is reserved: {RESERVED_KEYS[key]}")
    if "/" in key:
        # The field's own route <url>/<key> matches one path segment: it could never be reached.
        raise ValueError(f"key {key!r} must not contain '/': GET <url>/<key> could not reach it")
    return key


def check_depends_on(value: Any) -> tuple[str, ...]:
    """``depends_on``: one field key or a sequence of them, as a tuple without repeats."""
    if isinstance(value, str):
        value = (value,)
    elif not isinstance(value, Sequence):
        raise TypeError(
            f"depends_on must be a field key or a list of field keys, got {type(value).__name__}"
        )
    for key in value:
        try:
            check_key(key)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"depends_on names {key!r}, which no field can have: {exc}") from None
    return tuple(dict.fromkeys(value))


def check_dependencies(fields: Mapping[str, Field], default_timeouts: Iterable[float]) -> None:
    """Refuse what ``depends_on`` cannot mean among ``fields``, naming the keys: a cycle, a
    background field depending on a request-time one, a dependent whose timeout is shorter
    than a request-time parent's (both deadlines count from the request's start).

    A key that is no field yet is left alone: its field may be added later (a request then
    reports it when it still is not).
    """
    cycle = _cycle(fields)
    if cycle:  # each arrow reads "depends on"
        raise ValueError("depends_on: a cycle: " + " -> ".join(repr(key) for key in cycle))
    timeouts = list(default_timeouts)
    for item in fields.values():
        for key in item.depends_on:
            parent = fields.get(key)
            if parent is None:
                continue
            if parent.interval is None and item.interval is not None:
                raise ValueError(
                    f"depends_on: background field {item.key!r} depends on {key!r}, which runs "
                    "on request: a background field may depend only on background fields"
                )
            if parent.interval is not None or parent.kind is Kind.CONSTANT:
                continue  # read, not run: its timeout is not part of the request's
            for default in timeouts:
                mine = default if item.timeout is None else item.timeout
                theirs = default if parent.timeout is None else parent.timeout
                if mine < theirs:
                    raise ValueError(
                        f"depends_on: field {item.key!r} (timeout {mine:g}s) depends on "
                        f"{key!r} (timeout {theirs:g}s): a dependent's timeout must be at "
                        "least its parents', as every deadline counts from the request's start"
                    )


def _cycle(fields: Mapping[str, Field]) -> list[str]:
    """The keys of one cycle among ``fields``' dependencies (first key repeated), or ``[]``.

    A depth-first walk kept on lists, not the call stack: a chain may be deeper than Python's
    recursion limit."""
    done: set[str] = set()
    for root in fields:
        path: list[str] = []  # the keys being walked, each depending on the one before
        on_path: set[str] = set()
        parents: list[Iterator[str]] = []  # for each of them, its parents not walked yet
        key: str | None = root
        while True:
            if key is not None and key in on_path:
                return [*path[path.index(key) :], key]
            if key is not None and key not in done and key in fields:
                path.append(key)
                on_path.add(key)
                parents.append(iter(fields[key].depends_on))
            if not parents:
                break
            key = next(parents[-1], None)
            if key is None:
                walked = path.pop()
                on_path.remove(walked)
                done.add(walked)
                parents.pop()
    return []


def parents_of(selected: Iterable[Field], fields: Mapping[str, Field]) -> list[Field]:
    """The fields ``selected`` depend on, all the way up, that are not among them (keys that
    are no field are left out: the dependent reports them)."""
    chosen = {item.key for item in selected}
    found: list[Field] = []
    keys = [key for item in selected for key in item.depends_on]
    while keys:
        key = keys.pop()
        parent = fields.get(key)
        if parent is not None and key not in chosen:
            chosen.add(key)
            found.append(parent)
            keys.extend(parent.depends_on)
    return found


def make_field(key: Any, value: Any, options: FieldOptions | None = None) -> Field:
    """Validate ``add_field``'s key and value and build the field with its ``options``."""
    options = options or FieldOptions()
    check_key(key)
    if is_async_callable(value):
        kind = Kind.ASYNC
    elif callable(value):
        kind = Kind.SYNC
    else:
        check_json(value, f"value of field {key!r}")
        kind = Kind.CONSTANT
        if options.interval is not None:
            raise TypeError(f"interval needs a callable value; field {key!r} is a constant")
        if options.depends_on:
            raise TypeError(f"depends_on needs a callable value; field {key!r} is a constant")
    if key in options.depends_on:
        raise ValueError(f"depends_on: field {key!r} depends on itself")
    return Field(
        **vars(options),
        key=key,
        value=value,
        kind=kind,
        constant=Outcome(value) if kind is Kind.CONSTANT else None,
    )
