"""How a status request is served: the route's view, its evaluation and its answer.

One :class:`StatusRoute` is one FlaskStatus served by one app. Every status request goes
through :meth:`StatusRoute.pending` (which fields, readiness, the startup gate), then is
evaluated on an event loop and rendered by :meth:`StatusRoute.fill`. Where it is evaluated
depends on who calls the view, and nothing else:

=====================================================  ======================================
the view is called                                     the fields are evaluated
=====================================================  ======================================
by a WSGI server, in a thread without an event loop     on the process's own loop, through its
(gunicorn sync/gthread/gevent, waitress, Flask's dev    portal (:meth:`respond_blocking`); so
server; a wrapped ``app.wsgi_app`` under                too under any server when no loop is
``StatusMiddleware``, which runs it in a thread)        at hand (the CLI)
by ``StatusMiddleware``, on the server's loop           on that loop: the view hands the
                                                        request over (:data:`deferred`) and the
                                                        middleware awaits :meth:`respond`
by ``StatusMiddleware``, inside a sync                  on the server's loop, from the worker
authenticator's wrapper (in a worker thread)            thread (``anyio.from_thread.run``): the
                                                        wrapper must see the finished answer
by ``StatusMiddleware``, inside an async                on the server's loop, awaited by the
authenticator's wrapper                                 wrapper, which must see the answer
=====================================================  ======================================

A live status stream (:meth:`StatusRoute.stream`) is refused or answered by the view: a WSGI
server iterates its body (each event awaited on the process's own loop), the middleware sends
it event by event on the server's loop (:data:`deferred` hands it over).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
import time
from collections.abc import Callable, Collection, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, cast

import anyio.from_thread
from flask import Flask, Response, abort, current_app, request
from flask.json.provider import DefaultJSONProvider

from . import config, details, formats, lifecycle, telemetry, watch
from .aggregate import Health, aggregate
from .background import BackgroundRuns
from .engine import Evaluator
from .events import Events, Subscription
from .fields import Field, Kind, is_async_callable, parents_of
from .history import History
from .loop import LoopStopped, portal_loop
from .outcome import Encode, Outcome, describe
from .store import Sharing
from .threads import gevent_patched

View = Callable[..., Any]
Authenticator = Callable[[View], View]
Listener = Callable[[Mapping[str, Outcome]], object]

#: Key in ``app.extensions``: the list of :class:`StatusRoute` registered on the app.
EXTENSION_KEY = "flask_status"


class Registration(Protocol):
    """What a route serves, as registered with ``FlaskStatus`` (which is one)."""

    fields: dict[str, Field]
    authenticator: Authenticator | None
    readiness: bool
    started_by: str | tuple[str, ...] | None
    listeners: list[Listener]
    change_listeners: list[Subscription]
    is_authorized: details.IsAuthorized | None


def routes_of(app: Flask) -> list[StatusRoute]:
    """The status routes registered on ``app``."""
    routes: list[StatusRoute] = app.extensions.get(EXTENSION_KEY, [])
    return routes


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
    #: Fields that ``fields`` depend on but the request did not ask for: evaluated for them,
    #: not shown (but with ``show_parents``) and never counted in the overall status.
    parents: list[Field] = dataclasses.field(default_factory=list)
    show_parents: bool = False  # ``<url>/<field>?verbose`` shows what the field depends on

    #: A live status stream's, for the ASGI middleware to send as it goes.
    stream: watch.Stream | None = None

    @property
    def evaluated(self) -> list[Field]:
        """The fields to evaluate: those asked for, and what they depend on."""
        return [*self.fields, *self.parents] if self.parents else self.fields


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

    def __init__(self, status: Registration, app: Flask, settings: config.Settings) -> None:
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
            settings.cache_ttl_failure,
        )
        if settings.store is not None:
            namespace = f"{app.import_name}:{settings.url}"
            self.evaluator.sharing = Sharing(settings.store, namespace, app.logger)
        self.background = BackgroundRuns(self.evaluator)
        self.gate_open = False  # the startup gate of ``started_by`` fields, once open, stays so
        self.logged_gate_error: str | None = None
        self.history = History(settings.history_size)
        self.evaluator.run_listeners.append(self.history.record)
        self.events = Events(
            settings.url,
            status.change_listeners,
            self.evaluator,
            self._overall,
            lambda: _callables(list(self.status.fields.values())),
        )
        self.evaluator.state_listeners.append(self.events.field_shows)
        self.evaluator.telemetry = telemetry.for_route(
            settings.telemetry, settings.url, settings.expose_errors
        )
        if self.evaluator.telemetry is not None:
            self.evaluator.state_listeners.append(self.evaluator.telemetry.record_state)
        self.watching = watch.Watching(settings.max_watchers)
        self.evaluator.run_listeners.append(self.watching.record)
        watch.end_streams_on_signals()
        self.rendering = formats.Rendering(
            settings.message,
            self.encode,
            self.history,
            settings.expose_errors,
            settings.html_for_browsers,
        )
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
        try:
            lifecycle.drain(self.settings.drain_file)
        except OSError as exc:  # the drain file cannot be made: this process drains alone
            current_app.logger.error("status: draining this process only: %s", exc)
            error = f"drain_file: {describe(exc)}: only this process drains"
            response = current_app.json.response({"status": Health.DRAINING.value, "error": error})
            response.status_code = 503  # drained here, but not the processes watching the file
            return cast(Response, response)
        current_app.logger.info("status: draining")
        self.events.readiness_looked()
        return cast(Response, current_app.json.response({"status": Health.DRAINING.value}))

    @property
    def views(self) -> tuple[View, ...]:
        """Every view of this route: the status view, and the drain trigger's."""
        return (self.view, self.drain_view)

    def _make_view(self) -> View:
        def status_ping(field: str | None = None) -> Response:
            pending = self.pending(field)
            if _wants_stream():
                return self.stream(pending)
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
                if deferred.get() is not None and not _wants_stream():  # on the server's loop
                    return await self.respond(self.pending(field))
                return status_ping(field)  # on the event loop Flask runs for this view

            return _dispatched_as_sync(authenticator(status_ping_async))
        if not callable(view):
            raise TypeError("authenticator must return a callable view")
        self.sync_authenticator = True
        return view

    def pending(self, name: str | None = None) -> Pending:
        """The fields this request asks for: one by name, or all but ``?exclude=`` ones; and
        those they depend on, evaluated but not shown (the one field's, under ``?verbose``)."""
        fields = self.status.fields
        if name is not None:
            if name not in fields:
                abort(404)
            selected = [fields[name]]
        else:
            excluded = request.args.getlist("exclude") if request.query_string else []
            selected = [field for key, field in fields.items() if key not in excluded]
        state = self.readiness_state()
        if self.status.readiness:
            self.events.readiness_looked()
        if state is not None:
            return Pending([], current_app.response_class(), state)
        gate_error = self._gate_error()
        if gate_error is not None:
            return Pending([], current_app.response_class(), Health.STARTING, gate_error)
        parents = (
            parents_of(selected, fields) if any(field.depends_on for field in selected) else []
        )
        self.background.ensure([*selected, *parents] if parents else selected)
        show_parents = bool(parents) and name is not None and formats.asks_verbose()
        return Pending(
            selected, current_app.response_class(), parents=parents, show_parents=show_parents
        )

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

    def _overall(self, outcomes: Mapping[str, Outcome] | None) -> str | None:
        """The route's overall state, as it would answer with every field's ``outcomes``
        (``None``: not every field has one yet), for change events."""
        state = self.readiness_state()
        if state is None and outcomes is not None:
            critical = {key: self.status.fields[key].critical for key in outcomes}
            state = self._gated(_health(outcomes, critical), outcomes)
        return state.value if state is not None else None

    def respond_blocking(self, pending: Pending) -> Response:
        """Answer from a thread without an event loop (WSGI): evaluate on the portal's loop."""
        callables = _callables(pending.evaluated)
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
        # Before the checks, on this loop: it may await.
        pending.show_details = await self.access.decide(pending.show_details)
        evaluation = await self.evaluator.evaluate(_callables(pending.evaluated))
        return self.fill(pending, evaluation.outcomes, evaluation.cached)

    def fill(
        self, pending: Pending, results: Mapping[str, Outcome], cached: Collection[str] = ()
    ) -> Response:
        """Render every field's outcome into the pending response (``cached``: the keys whose
        outcome was not measured for this request)."""
        outcomes, critical = self._shown(pending, results)
        response = pending.response
        formats.fill(
            response,
            self.rendering,
            outcomes,
            critical,
            cached,
            self.access.shows(pending.show_details),
            self._health_of(pending, critical),
            current_app.logger,
        )
        for listener in self.status.listeners:
            try:
                listener(outcomes)
            except BaseException:  # a broken metrics hook must not break the health answer
                # (nor, raising SystemExit, stop the event loop it is called on)
                current_app.logger.exception("status listener %r failed", listener)
        return response

    def _shown(
        self, pending: Pending, results: Mapping[str, Outcome]
    ) -> tuple[dict[str, Outcome], dict[str, bool]]:
        """Every entry an answer shows (fields, the parents ``?verbose`` asks for, the store,
        the startup gate), and which of them are critical."""
        shown = [*pending.fields, *pending.parents] if pending.show_parents else pending.fields
        outcomes = {
            field.key: results[field.key] if field.constant is None else field.constant
            for field in shown
        }
        critical = {field.key: field.critical for field in shown}
        sharing = self.evaluator.sharing
        if sharing is not None and sharing.unavailable is not None and pending.fields:
            # The store is a dependency too, if not a critical one: checks ran here instead.
            outcomes["store"] = Outcome(error=sharing.unavailable, measured_at=time.time())
            critical["store"] = False
        if pending.gate_error is not None:
            outcomes["started_by"] = Outcome(error=pending.gate_error)
            critical["started_by"] = True
        return outcomes, critical

    def _health_of(
        self, pending: Pending, critical: Mapping[str, bool]
    ) -> Callable[[Mapping[str, Outcome]], Health]:
        # A parent shown under ``?verbose`` is there to explain: the asked field's own result
        # (skipped counts as failing) already says what the parent's failure means.
        uncounted = {field.key for field in pending.parents} if pending.show_parents else ()
        return lambda outcomes: (
            pending.state or self._gated(_health(outcomes, critical, uncounted), outcomes)
        )

    def document(
        self,
        pending: Pending,
        results: Mapping[str, Outcome],
        cached: Collection[str],
        verbose: bool,
    ) -> watch.Document:
        """A live stream's event: the JSON this request would be answered with (no request
        context needed), and its signature."""
        outcomes, critical = self._shown(pending, results)
        shows = self.access.shows(pending.show_details)
        form = formats.stream_form(self.rendering, shows, verbose, cached)
        body = formats.render(
            self.rendering,
            form,
            False,
            outcomes,
            critical,
            cached,
            self._health_of(pending, critical),
            self.evaluator.logger,
        )
        return watch.Document(body.text, formats.signature(body.health, outcomes, shows))

    def stream(self, pending: Pending) -> Response:
        """Answer with a live status stream, or refuse it (406 where it would hold a whole
        worker or the whole app, 503 beyond ``max_watchers``)."""
        refused = self._stream_refused()
        if refused is not None:
            return _error(406, refused)
        if not self.watching.take_slot():
            return _error(
                503,
                f"{self.settings.max_watchers} live status streams are open already "
                "(max_watchers): try again later",
            )
        stream = watch.Stream(
            self,
            pending,
            bool(request.query_string) and formats.asks_verbose(),
            self.settings.watch_max_seconds,
        )
        response = pending.response
        handover = deferred.get()
        try:
            if handover is None:  # WSGI: the server iterates the body
                if self.access.per_request:
                    with contextlib.suppress(LoopStopped):  # undecided: no details
                        pending.show_details = portal_loop.call(self.access.decide, None)
                response.response = stream.wsgi()
            else:  # the middleware sends it as it goes
                response.response = iter(())
                pending.stream = stream
                handover.pending.append((self, pending))
            response.headers.pop("Content-Length", None)  # it ends when the stream does
        except BaseException:
            stream.close()
            raise
        response.mimetype = watch.MEDIA_TYPE
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
        return response

    def _stream_refused(self) -> str | None:
        """Why this server cannot serve a stream without holding a whole worker or the whole
        app; ``None`` when it can."""
        if deferred.get() is not None:  # the ASGI middleware, on the server's loop
            return None
        environ = request.environ
        if environ.get(_ONE_THREAD) or _in_one_thread_for_a_loop():
            return (
                "live status streams need StatusMiddleware under an ASGI server: "
                "asgiref's WsgiToAsgi serves the whole app from one thread, which a stream "
                "would hold"
            )
        if environ.get("wsgi.multithread") or gevent_patched() or self.settings.watch_sync_workers:
            return None
        return (
            "this WSGI server serves one request at a time per worker, which a live status "
            "stream would hold: set watch_sync_workers=True (STATUS_WATCH_SYNC_WORKERS) to "
            "allow it, or serve with threads or gevent"
        )

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


