"""The Flask adapter: the ``FlaskStatus`` extension, its routes and the authenticator."""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, cast

import anyio.from_thread
from flask import Blueprint, Flask, Response, abort, current_app, request
from flask.json.provider import DefaultJSONProvider

from . import config, details, formats
from .aggregate import Health, aggregate
from .engine import Evaluator
from .fields import Field, Kind, is_async_callable, make_field
from .history import History
from .loop import LoopStopped, portal_loop
from .outcome import Encode, Outcome
from .render import (
    HEALTH_JSON,
    health_json_payload,
    hide_errors,
    invalid_values,
    json_payload,
)

Scaffold = Flask | Blueprint
View = Callable[..., Any]
Authenticator = Callable[[View], View]
Listener = Callable[[Mapping[str, Outcome]], object]

#: Key in ``app.extensions``: the list of :class:`StatusRoute` registered on the app.
EXTENSION_KEY = "flask_status"


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
                "show_details": show_details,
                "history_size": history_size,
                "html_for_browsers": html_for_browsers,
            }
        )
        self.is_authorized = details.check_is_authorized(is_authorized)
        details.resolve_mode(self._given.get("show_details"), self.is_authorized)  # fail early
        self.authenticator = _check_authenticator(authenticator)
        if endpoint is not None and (not isinstance(endpoint, str) or not endpoint):
            raise TypeError("endpoint must be a non-empty str")
        self.endpoint = endpoint
        self.fields: dict[str, Field] = {}
        self.listeners: list[Listener] = []
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
            self._register(app, app.add_url_rule)
        else:
            app.record_once(
                lambda state: self._register(cast(Flask, state.app), state.add_url_rule)
            )

    def _register(self, app: Flask, add_url_rule: Callable[..., None]) -> None:
        settings = config.resolve(self._given, app.config)
        route = StatusRoute(self, app, settings)
        endpoint = self.endpoint or _default_endpoint(settings.url)
        add_url_rule(settings.url, endpoint, route.view, methods=["GET"])
        add_url_rule(
            settings.url.rstrip("/") + "/<field>", endpoint + "_field", route.view, methods=["GET"]
        )
        routes = app.extensions.setdefault(EXTENSION_KEY, [])
        if not routes:
            app.after_request(no_store)
        routes.append(route)
        if "status" not in app.cli.commands:
            from .cli import status_command  # the CLI needs click, which only Flask apps load

            app.cli.add_command(status_command)

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
    ) -> None:
        """Add ``key`` to the payload: a JSON-serializable constant, or a callable run per request.

        A callable may be sync or async. ``timeout`` and ``cache_ttl`` (seconds) override the
        instance defaults; a failing non-critical field makes the status DEGRADED, not DOWN.
        ``single_flight=False`` gives each request a run of its own (seeing its own request),
        instead of sharing the run in flight. Adding an existing key replaces that field.
        """
        self.fields[key] = make_field(
            key,
            value,
            critical=critical,
            timeout=timeout,
            cache_ttl=cache_ttl,
            single_flight=single_flight,
        )

    def on_evaluated(self, listener: Listener) -> None:
        """Call ``listener(outcomes)`` after each evaluation with every field's :class:`Outcome`."""
        self.listeners.append(listener)


@dataclass
class Pending:
    """A request whose fields are still to be evaluated."""

    fields: list[Field]
    since: float  # Unix time the request began; values measured before it came from the cache
    response: Response
    show_details: bool | None = None  # decided by ``StatusRoute.access``; None: not yet


@dataclass
class Handover:
    """How a view called by the ASGI middleware reaches the server's event loop.

    ``defer`` is true unless a sync authenticator wraps the view (it must see the finished
    answer): the view then leaves its request in ``pending`` and the middleware evaluates it
    on the loop, so no thread is held while checks run.
    """

    defer: bool
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
            app.logger, self.encode, settings.timeout, settings.cache_ttl, settings.max_workers
        )
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
        self.view = self._make_view()

    def _make_view(self) -> View:
        def status_ping(field: str | None = None) -> Response:
            pending = self.pending(field)
            handover = deferred.get()
            if handover is None:  # WSGI
                return self.respond_blocking(pending)
            if handover.defer:
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

            view = authenticator(status_ping_async)
        if not callable(view):
            raise TypeError("authenticator must return a callable view")
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
        return Pending(selected, time.time(), current_app.response_class())

    def respond_blocking(self, pending: Pending) -> Response:
        """Answer from a thread without an event loop (WSGI): evaluate on the portal's loop."""
        # Nothing to run needs no loop, unless is_authorized must be asked (it may be async).
        if not self.access.per_request and not _callables(pending.fields):
            return self.fill(pending, {})
        try:
            return portal_loop.call(self.respond, pending)
        except LoopStopped as exc:
            current_app.logger.error("status route %s: %s", request.path, exc)
            stopped = Outcome(error=str(exc), measured_at=time.time())
            return self.fill(pending, {field.key: stopped for field in _callables(pending.fields)})

    async def respond(self, pending: Pending) -> Response:
        """Evaluate the request's fields on the running event loop and fill the response."""
        await self.access.decide(pending)  # before the checks, on this loop: it may await
        return self.fill(pending, await self.evaluator.evaluate(_callables(pending.fields)))

    def fill(self, pending: Pending, results: Mapping[str, Outcome]) -> Response:
        """Render every field's outcome into the pending response."""
        outcomes = {
            field.key: results[field.key] if field.constant is None else field.constant
            for field in pending.fields
        }
        critical = {field.key: field.critical for field in pending.fields}
        wants_health_json = (
            # the substring test spares the Accept parsing on almost every request
            "health+json" in request.headers.get("Accept", "")
            and request.accept_mimetypes.best_match(["application/json", HEALTH_JSON])
            == HEALTH_JSON
        )
        form = formats.choose(self, pending, wants_health_json)  # None: the formats above

        def encode(outcomes: Mapping[str, Outcome]) -> tuple[str, Health]:
            health = aggregate((critical[key], outcome.ok) for key, outcome in outcomes.items())
            shown = outcomes if self.settings.expose_errors else hide_errors(outcomes)
            if form is not None:
                return form.render(shown, critical, health), health
            if wants_health_json:
                document = health_json_payload(self.settings.message, shown, critical, health)
            else:
                cached = {
                    key: outcome
                    for key, outcome in outcomes.items()
                    if 0 < outcome.measured_at < pending.since
                }
                document = json_payload(self.settings.message, shown, health, cached)
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
        ours = any(view is route.view for route in routes)
    if ours:
        response.headers["Cache-Control"] = "no-store"
    return response


def _encoder(app: Flask) -> Encode:
    """The app's JSON encoding, refusing NaN and Infinity (not JSON) where it can."""
    if isinstance(app.json, DefaultJSONProvider):
        return functools.partial(app.json.dumps, allow_nan=False)
    return app.json.dumps


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
