"""The Flask adapter: the ``FlaskStatus`` extension, its route and the authenticator."""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Callable, Optional, Union

from flask import Blueprint, Flask, Response, current_app

from .aggregate import Health, aggregate
from .engine import Evaluator
from .fields import (
    DEFAULT_TIMEOUT,
    Field,
    Kind,
    check_message,
    check_seconds,
    check_url,
    is_async_callable,
    make_field,
)
from .outcome import Outcome
from .render import JSON_ERRORS, payload, unserializable
from .workers import DEFAULT_MAX_WORKERS, WorkerPool, background_loop

Scaffold = Union[Flask, Blueprint]
Authenticator = Callable[[Callable[..., Any]], Callable[..., Any]]

#: Key in ``app.extensions``: every FlaskStatus registered on the app, with its evaluator.
EXTENSION_KEY = "flask_status"

_DEFAULT_URL = "/api/status"


class DeferredResponse:
    """Set by the ASGI middleware: the view hands back an empty response to fill on the loop."""

    def __init__(self) -> None:
        self.status: Optional[FlaskStatus] = None
        self.response: Optional[Response] = None


deferred: ContextVar[Optional[DeferredResponse]] = ContextVar("flask_status_deferred", default=None)


class FlaskStatus:
    """Adds a status route to a Flask app or blueprint.

    ``FlaskStatus(app)`` serves ``{"status": "OK"}`` at ``/api/status``. Add fields with
    :meth:`add_field`; callable fields run on every request, concurrently, each under a timeout.
    """

    def __init__(
        self,
        app: Optional[Scaffold] = None,
        url: str = _DEFAULT_URL,
        message: Union[str, Mapping[str, Any], None] = None,
        authenticator: Optional[Authenticator] = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        cache_ttl: float = 0,
        max_workers: int = DEFAULT_MAX_WORKERS,
        endpoint: Optional[str] = None,
    ) -> None:
        self.url = check_url(url)
        self.message = check_message({"status": "OK"} if message is None else message)
        self.authenticator = _check_authenticator(authenticator)
        self.timeout = check_seconds("timeout", timeout)
        self.cache_ttl = check_seconds("cache_ttl", cache_ttl, allow_zero=True)
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be an int >= 1, got {max_workers!r}")
        if endpoint is not None and (not isinstance(endpoint, str) or not endpoint):
            raise TypeError("endpoint must be a non-empty str")
        self.endpoint = endpoint
        self.fields: dict[str, Field] = {}
        self.views: list[Callable[..., Any]] = []
        self.listeners: list[Callable[[Mapping[str, Outcome]], object]] = []
        self._pool = WorkerPool(max_workers)
        if app is not None:
            self.init_app(app)

    # -- setup ---------------------------------------------------------------------------

    def init_app(
        self,
        app: Scaffold,
        url: Optional[str] = None,
        message: Union[str, Mapping[str, Any], None] = None,
        authenticator: Optional[Authenticator] = None,
    ) -> None:
        """Register the status route on ``app`` (a Flask app or a blueprint).

        ``url``, ``message`` and ``authenticator`` are accepted here too, as Flask-Status 1.0.1
        did; given here they replace the constructor's.
        """
        if not isinstance(app, (Flask, Blueprint)):
            raise TypeError(f"app must be a Flask app or a Blueprint, got {type(app).__name__}")
        if url is not None:
            self.url = check_url(url)
        if message is not None:
            self.message = check_message(message)
        if authenticator is not None:
            self.authenticator = _check_authenticator(authenticator)
        view = self._make_view()
        self.views.append(view)
        app.add_url_rule(
            self.url,
            endpoint=self.endpoint or _default_endpoint(self.url),
            view_func=view,
            methods=["GET"],
        )
        if isinstance(app, Flask):
            self._register(app)
        else:
            app.record_once(lambda state: self._register(state.app))

    def _register(self, app: Flask) -> None:
        evaluators: dict[FlaskStatus, Evaluator] = app.extensions.setdefault(EXTENSION_KEY, {})
        evaluators[self] = Evaluator(
            app.logger, self._pool, background_loop, self.timeout, self.cache_ttl
        )

    def add_field(
        self,
        key: str,
        value: Any,
        *,
        timeout: Optional[float] = None,
        critical: bool = True,
        cache_ttl: Optional[float] = None,
    ) -> None:
        """Add ``key`` to the payload: a JSON-serializable constant, or a callable run per request.

        A callable may be sync or async. ``timeout`` and ``cache_ttl`` (seconds) override the
        instance defaults; a failing non-critical field makes the status DEGRADED, not DOWN.
        Adding an existing key replaces that field.
        """
        self.fields[key] = make_field(
            key, value, critical=critical, timeout=timeout, cache_ttl=cache_ttl
        )

    def on_evaluated(self, listener: Callable[[Mapping[str, Outcome]], object]) -> None:
        """Call ``listener(outcomes)`` after every evaluation, with every field's :class:`Outcome`."""
        self.listeners.append(listener)

    # -- serving -------------------------------------------------------------------------

    def _make_view(self) -> Callable[..., Any]:
        def status_ping(**_: Any) -> Response:
            response = current_app.response_class()
            pending = deferred.get()
            if pending is not None:  # the ASGI middleware evaluates on its event loop
                pending.status, pending.response = self, response
                return response
            outcomes = self._evaluator().evaluate_blocking(self._callable_fields())
            return self._fill(response, outcomes)

        if self.authenticator is None:
            return status_ping
        view = self.authenticator(status_ping)
        if is_async_callable(view):
            # The wrapper awaits the view: give it a coroutine function around the same logic.
            async def status_ping_async(**kwargs: Any) -> Response:
                return status_ping(**kwargs)

            view = self.authenticator(status_ping_async)
        if not callable(view):
            raise TypeError("authenticator must return a callable view")
        return view

    def _evaluator(self) -> Evaluator:
        return current_app.extensions[EXTENSION_KEY][self]  # type: ignore[no-any-return]

    def _callable_fields(self) -> list[Field]:
        return [field for field in self.fields.values() if field.kind is not Kind.CONSTANT]

    async def fill_async(self, response: Response) -> Response:
        """Evaluate on the running event loop and fill ``response`` (used by the middleware)."""
        callables = self._callable_fields()
        outcomes = await self._evaluator().evaluate(callables) if callables else {}
        return self._fill(response, outcomes)

    def _fill(self, response: Response, results: Mapping[str, Outcome]) -> Response:
        outcomes = {
            key: Outcome(field.value) if field.kind is Kind.CONSTANT else results[key]
            for key, field in self.fields.items()
        }
        dumps = current_app.json.dumps
        try:
            health = self._health(outcomes)
            body = dumps(payload(self.message, outcomes, health))
        except JSON_ERRORS:
            failed = unserializable(outcomes, dumps)
            for key, outcome in failed.items():
                current_app.logger.error("status field %r: %s", key, outcome.error)
            outcomes.update(failed)
            health = self._health(outcomes)
            body = dumps(payload(self.message, outcomes, health))
        for listener in self.listeners:
            listener(outcomes)
        response.set_data(body + "\n")
        response.status_code = health.http_status
        response.mimetype = "application/json"
        response.headers["Cache-Control"] = "no-store"
        return response

    def _health(self, outcomes: Mapping[str, Outcome]) -> Health:
        return aggregate(
            (self.fields[key].critical, outcome.ok) for key, outcome in outcomes.items()
        )


def _check_authenticator(authenticator: Any) -> Optional[Authenticator]:
    if authenticator is not None and not callable(authenticator):
        raise TypeError(
            f"authenticator must be a callable decorator, got {type(authenticator).__name__}"
        )
    return authenticator  # type: ignore[no-any-return]


def _default_endpoint(url: str) -> str:
    """``status_ping`` for the default URL (as in 1.0.1), else a name derived from the URL."""
    if url == _DEFAULT_URL:
        return "status_ping"
    return "status_ping_" + (re.sub(r"\W+", "_", url).strip("_") or "root")
