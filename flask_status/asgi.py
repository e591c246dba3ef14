"""The ASGI adapter: serve FlaskStatus routes on the server's event loop.

``asgiref.wsgi.WsgiToAsgi`` runs every request of a Flask app on one shared thread, so a status
request waiting on slow checks holds up the whole app. :class:`StatusMiddleware` answers the
status routes itself, on the event loop, and passes everything else through::

    asgi_app = StatusMiddleware(WsgiToAsgi(app), app)

Only the status URLs and ``<url>/<field>`` for a field that exists are its own; everything
else, an app's own view under a status URL included, goes to the wrapped app untouched. When
``app.wsgi_app`` is wrapped (ProxyFix, an auth guard), status requests go through that wrapped
WSGI stack, in a worker thread: a guard around the app is never skipped.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from flask import Flask, Response, request_started
from flask.globals import request_ctx
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, MapAdapter, Rule

from . import lifecycle
from .config import DEFAULT_MAX_WORKERS
from .engine import runs_ahead_host
from .extension import EXTENSION_KEY, Handover, StatusRoute, deferred, no_store
from .fields import check_bool, is_async_callable

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class StatusMiddleware:
    """Serve every FlaskStatus route of ``flask_app`` natively; pass other requests to ``asgi_app``.

    Answers are the same as under WSGI: the authenticator, the app's request hooks and error
    handlers all apply. Sync checks run in worker threads, async checks on this event loop;
    request hooks and a sync authenticator run in a worker thread, so they cannot stall it,
    and no thread is held while checks run unless a sync authenticator wraps the view.
    """

    def __init__(
        self, asgi_app: ASGIApp, flask_app: Flask, *, drain_on_shutdown: bool = True
    ) -> None:
        if not isinstance(flask_app, Flask):
            raise TypeError(f"flask_app must be a Flask app, got {type(flask_app).__name__}")
        self.asgi_app = asgi_app
        self.flask_app = flask_app
        self.drain_on_shutdown = check_bool("drain_on_shutdown", drain_on_shutdown)
        self._routes: StatusRoutes | None = None
        # Read off the app at its first status request, when its routes and hooks are set.
        self._app_code: bool | None = None
        self._wraps_view_in_sync_code = False
        # Threads for the app's own code, apart from anyio's default ones the app may use.
        self._limiter = anyio.CapacityLimiter(DEFAULT_MAX_WORKERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        elif scope["type"] != "http" or not self._is_status_request(scope):
            await self.asgi_app(scope, receive, send)
        elif _own_wsgi_app(self.flask_app):
            await self._serve(scope, receive, send)
        else:
            await self._serve_wrapped(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI lifespan protocol, passed on to the wrapped app if it speaks it.

        At startup the app's background checks start; at shutdown its readiness routes
        drain (when ``drain_on_shutdown``) and its background checks stop.
        """
        to_app, app_receives = anyio.create_memory_object_stream[Message](1)
        app_sends, from_app = anyio.create_memory_object_stream[Message](1)

        async def run_wrapped_app() -> None:
            # An app without lifespan support raises (WsgiToAsgi does): then it has no part.
            async with app_sends, app_receives:
                with contextlib.suppress(Exception):
                    await self.asgi_app(scope, app_receives.receive, app_sends.send)

        async with anyio.create_task_group() as task_group, to_app, from_app:
            task_group.start_soon(run_wrapped_app)
            for phase in ("startup", "shutdown"):
                message = await receive()
                if phase == "shutdown":
                    self._stop_background()
                answer = await _ask(to_app, from_app, message)
                if answer is not None and answer["type"] == f"lifespan.{phase}.failed":
                    await send(answer)
                    return
                if phase == "startup":
                    self._start_background()
                    runs_ahead_host.set(task_group)  # runs started ahead live until shutdown
                else:
                    runs_ahead_host.set(None)
                await send({"type": f"lifespan.{phase}.complete"})
            task_group.cancel_scope.cancel()  # runs ahead, an app that went on after shutdown

    def _routes_of_app(self) -> list[StatusRoute]:
        routes: list[StatusRoute] = self.flask_app.extensions.get(EXTENSION_KEY, [])
        return routes

    def _start_background(self) -> None:
        for route in self._routes_of_app():
            route.background.ensure(route.status.fields.values())

    def _stop_background(self) -> None:
        if self.drain_on_shutdown:
            lifecycle.drain()
        for route in self._routes_of_app():
            route.background.stop()

    def _is_status_request(self, scope: Scope) -> bool:
        if self._routes is None:
            self._routes = StatusRoutes(self.flask_app)
        return self._routes.serves(_path_info(scope), scope["method"])

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.flask_app
        environ = _environ(scope, await _read_body(receive))
        context = app.request_context(environ)
        if self._app_code is None:
            self._app_code = _has_app_code(app)
            self._wraps_view_in_sync_code = _sync_authenticator(app)
        handover = Handover(defer=not self._wraps_view_in_sync_code)
        token = deferred.set(handover)
        error: BaseException | None = None
        try:
            try:
                context.push()
                response = await self._full_dispatch(handover)
            except Exception as exc:
                error = exc
                response = app.handle_exception(exc)
            except BaseException as exc:
                error = exc
                raise
            app_iter, status, headers = response.get_wsgi_response(environ)
        finally:
            if error is not None and app.should_ignore_error(error):
                error = None
            context.pop(error)
            deferred.reset(token)
        try:
            body = b"".join(app_iter)
        finally:
            if hasattr(app_iter, "close"):
                app_iter.close()
        await _respond(send, status, headers, body)

    async def _serve_wrapped(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Through the app's wrapped WSGI stack, in a worker thread, as a WSGI server would."""
        environ = _environ(scope, await _read_body(receive))
        status, headers, body = await anyio.to_thread.run_sync(
            _call_wsgi, self.flask_app.wsgi_app, environ, limiter=self._limiter
        )
        await _respond(send, status, headers, body)

    async def _full_dispatch(self, handover: Handover) -> Response:
        """``Flask.full_dispatch_request``, with the checks evaluated on this event loop."""
        app = self.flask_app
        try:
            rv = await self._in_thread(self._before_and_view)
            if inspect.isawaitable(rv):  # an async authenticator's wrapper
                rv = await rv
            for route, pending in handover.pending:  # the view left its checks to this loop
                await route.respond(pending)
        except Exception as exc:
            rv = app.handle_user_exception(exc)
        response: Response = await self._in_thread(app.finalize_request, rv)
        return response

    def _before_and_view(self) -> Any:
        """Request hooks, then the view (whose result is awaitable when the view is async)."""
        app = self.flask_app
        request_started.send(app, _async_wrapper=app.ensure_sync)
        rv = app.preprocess_request()
        if rv is not None:
            return rv
        req = request_ctx.request
        if req.routing_exception is not None:
            app.raise_routing_exception(req)
        rule = req.url_rule
        assert rule is not None and rule.endpoint is not None
        if getattr(rule, "provide_automatic_options", False) and req.method == "OPTIONS":
            return app.make_default_options_response()
        return app.view_functions[rule.endpoint](**(req.view_args or {}))

    async def _in_thread(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run the app's own code in a worker thread when it may block or be async.

        Request hooks, signal receivers and a sync authenticator are the app's code: in a
        thread they cannot stall the event loop, and async hooks run as Flask runs them.
        Without any, Flask's own steps are quick and run here.
        """
        if self._app_code:
            return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter)
        return func(*args)


class StatusRoutes:
    """The app's FlaskStatus URLs, to recognise the requests that are the middleware's own."""

    def __init__(self, app: Flask) -> None:
        routes: list[StatusRoute] = app.extensions.get(EXTENSION_KEY, [])
        self._by_endpoint: dict[str, StatusRoute] = {}
        rules = []
        for rule in app.url_map.iter_rules():
            view = app.view_functions.get(rule.endpoint)
            route = next((route for route in routes if route.view is view), None)
            if route is not None:
                self._by_endpoint[rule.endpoint] = route
                rules.append(Rule(rule.rule, endpoint=rule.endpoint, methods=rule.methods))
        self._urls: MapAdapter = Map(rules, strict_slashes=app.url_map.strict_slashes).bind(
            "localhost"
        )

    def serves(self, path: str, method: str) -> bool:
        """Whether ``path`` is a status URL, or ``<url>/<field>`` for a field that exists."""
        try:
            endpoint, arguments = self._urls.match(path, method=method)
        except HTTPException:  # not found, wrong method, or a redirect: Flask answers those
            return False
        field = arguments.get("field")
        return field is None or field in self._by_endpoint[endpoint].status.fields


async def _ask(
    to_app: MemoryObjectSendStream[Message],
    from_app: MemoryObjectReceiveStream[Message],
    message: Message,
) -> Message | None:
    """Pass a lifespan event to the wrapped app; its answer, or None if it does not answer."""
    try:
        await to_app.send(message)
        return await from_app.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
        return None  # it returned, or raised: no lifespan support


def _own_wsgi_app(app: Flask) -> bool:
    """Whether ``app.wsgi_app`` is Flask's own, not wrapped in WSGI middleware."""
    return getattr(app.wsgi_app, "__func__", None) is Flask.wsgi_app


def _call_wsgi(
    wsgi_app: Callable[..., Any], environ: dict[str, Any]
) -> tuple[str, list[tuple[str, str]], bytes]:
    """Call a WSGI app and collect its whole answer (status answers are small)."""
    started: list[Any] = []
    chunks: list[bytes] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        started[:] = [status, headers]
        return chunks.append

    iterable = wsgi_app(environ, start_response)
    try:
        chunks.extend(iterable)
    finally:
        if hasattr(iterable, "close"):
            iterable.close()
    return started[0], started[1], b"".join(chunks)


async def _respond(send: Send, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": int(status.split(" ", 1)[0]),
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _sync_authenticator(app: Flask) -> bool:
    """Whether a sync authenticator wraps one of the app's status views."""
    routes: list[StatusRoute] = app.extensions.get(EXTENSION_KEY, [])
    return any(
        route.status.authenticator is not None and not is_async_callable(route.view)
        for route in routes
    )


def _has_app_code(app: Flask) -> bool:
    """Whether serving a status request runs hooks, signal receivers or a sync authenticator."""
    registries = (app.before_request_funcs, app.after_request_funcs, app.url_value_preprocessors)
    hooks = [
        func
        for registry in registries
        for funcs in registry.values()
        for func in funcs
        if func is not no_store  # the extension's own hook only sets a header
    ]
    return bool(hooks) or bool(request_started.receivers) or _sync_authenticator(app)


def _path_info(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _environ(scope: Scope, body: bytes) -> dict[str, Any]:
    """A WSGI environ for an ASGI HTTP scope (as ``asgiref.wsgi`` builds it)."""
    server = scope.get("server") or ("localhost", 80)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode("utf-8").decode("latin-1"),
        "PATH_INFO": _path_info(scope).encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1] or 0),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    client = scope.get("client")
    if client:
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = client[0], str(client[1])
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        if name not in ("CONTENT_LENGTH", "CONTENT_TYPE"):
            name = "HTTP_" + name
        value = raw_value.decode("latin-1")
        if name in environ:  # repeated header: join as HTTP does (cookies with "; ")
            value = environ[name] + ("; " if name == "HTTP_COOKIE" else ",") + value
        environ[name] = value
    return environ
