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
import contextvars
import functools
import inspect
import io
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from flask import (
    Flask,
    appcontext_popped,
    appcontext_pushed,
    appcontext_tearing_down,
    got_request_exception,
    request_finished,
    request_started,
    request_tearing_down,
)
from flask.sessions import SecureCookieSessionInterface
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, MapAdapter, Rule

from . import lifecycle
from .config import DEFAULT_MAX_WORKERS
from .fields import check_bool
from .loop import raise_if_cancelled, runs_ahead_host
from .route import Handover, StatusRoute, deferred, no_store, routes_of
from .watch import MEDIA_TYPE, Stream, end_streams_on_signals

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
T = TypeVar("T")

#: Flask's signals sent while a status request is served: before its checks, and after.
_SIGNALS_BEFORE = (appcontext_pushed, request_started)
_SIGNALS_AFTER = (
    request_finished,
    got_request_exception,
    request_tearing_down,
    appcontext_tearing_down,
    appcontext_popped,
)


class StatusMiddleware:
    """Serve every FlaskStatus route of ``flask_app`` natively; pass other requests to ``asgi_app``.

    Answers are the same as under WSGI: a status request goes through Flask's own steps, in
    Flask's order (see :class:`Exchange`). Sync checks run in worker threads, async checks on
    this event loop; the app's own code (hooks, teardown functions, error handlers, signal
    receivers, a sync authenticator) runs in worker threads, so it cannot stall the loop, and
    no thread is held while checks run unless a sync authenticator wraps the view.
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
        self._app_code: AppCode | None = None
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

    def _start_background(self) -> None:
        for route in routes_of(self.flask_app):
            route.background.ensure(route.status.fields.values())

    def _stop_background(self) -> None:
        if self.drain_on_shutdown:
            lifecycle.drain()
        for route in routes_of(self.flask_app):
            route.background.stop()

    def _is_status_request(self, scope: Scope) -> bool:
        if self._routes is None:
            self._routes = StatusRoutes(self.flask_app)
        return self._routes.serves(_path_info(scope), scope["method"])

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """As Flask's ``wsgi_app`` serves it, with the checks evaluated on this event loop."""
        exchange = Exchange(self.flask_app, _environ(scope, await _read_body(receive)))
        if self._app_code is None:
            self._app_code = AppCode(self.flask_app)
        placement = self._app_code.placement(self.flask_app, self._limiter)
        try:
            try:
                await placement.run(placement.before_in_thread, exchange.begin)
                if exchange.waits:
                    await placement.wait(exchange.wait)
                status, headers, body = await placement.run(
                    placement.after_in_thread, exchange.finish
                )
            except BaseException as exc:
                # Cancelled (or failed) between steps or during one: the teardowns run anyway.
                await _give_up(placement, exchange, exc)
                raise
            if exchange.stream is not None:
                await _send_stream(send, receive, status, headers, exchange.stream)
            else:
                await _respond(send, status, headers, body)
        finally:
            for _, pending in exchange.handover.pending:
                if pending.stream is not None:  # not sent (an error, a hook's own answer)
                    pending.stream.close()

    async def _serve_wrapped(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Through the app's wrapped WSGI stack, in a worker thread, as a WSGI server would.

        A live status stream's chunks are each waited for in a worker thread too; as under a
        WSGI server, a client that left is noticed at the next chunk.
        """
        environ = _environ(scope, await _read_body(receive))
        status, headers, body, stream = await anyio.to_thread.run_sync(
            _call_wsgi, self.flask_app.wsgi_app, environ, limiter=self._limiter
        )
        if stream is None:
            await _respond(send, status, headers, body)
            return
        chunks = iter(stream)
        try:
            await _respond(send, status, headers, b"", more_body=True)
            while (
                chunk := await anyio.to_thread.run_sync(next, chunks, None, limiter=self._limiter)
            ) is not None:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            if hasattr(stream, "close"):
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(stream.close, limiter=self._limiter)


async def _give_up(placement: Placement, exchange: Exchange, error: BaseException) -> None:
    """Tear down a request that ``error`` stopped, once its step has returned (see Placement).

    A teardown function that raises is logged: what stopped the request is what the server
    hears. Without the app's code, Flask's own steps run here, at once, in the request's task
    (whose context they set: a task's copy of it could not reset it). Otherwise in a thread,
    from a task of its own: a task group waits for its tasks through asyncio's
    ``task.cancel()`` too, which goes through anyio's shield.
    """
    if placement.context is None:
        _tear_down(exchange, error)
        return
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(_give_up_in_a_thread, placement, exchange, error)


async def _give_up_in_a_thread(
    placement: Placement, exchange: Exchange, error: BaseException
) -> None:
    with anyio.CancelScope(shield=True):
        await placement.run(
            placement.after_in_thread, functools.partial(_tear_down, exchange, error)
        )


def _tear_down(exchange: Exchange, error: BaseException) -> None:
    try:
        exchange.give_up(error)
    except Exception:
        exchange.app.logger.exception("status: tearing down a request that did not finish")


class Exchange:
    """One status request, served in the steps of Flask's ``wsgi_app``.

    Flask's own methods do the work, in its order; the steps stop where the view has left its
    checks to the event loop (see :class:`Handover`), so that no thread waits for them.
    """

    def __init__(self, app: Flask, environ: dict[str, Any]) -> None:
        self.app = app
        self.environ = environ
        self.flask_context = app.request_context(environ)
        self.handover = Handover()
        self.result: Any = None  # what the view, or a before_request hook, returned
        #: Raised by a hook or the view: Flask's error handlers make an answer of it.
        self.raised: Exception | None = None
        #: Not handled: ``handle_exception`` answers it, and the teardown functions see it.
        self.error: BaseException | None = None
        self.torn_down = False
        #: The live status stream to send once the answer's head is sent, if it is one.
        self.stream: Stream | None = None
        self._token: contextvars.Token[Handover | None] | None = None

    def begin(self) -> None:
        """Push the contexts, then ``full_dispatch_request`` up to the view's return value."""
        if self.torn_down:  # given up on before its thread started: Flask never saw it
            return
        app = self.app
        self._token = deferred.set(self.handover)
        try:
            self.flask_context.push()
        except Exception as exc:
            self.error = exc
            return
        app._got_first_request = True  # as full_dispatch_request does: setup calls now fail
        try:
            request_started.send(app, _async_wrapper=app.ensure_sync)
            result = app.preprocess_request()
            self.result = app.dispatch_request() if result is None else result
        except Exception as exc:
            self.raised = exc

    @property
    def waits(self) -> bool:
        """Whether the view left work to the event loop: its checks, or an async wrapper."""
        return (
            self.error is None
            and self.raised is None
            and (bool(self.handover.pending) or inspect.isawaitable(self.result))
        )

    async def wait(self) -> None:
        """The view's work on the event loop: an async authenticator, and the checks."""
        try:
            if inspect.isawaitable(self.result):
                self.result = await self.result
            for route, pending in self.handover.pending:
                if pending.stream is None:
                    await route.respond(pending)
                else:  # decided here, in the request's context; its events are sent later
                    pending.show_details = await route.access.decide(pending.show_details)
        except Exception as exc:
            self.raised = exc

    def finish(self) -> tuple[str, list[tuple[str, str]], bytes]:
        """Finalize the answer (or handle the error), tear the contexts down, read the body."""
        app = self.app
        try:
            try:
                if self.error is not None:
                    raise self.error
                response = app.finalize_request(self._handled())
            except Exception as exc:
                self.error = exc
                response = app.handle_exception(exc)
            except BaseException as exc:
                self.error = exc
                raise
            app_iter, status, headers = response.get_wsgi_response(self.environ)
            self.stream = next(
                (
                    pending.stream
                    for _, pending in self.handover.pending
                    if pending.stream is not None and pending.response is response
                ),
                None,
            )
        finally:
            self.tear_down()
        try:
            body = b"".join(app_iter)
        finally:
            if hasattr(app_iter, "close"):
                app_iter.close()
        return status, headers, body

    def _handled(self) -> Any:
        """The view's result, or what the app's error handlers make of what was raised."""
        if self.raised is None:
            return self.result
        try:
            raise self.raised  # handle_user_exception re-raises the exception being handled
        except Exception as exc:
            return self.app.handle_user_exception(exc)

    def give_up(self, error: BaseException) -> None:
        """Tear down a request stopped by ``error`` (a cancellation), unless its step did."""
        if not self.torn_down:
            self.error = error
            self.tear_down()

    def tear_down(self) -> None:
        """Pop the contexts: teardown functions see the error, unless Flask ignores it."""
        self.torn_down = True
        if self._token is None:  # never begun
            return
        error = self.error
        if error is not None and self.app.should_ignore_error(error):
            error = None
        try:
            self.flask_context.pop(error)
        finally:
            deferred.reset(self._token)


class AppCode:
    """Whether serving a status request runs the app's own code, before the checks and after.

    The app's code (hooks, teardown functions, error handlers, signal receivers, a sync
    authenticator) runs in worker threads, never on the event loop; without any, Flask's own
    steps are quick and run on the loop.
    """

    def __init__(self, app: Flask) -> None:
        # Read once, at the first status request: Flask refuses new hooks after it.
        custom = (
            type(app) is not Flask
            or type(app.session_interface) is not SecureCookieSessionInterface
        )
        self.before = (
            custom
            or _has_hooks(app.before_request_funcs, app.url_value_preprocessors)
            or any(route.sync_authenticator for route in routes_of(app))
        )
        self.after = (
            custom
            or _has_hooks(app.after_request_funcs, app.teardown_request_funcs)
            or bool(app.teardown_appcontext_funcs)
            or any(
                handlers
                for by_code in app.error_handler_spec.values()
                for handlers in by_code.values()
            )
        )

    def placement(self, app: Flask, limiter: anyio.CapacityLimiter) -> Placement:
        """Where this request's steps run (signal receivers may be connected at any time)."""
        before = self.before or any(signal.has_receivers_for(app) for signal in _SIGNALS_BEFORE)
        # A hook's after_this_request functions run after.
        after = (
            before or self.after or any(signal.has_receivers_for(app) for signal in _SIGNALS_AFTER)
        )
        return Placement(contextvars.copy_context() if after else None, before, after, limiter)


@dataclass(frozen=True)
class Placement:
    """Where one status request's steps run: on the event loop or in worker threads.

    Flask's context variables must be reset in the context they were set in, while a worker
    thread runs in a copy of the caller's: so every step runs in ``context``, one
    ``contextvars.Context`` for the request (None: the request's task's own, when no step
    runs in a thread).

    A step in a worker thread takes ``turn`` first. anyio's shield keeps the request's task
    waiting for the thread through anyio's cancellation, not through asyncio's own
    ``task.cancel()`` (a server's, at shutdown): then the task goes on to the teardown while
    the step still runs, and the teardown must wait for it, not enter the context beside it.
    """

    context: contextvars.Context | None
    before_in_thread: bool
    after_in_thread: bool
    limiter: anyio.CapacityLimiter
    turn: threading.Lock = field(default_factory=threading.Lock)

    async def run(self, in_thread: bool, step: Callable[[], T]) -> T:
        if self.context is None:
            return step()
        if in_thread:
            return await anyio.to_thread.run_sync(
                self._in_turn, self.context, step, limiter=self.limiter
            )
        return self.context.run(step)

    def _in_turn(self, context: contextvars.Context, step: Callable[[], T]) -> T:
        with self.turn:
            return context.run(step)

    async def wait(self, step: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Await ``step`` on the loop, seeing the request's context.

        What it raises is raised here, in the request's task, as when it is awaited there:
        ``SystemExit`` or ``KeyboardInterrupt`` out of a task of its own (raised by an async
        authenticator) would stop the server's event loop, and every request on it; a
        cancellation of its own would end the task quietly, as if it had returned.
        """
        if self.context is None:
            await step()
            return
        raised: list[BaseException] = []

        async def in_context() -> None:
            try:
                await step()
            except BaseException as exc:
                await raise_if_cancelled(exc)  # the request's cancellation goes on
                raised.append(exc)

        # A task runs in a copy of the context it was started in.
        async with anyio.create_task_group() as task_group:
            self.context.run(task_group.start_soon, in_context)
        if raised:
            raise raised[0]


class StatusRoutes:
    """The app's FlaskStatus URLs, to recognise the requests that are the middleware's own."""

    def __init__(self, app: Flask) -> None:
        routes = routes_of(app)
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
) -> tuple[str, list[tuple[str, str]], bytes, Iterable[bytes] | None]:
    """Call a WSGI app and collect its whole answer (status answers are small); a live
    status stream's body is returned as its iterator instead."""
    started: list[Any] = []
    chunks: list[bytes] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        started[:] = [status, headers]
        return chunks.append

    iterable = wsgi_app(environ, start_response)
    # (A WSGI app may start its response only as its body is iterated: not a stream then.)
    if started and any(
        name.lower() == "content-type" and MEDIA_TYPE in value for name, value in started[1]
    ):
        return started[0], started[1], b"", iterable
    try:
        chunks.extend(iterable)
    finally:
        if hasattr(iterable, "close"):
            iterable.close()
    return started[0], started[1], b"".join(chunks), None


async def _respond(
    send: Send,
    status: str,
    headers: list[tuple[str, str]],
    body: bytes,
    *,
    more_body: bool = False,
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": int(status.split(" ", 1)[0]),
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": more_body})


async def _send_stream(
    send: Send, receive: Receive, status: str, headers: list[tuple[str, str]], stream: Stream
) -> None:
    """Send a live status stream event by event, until it ends or the client hangs up."""
    end_streams_on_signals()  # on the loop's thread: the main thread under ASGI servers
    await _respond(send, status, headers, b"", more_body=True)
    async with anyio.create_task_group() as task_group:

        async def end_on_hang_up() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            task_group.cancel_scope.cancel()

        task_group.start_soon(end_on_hang_up)
        async with contextlib.aclosing(stream.events()) as events:  # type: ignore[type-var]
            async for chunk in events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        task_group.cancel_scope.cancel()


def _has_hooks(*registries: Mapping[Any, list[Callable[..., Any]]]) -> bool:
    """Whether any registry (by blueprint) holds a function of the app's."""
    return any(
        func is not no_store  # the extension's own hook only sets a header
        for registry in registries
        for funcs in registry.values()
        for func in funcs
    )


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
