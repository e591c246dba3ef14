"""Registration: the ``FlaskStatus`` extension, its settings and its fields, checked at setup.

What it registers on an app, and how a status request is then served, is in :mod:`.route`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast, overload

from flask import Blueprint, Flask

from . import config, details, logs
from .events import DEFAULT_TIMEOUT, ChangeEvent, Subscription, check_timeout, subscription
from .fields import (
    Field,
    FieldOptions,
    check_bool,
    check_dependencies,
    check_depends_on,
    check_key,
    make_field,
)
from .mount import Mount
from .route import (
    EXTENSION_KEY,
    Authenticator,
    Listener,
    StatusRoute,
    no_store,
)
from .store import RedisStore

Scaffold = Flask | Blueprint
ChangeListener = TypeVar("ChangeListener", bound=Callable[[ChangeEvent], Any])

#: Why a field may not share a key with the message.
_REPLACES = "the field would silently replace the message's value"
#: Why a readiness route has no field ``drain``.
_DRAIN_RESERVED = 'key "drain" is reserved on a readiness route: <url>/drain drains'


class FlaskStatus:
    """Adds a status route to a Flask app or blueprint.

    ``FlaskStatus(app)`` serves ``{"status": "OK"}`` at ``/api/status``. Add fields with
    :meth:`add_field`; callable fields run on every request, concurrently, each under a timeout.
    Settings left as ``None`` come from ``app.config`` (``STATUS_URL``, ``STATUS_TIMEOUT``, ...),
    else from the defaults.
    """

    def __init__(
        self,
        app: Scaffold | None = None,
        url: str | None = None,
        message: str | Mapping[str, Any] | None = None,
        authenticator: Authenticator | None = None,
        *,
        timeout: float | None = None,
        cache_ttl: float | None = None,
        cache_ttl_failure: float | None = None,
        expose_errors: bool | None = None,
        max_workers: int | None = None,
        endpoint: str | None = None,
        readiness: bool = False,
        started_by: str | Sequence[str] | None = None,
        drain_file: str | None = None,
        drain_trigger: bool | None = None,
        store: RedisStore | str | None = None,
        show_details: str | None = None,
        is_authorized: details.IsAuthorized | None = None,
        history_size: int | None = None,
        html_for_browsers: bool | None = None,
        telemetry: bool | None = None,
        watch_max_seconds: float | None = None,
        max_watchers: int | None = None,
        watch_sync_workers: bool | None = None,
    ) -> None:
        self._given = config.validate(
            {
                "url": url,
                "message": message,
                "timeout": timeout,
                "cache_ttl": cache_ttl,
                "cache_ttl_failure": cache_ttl_failure,
                "expose_errors": expose_errors,
                "max_workers": max_workers,
                "drain_file": drain_file,
                "drain_trigger": drain_trigger,
                "store": store,
                "show_details": show_details,
                "history_size": history_size,
                "html_for_browsers": html_for_browsers,
                "telemetry": telemetry,
                "watch_max_seconds": watch_max_seconds,
                "max_watchers": max_watchers,
                "watch_sync_workers": watch_sync_workers,
            }
        )
        self.readiness = check_bool("readiness", readiness)
        self.started_by = _check_started_by(started_by, readiness)
        if drain_trigger is not None and not readiness:
            raise ValueError("drain_trigger applies only to a readiness route: pass readiness=True")
        self.is_authorized = details.check_is_authorized(is_authorized)
        details.resolve_mode(self._given.get("show_details"), self.is_authorized)  # fail early
        self.authenticator = _check_authenticator(authenticator)
        if endpoint is not None and (not isinstance(endpoint, str) or not endpoint):
            raise TypeError("endpoint must be a non-empty str")
        self.endpoint = endpoint
        self.fields: dict[str, Field] = {}
        #: Whether a route of this instance shares results through a store (its answer may
        #: then have a ``store`` entry).
        self.sharing_store = False
        self.listeners: list[Listener] = []
        self.change_listeners: list[Subscription] = []
        # The message of each app this instance serves, with the setting it came from.
        self._messages: list[tuple[str, Mapping[str, Any]]] = []
        # The default timeout of each app this instance serves (``depends_on`` compares them).
        self._timeouts: list[float] = []
        if app is not None:
            self.init_app(app)

    def init_app(
        self,
        app: Scaffold,
        url: str | None = None,
        message: str | Mapping[str, Any] | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        """Register the status route on ``app`` (a Flask app or a blueprint).

        ``url``, ``message`` and ``authenticator`` are accepted here too, as Flask-Status 1.0.1
        did; given here they replace the constructor's.
        """
        if not isinstance(app, (Flask, Blueprint)):
            raise TypeError(f"app must be a Flask app or a Blueprint, got {type(app).__name__}")
        self._given.update(config.validate({"url": url, "message": message}))
        if authenticator is not None:
            self.authenticator = _check_authenticator(authenticator)
        if isinstance(app, Flask):
            self._register(app, app.add_url_rule, Mount())
        else:
            app.record_once(
                lambda state: self._register(
                    cast(Flask, state.app), state.add_url_rule, Mount.of(state)
                )
            )

    def _register(self, app: Flask, add_url_rule: Callable[..., None], mount: Mount) -> None:
        # Everything is checked before anything is added: a refused route leaves no trace.
        settings = config.resolve(self._given, app.config)
        source = "message" if "message" in self._given else config.config_key("message")
        self._check_message_keys(settings.message, source)
        if settings.store is not None:
            self._check_store_key(self.fields)
        check_dependencies(self.fields, [settings.timeout])
        field_url = settings.url.rstrip("/") + "/<field>"
        mount.check_url(settings.url)
        mount.check_unrouted(app, settings.url, "URL")
        mount.check_unrouted(app, field_url, "per-field route")
        serves_trigger = settings.drain_trigger
        if serves_trigger is None:  # unguarded, anyone could take the pod out of rotation
            serves_trigger = self.authenticator is not None
        drain_url = (
            settings.url.rstrip("/") + "/drain" if self.readiness and serves_trigger else None
        )
        if drain_url is not None:
            mount.check_unrouted(app, drain_url, "drain route")
        endpoint = self._endpoint(app, mount, settings.url)
        if settings.store is not None:
            self.sharing_store = True
        route = StatusRoute(self, app, settings)
        add_url_rule(settings.url, endpoint, route.view, methods=["GET"])
        add_url_rule(field_url, endpoint + "_field", route.view, methods=["GET"])
        if drain_url is not None:  # GET too: a Kubernetes preStop hook can only send GET
            add_url_rule(drain_url, endpoint + "_drain", route.drain_view, methods=["GET", "POST"])
        logs.status_urls.update(route.paths(app))
        self._messages.append((source, settings.message))
        self._timeouts.append(settings.timeout)
        routes = app.extensions.setdefault(EXTENSION_KEY, [])
        if not routes:
            app.after_request(no_store)
        routes.append(route)
        if "status" not in app.cli.commands:
            from .cli import status_command  # the CLI needs click, which only Flask apps load

            app.cli.add_command(status_command)

    def _endpoint(self, app: Flask, mount: Mount, url: str) -> str:
        """The given endpoint, which must be free, else a free name derived from ``url``."""
        if self.endpoint is not None:
            taken = mount.taken_endpoint(app, self.endpoint)
            if taken is not None:
                raise ValueError(
                    f"endpoint {self.endpoint!r}: {taken!r} is already used on the app"
                )
            return self.endpoint
        base = _default_endpoint(url)
        name, number = base, 1
        # URLs such as /a/b and /a_b derive the same name: number the later ones.
        while mount.taken_endpoint(app, name) is not None:
            number += 1
            name = f"{base}_{number}"
        return name

    def _check_message_keys(self, message: Mapping[str, Any], source: str) -> None:
        """Refuse a message sharing a key with a field: the field would replace it unseen."""
        for key in self.fields:
            if key in message:
                raise ValueError(f"key {key!r} of a field is a key of {source} too: {_REPLACES}")

    def _known_messages(self) -> list[tuple[str, Mapping[str, Any]]]:
        """The messages known so far, each with the setting it came from."""
        if "message" in self._given:
            return [*self._messages, ("message", self._given["message"])]
        return self._messages

    @property
    def url(self) -> str:
        """The URL given to this instance, else the default (an app's ``STATUS_URL`` may differ)."""
        return str(self._given.get("url", config.DEFAULTS.url))

    def add_field(
        self,
        key: str,
        value: Any,
        *,
        timeout: float | None = None,
        critical: bool = True,
        cache_ttl: float | None = None,
        cache_ttl_failure: float | None = None,
        single_flight: bool = True,
        interval: float | None = None,
        wait_first: bool = False,
        failure_threshold: int = 1,
        success_threshold: int = 1,
        depends_on: str | Sequence[str] = (),
    ) -> None:
        """Add ``key`` to the payload: a JSON-serializable constant, or a callable run per request.

        A callable may be sync or async. ``timeout``, ``cache_ttl`` and ``cache_ttl_failure``
        (seconds; a failed result is reused this long instead) override the instance defaults;
        a failing non-critical field makes the status DEGRADED, not DOWN, and a check that
        raises or returns :class:`Degraded` at worst DEGRADED.
        ``single_flight=False`` gives each request a run of its own (seeing its own request),
        instead of sharing the run in flight. ``interval`` runs the check in the background
        every that many seconds instead of on request (``wait_first``: a request before the
        first result waits for it). ``failure_threshold``/``success_threshold``: consecutive
        runs needed to change the field's state. ``depends_on`` (a key or a list of keys): the
        field runs only after those fields succeeded, else it is skipped. Adding an existing key
        replaces that field. A key must not contain ``/`` nor be a key of the message.
        """
        if self.sharing_store:
            self._check_store_key([key])
        if self.readiness and key == "drain":
            raise ValueError(_DRAIN_RESERVED)
        options = FieldOptions(
            critical=critical,
            timeout=timeout,
            cache_ttl=cache_ttl,
            cache_ttl_failure=cache_ttl_failure,
            single_flight=single_flight,
            interval=interval,
            wait_first=wait_first,
            failure_threshold=failure_threshold,
            success_threshold=success_threshold,
            depends_on=check_depends_on(depends_on),
        )
        field = make_field(key, value, options)
        for source, message in self._known_messages():
            if key in message:
                raise ValueError(f"key {key!r} is a key of {source} too: {_REPLACES}")
        check_dependencies({**self.fields, key: field}, self._default_timeouts())
        self.fields[key] = field

    def _default_timeouts(self) -> list[float]:
        """The default timeout of each app served, or the one known so far (an app's
        ``STATUS_TIMEOUT`` is checked again when the route is registered)."""
        return self._timeouts or [float(self._given.get("timeout", config.DEFAULTS.timeout))]

    @staticmethod
    def _check_store_key(keys: Iterable[str]) -> None:
        if "store" in keys:
            raise ValueError('key "store" is reserved with a result store: it reports the store')

    def on_evaluated(self, listener: Listener) -> None:
        """Call ``listener(outcomes)`` after each evaluation with every field's :class:`Outcome`."""
        self.listeners.append(listener)

    @overload
    def on_change(
        self, listener: ChangeListener, *, timeout: float = DEFAULT_TIMEOUT
    ) -> ChangeListener: ...

    @overload
    def on_change(
        self, listener: None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> Callable[[ChangeListener], ChangeListener]: ...

    def on_change(self, listener: Any = None, *, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Call ``listener(event)`` (sync or async) with a :class:`ChangeEvent` once per change
        of a field's state or the route's overall state, off the request path, each call
        bounded by ``timeout`` seconds. Usable as a decorator, with or without arguments."""
        if listener is None:
            check_timeout(timeout)  # refused here, not once it decorates
            return functools.partial(self.on_change, timeout=timeout)
        self.change_listeners.append(subscription(listener, timeout))
        return listener


def _check_started_by(started_by: Any, readiness: bool) -> str | tuple[str, ...] | None:
    """``"app"``, a tuple of field keys, or ``None``; only for a readiness route."""
    if started_by is None:
        return None
    if not readiness:
        raise ValueError("started_by applies only to a readiness route: pass readiness=True")
    if started_by == "app":
        return "app"
    if isinstance(started_by, str) or not isinstance(started_by, Sequence):
        raise TypeError(f'started_by must be "app" or a sequence of field keys, got {started_by!r}')
    keys = tuple(started_by)
    if not keys or not all(isinstance(key, str) and key for key in keys):
        raise ValueError(f"started_by must name one field key or more, got {started_by!r}")
    for key in keys:  # a key no field can have would keep the gate shut for good
        try:
            check_key(key)
            if key == "drain":
                raise ValueError(_DRAIN_RESERVED)
        except ValueError as exc:
            raise ValueError(f"started_by names {key!r}, which no field can have: {exc}") from None
    return keys


def _check_authenticator(authenticator: Any) -> Authenticator | None:
    if authenticator is not None and not callable(authenticator):
        raise TypeError(
            f"authenticator must be a callable decorator, got {type(authenticator).__name__}"
        )
    return authenticator  # type: ignore[no-any-return]


def _default_endpoint(url: str) -> str:
    """``status_ping`` for the default URL (as in 1.0.1), else a name derived from the URL."""
    if url == config.DEFAULTS.url:
        return "status_ping"
    return "status_ping_" + (re.sub(r"\W+", "_", url).strip("_") or "root")