#: In the WSGI environ: whether the view was called in the thread asgiref runs sync code in
#: for an event loop (set before an async wrapper hands the view over to that loop).
_ONE_THREAD = "flask_status.one_thread"


def _wants_stream() -> bool:
    """Whether the request asks for a live status stream (``Accept``, or ``?watch``); a
    ``HEAD`` request gets the plain answer's head instead."""
    return request.method == "GET" and (
        watch.MEDIA_TYPE in request.headers.get("Accept", "")
        or (bool(request.query_string) and "watch" in request.args)
    )


def _in_one_thread_for_a_loop() -> bool:
    """Whether this thread is one that asgiref's ``sync_to_async`` runs sync code in for an
    event loop: a bare ``WsgiToAsgi`` calls the app there, one request after another."""
    sync = sys.modules.get("asgiref.sync")
    return (
        sync is not None
        and getattr(sync.SyncToAsync.threadlocal, "main_event_loop", None) is not None
    )


def _error(status: int, error: str) -> Response:
    response = cast(Response, current_app.json.response({"error": error}))
    response.status_code = status
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
        # Known only here, in the server's thread: the view runs on another loop's thread.
        request.environ[_ONE_THREAD] = _in_one_thread_for_a_loop()
        return current_app.ensure_sync(view)(**view_args)

    return status_ping


def _health(
    outcomes: Mapping[str, Outcome],
    critical: Mapping[str, bool],
    uncounted: Collection[str] = (),
) -> Health:
    """The overall status of ``outcomes``, each critical or not as ``critical`` says; the
    ``uncounted`` ones (parents shown only for ``?verbose``) do not count."""
    return aggregate(
        (critical[key], outcome.state) for key, outcome in outcomes.items() if key not in uncounted
    )


def _callables(fields: list[Field]) -> list[Field]:
    return [field for field in fields if field.kind is not Kind.CONSTANT]
