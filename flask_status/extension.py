"""The Flask adapter: the ``FlaskStatus`` extension, its routes and the authenticator."""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, cast

import anyio.from_thread
from flask import Blueprint, Flask, Response, abort, current_app, request
from flask.json.provider import DefaultJSONProvider

from . import config, details, formats, lifecycle, logs
from .aggregate import Health, aggregate
from .background import BackgroundRuns
from .engine import Evaluator
from .fields import Field, FieldOptions, Kind, check_bool, check_key, is_async_callable, make_field
from .history import History
from .loop import LoopStopped, portal_loop
from .mount import Mount
from .outcome import Encode, Outcome
from .render import (
    HEALTH_JSON,
    health_json_payload,
    hide_errors,
    invalid_values,
    json_payload,
)
from .store import RedisStore, Sharing

Scaffold = Flask | Blueprint
View = Callable[..., Any]
Authenticator = Callable[[View], View]
Listener = Callable[[Mapping[str, Outcome]], object]

#: Key in ``app.extensions``: the list of :class:`StatusRoute` registered on the app.
EXTENSION_KEY = "flask_status"

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
    ) -> None:
        self._given = config.validate(
            {
                "url": url,
                "message": message,
                "timeout": timeout,
                "cache_ttl": cache_ttl,
                "expose_errors": expose_errors,
                "max_workers": max_workers,
                "drain_file": drain_file,
                "drain_trigger": drain_trigger,
                "store": store,
                "show_details": show_details,
                "history_size": history_size,
                "html_for_browsers": html_for_browsers,
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
        # The message of each app this instance serves, with the setting it came from.
        self._messages: list[tuple[str, Mapping[str, Any]]] = []
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
        single_flight: bool = True,
        interval: float | None = None,
        wait_first: bool = False,
        failure_threshold: int = 1,
        success_threshold: int = 1,
    ) -> None:
        """Add ``key`` to the payload: a JSON-serializable constant, or a callable run per request.

        A callable may be sync or async. ``timeout`` and ``cache_ttl`` (seconds) override the
        instance defaults; a failing non-critical field makes the status DEGRADED, not DOWN.
        ``single_flight=False`` gives each request a run of its own (seeing its own request),
        instead of sharing the run in flight. ``interval`` runs the check in the background
        every that many seconds instead of on request (``wait_first``: a request before the
        first result waits for it). ``failure_threshold``/``success_threshold``: consecutive
        runs needed to change the field's state. Adding an existing key replaces that field.
        A key must not contain ``/`` nor be a key of the message.
        """
        if self.sharing_store:
            self._check_store_key([key])
        if self.readiness and key == "drain":
            raise ValueError(_DRAIN_RESERVED)
        options = FieldOptions(
            critical=critical,
            timeout=timeout,
            cache_ttl=cache_ttl,
            single_flight=single_flight,
            interval=interval,
            wait_first=wait_first,
            failure_threshold=failure_threshold,
            success_threshold=success_threshold,
        )
        field = make_field(key, value, options)
        for source, message in self._known_messages():
            if key in message:
                raise ValueError(f"key {key!r} is a key of {source} too: {_REPLACES}")
        self.fields[key] = field

    @staticmethod
    def _check_store_key(keys: Iterable[str]) -> None:
        if "store" in keys:
            raise ValueError('key "store" is reserved with a result store: it reports the store')

    def on_evaluated(self, listener: Listener) -> None:
        """Call ``listener(outcomes)`` after each evaluation with every field's :class:`Outcome`."""
        self.listeners.append(listener)


@dataclass
class Pending:
    """A request whose fields are still to be evaluated."""

    fields: list[Field]
    response: Response
    #: STARTING or DRAINING when a readiness route answers so without running its checks.
    state: Health | None = None
    #: Why the startup gate cannot open (``started_by`` names no field), shown as its entry.
    gate_error: str | None = None
    show_details: bool | None = None  # decided by ``StatusRoute.access``; None: not yet


@dataclass
class Handover:
    """The requests a view called by the ASGI middleware leaves to the server's event loop.

    The view records its request in ``pending`` and returns the unfilled response; the
    middleware evaluates the fields on the loop before Flask finalizes that response, so no
    thread is held while checks run. A view wrapped by a sync authenticator evaluates at once
    instead: the wrapper must see the finished answer.
    """

    pending: list[tuple[StatusRoute, Pending]] = dataclasses.field(default_factory=list)


#: Set by the ASGI middleware while it serves a status request.
deferred: ContextVar[Handover | None] = ContextVar("flask_status_deferred", default=None)


class StatusRoute:
    """One FlaskStatus served by one app: its settings, its evaluator and its view."""

    def __init__(self, status: FlaskStatus, app: Flask, settings: config.Settings) -> None:
        self.status = status
        self.settings = settings
        self.encode = _encoder(app)
        self.evaluator = Evaluator(
            app,
            status.fields,
            self.encode,
            settings.timeout,
            settings.cache_ttl,
            settings.max_workers,
        )
        if settings.store is not None:
            namespace = f"{app.import_name}:{settings.url}"
            self.evaluator.sharing = Sharing(settings.store, namespace, app.logger)
        self.background = BackgroundRuns(self.evaluator)
        self.gate_open = False  # the startup gate of ``started_by`` fields, once open, stays so
        self.logged_gate_error: str | None = None
        self.history = History(settings.history_size)
        self.evaluator.run_listeners.append(self.history.record)
        self.access = details.Access(
            # Raises only for app.config's value: the constructor checked its own argument.
            details.resolve_mode(
                settings.show_details, status.is_authorized, config.config_key("show_details")
            ),
            status.is_authorized,
            settings.timeout,
            lambda: self.evaluator.limiter,
            app.logger,
        )
        #: Whether a sync authenticator wraps the view (it must see the finished answer).
        self.sync_authenticator = False
        self.view = self._make_view()
        self.drain_view = _guarded(self.status.authenticator, self._drain)

    def _drain(self) -> Response:
        """The drain trigger (a Kubernetes preStop hook calls it): readiness answers 503 now."""
        lifecycle.drain(self.settings.drain_file)
        current_app.logger.info("status: draining")
        return cast(Response, current_app.json.response({"status": Health.DRAINING.value}))

    @property
    def views(self) -> tuple[View, ...]:
        """Every view of this route: the status view, and the drain trigger's."""
        return (self.view, self.drain_view)

    def _make_view(self) -> View:
        def status_ping(field: str | None = None) -> Response:
            pending = self.pending(field)
            handover = deferred.get()
            if handover is None:  # WSGI
                return self.respond_blocking(pending)
            if not self.sync_authenticator:
                # Hand the request back: the middleware evaluates it on the loop.
                handover.pending.append((self, pending))
                return pending.response
            # In a worker thread, inside a sync authenticator's wrapper: evaluate on the
            # server's loop now, so that the wrapper sees the finished answer.
            return anyio.from_thread.run(self.respond, pending)

        authenticator = self.status.authenticator
        if authenticator is None:
            return status_ping
        view = authenticator(status_ping)
        if is_async_callable(view):
            # The wrapper awaits the view: give it a coroutine function around the same logic.
            async def status_ping_async(field: str | None = None) -> Response:
                if deferred.get() is not None:  # awaited on the server's loop
                    return await self.respond(self.pending(field))
                return status_ping(field)  # on the event loop Flask runs for this view

            return _dispatched_as_sync(authenticator(status_ping_async))
        if not callable(view):
            raise TypeError("authenticator must return a callable view")
        self.sync_authenticator = True
        return view

    def pending(self, name: str | None = None) -> Pending:
        """The fields this request asks for: one by name, or all but ``?exclude=`` ones."""
        fields = self.status.fields
        if name is not None:
            if name not in fields:
                abort(404)
            selected = [fields[name]]
        else:
            excluded = request.args.getlist("exclude") if request.query_string else []
            selected = [field for key, field in fields.items() if key not in excluded]
        state = self.readiness_state()
        if state is not None:
            return Pending([], current_app.response_class(), state)
        gate_error = self._gate_error()
        if gate_error is not None:
            return Pending([], current_app.response_class(), Health.STARTING, gate_error)
        self.background.ensure(selected)
        return Pending(selected, current_app.response_class())

    def readiness_state(self) -> Health | None:
        """DRAINING or STARTING when a readiness route answers so without running checks."""
        if not self.status.readiness:
            return None
        if lifecycle.draining(self.settings.drain_file):
            return Health.DRAINING
        if self.status.started_by == "app" and not lifecycle.started():
            return Health.STARTING
        return None

    def _gate_error(self) -> str | None:
        """Why the startup gate can never open: a key of ``started_by`` that is no field (fields
        are added after the constructor, so this is known only once requests come)."""
        gate = self.status.started_by
        if self.gate_open or not isinstance(gate, tuple):
            return None
        fields = self.status.fields
        missing = ", ".join(repr(key) for key in gate if key not in fields)
        if not missing:
            return None
        error = f"no field {missing} (fields: {', '.join(fields) or 'none'})"
        if error != self.logged_gate_error:
            self.logged_gate_error = error
            current_app.logger.error(
                "status route %s: started_by: %s; its startup gate cannot open", request.path, error
            )
        return error

    def _gated(self, health: Health, outcomes: Mapping[str, Outcome]) -> Health:
        """STARTING until each field in ``started_by`` has succeeded once, then ``health``."""
        gate = self.status.started_by
        if self.gate_open or not isinstance(gate, tuple):
            return health
        if all(key in outcomes and outcomes[key].ok for key in gate):
            self.gate_open = True
            return health
        return Health.STARTING

    def respond_blocking(self, pending: Pending) -> Response:
        """Answer from a thread without an event loop (WSGI): evaluate on the portal's loop."""
        callables = _callables(pending.fields)
        # Nothing to run or wait for needs no loop, unless is_authorized must be asked (it
        # may be async).
        if not self.access.per_request:
            latest = self.evaluator.latest_background(callables)
            if latest is not None:
                return self.fill(pending, latest.outcomes, latest.cached)
        try:
            return portal_loop.call(self.respond, pending)
        except LoopStopped as exc:
            current_app.logger.error("status route %s: %s", request.path, exc)
            stopped = Outcome(error=str(exc), measured_at=time.time())
            return self.fill(pending, {field.key: stopped for field in callables})

    async def respond(self, pending: Pending) -> Response:
        """Evaluate the request's fields on the running event loop and fill the response."""
        await self.access.decide(pending)  # before the checks, on this loop: it may await
        evaluation = await self.evaluator.evaluate(_callables(pending.fields))
        return self.fill(pending, evaluation.outcomes, evaluation.cached)

    def fill(
        self, pending: Pending, results: Mapping[str, Outcome], cached: Collection[str] = ()
    ) -> Response:
        """Render every field's outcome into the pending response (``cached``: the keys whose
        outcome was not measured for this request)."""
        outcomes = {
            field.key: results[field.key] if field.constant is None else field.constant
            for field in pending.fields
        }
        critical = {field.key: field.critical for field in pending.fields}
        sharing = self.evaluator.sharing
        if sharing is not None and sharing.unavailable is not None and pending.fields:
            # The store is a dependency too, if not a critical one: checks ran here instead.
            outcomes["store"] = Outcome(error=sharing.unavailable, measured_at=time.time())
            critical["store"] = False
        if pending.gate_error is not None:
            outcomes["started_by"] = Outcome(error=pending.gate_error)
            critical["started_by"] = True
        wants_health_json = (
            # the substring test spares the Accept parsing on almost every request
            "health+json" in request.headers.get("Accept", "")
            and request.accept_mimetypes.best_match(["application/json", HEALTH_JSON])
            == HEALTH_JSON
        )
        form = formats.choose(self, pending, wants_health_json, cached)  # None: the below

        def encode(outcomes: Mapping[str, Outcome]) -> tuple[str, Health]:
            health = pending.state or self._gated(
                aggregate((critical[key], outcome.ok) for key, outcome in outcomes.items()),
                outcomes,
            )
            shown = outcomes if self.settings.expose_errors else hide_errors(outcomes)
            if form is not None:
                return form.render(shown, critical, health), health
            if wants_health_json:
                document = health_json_payload(self.settings.message, shown, critical, health)
            else:
                reused = {key: outcomes[key] for key in cached if key in outcomes}
                document = json_payload(self.settings.message, shown, health, reused)
            return self.encode(document), health

        try:
            body, health = encode(outcomes)
        except Exception:  # a value changed since its run checked it: find it, fail it
            invalid = invalid_values(outcomes, self.encode)
            for key, outcome in invalid.items():
                current_app.logger.error("status field %r %s", key, outcome.error)
            outcomes.update(invalid)
            body, health = encode(outcomes)
        for listener in self.status.listeners:
            try:
                listener(outcomes)
            except Exception:  # a broken metrics hook must not break the health answer
                current_app.logger.exception("status listener %r failed", listener)

        response = pending.response
        response.set_data(body + "\n")
        response.status_code = health.http_status
        response.mimetype = HEALTH_JSON if wants_health_json else "application/json"
        formats.vary_on_accept(response)
        if form is not None:
            form.finish(response)
        return response

    def respond_now(self) -> Response:
        """Evaluate every field now, without the authenticator (for the CLI)."""
        pending = self.pending()
        pending.show_details = True  # whoever runs the CLI runs the app: not a remote caller
        return self.respond_blocking(pending)

    def paths(self, app: Flask) -> list[str]:
        """The URLs this route is served at on ``app`` (a blueprint adds its prefix)."""
        return [
            rule.rule
            for rule in app.url_map.iter_rules()
            if app.view_functions.get(rule.endpoint) is self.view and not rule.arguments
        ]


def no_store(response: Response) -> Response:
    """After every request to a status route, denials and errors included: never cache health."""
    routes: list[StatusRoute] = current_app.extensions[EXTENSION_KEY]
    if request.endpoint is None:  # routing failed: a 405 for a status URL counts too
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        ours = response.status_code == 405 and any(
            request.path in route.paths(app) for route in routes
        )
    else:
        view = current_app.view_functions.get(request.endpoint)
        ours = any(view in route.views for route in routes)
    if ours:
        response.headers["Cache-Control"] = "no-store"
    return response


def _encoder(app: Flask) -> Encode:
    """The app's JSON encoding, refusing NaN and Infinity (not JSON) where it can."""
    if isinstance(app.json, DefaultJSONProvider):
        return functools.partial(app.json.dumps, allow_nan=False)
    return app.json.dumps


def _guarded(authenticator: Authenticator | None, view: View) -> View:
    """``view`` behind the authenticator, whether it was written for sync or async views."""
    if authenticator is None:
        return view
    guarded = authenticator(view)
    if is_async_callable(guarded):

        async def view_async(*args: Any, **kwargs: Any) -> Any:
            return view(*args, **kwargs)

        guarded = authenticator(view_async)
    return guarded


def _dispatched_as_sync(view: View) -> View:
    """An async view that Flask's own dispatch calls as a sync one.

    Under WSGI it runs as Flask runs any async view; under the ASGI middleware it returns its
    coroutine, which the middleware awaits on the server's event loop.
    """

    def status_ping(**view_args: Any) -> Any:
        if deferred.get() is not None:
            return view(**view_args)
        return current_app.ensure_sync(view)(**view_args)

    return status_ping


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


def _callables(fields: list[Field]) -> list[Field]:
    return [field for field in fields if field.kind is not Kind.CONSTANT]


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
