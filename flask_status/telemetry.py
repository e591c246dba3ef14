"""OpenTelemetry: a span per check run and metrics per finished run, through the global
tracer and meter providers (an app that configured the SDK gets them with no code of ours).

On when ``opentelemetry-api`` is importable (the ``otel`` extra), unless a route's
``telemetry`` setting is off. While no tracer provider is set (no SDK), a run asks no tracer:
its span is the API's invalid one, which records nothing, and its measurement goes to the API's
no-op histogram.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .outcome import Origin, Outcome

try:
    from opentelemetry import context, metrics, trace
    from opentelemetry.trace import Status, StatusCode
except ImportError:  # the otel extra is not installed: no telemetry
    AVAILABLE = False
else:
    AVAILABLE = True

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import Span, Tracer

    from .fields import Field

#: The instrumentation scope of our spans and metrics.
SCOPE = "flask_status"
#: ``error.type`` of a run that timed out, and of a failure no exception caused (a value
#: that could not be reported), as OpenTelemetry's conventions name such errors.
TIMEOUT = "timeout"
OTHER = "_OTHER"


class Telemetry:
    """The spans and metrics of one status route's checks."""

    def __init__(self, route: str, expose_errors: bool) -> None:
        self.route = route
        self.expose_errors = expose_errors
        # The tracer of the provider the app set (the SDK's); None while none is set. Asking
        # for it first loads a provider named in the environment, as the API does.
        tracer = trace.get_tracer(SCOPE)
        self._tracer: Tracer | None = tracer if _tracer_provider_set() else None
        instruments = _instruments()
        self.duration = instruments.duration
        # key -> (1 healthy or degraded / 0 failing, attributes): what the gauge reports.
        self.states: dict[str, tuple[int, dict[str, str]]] = {}
        # (key, result) -> runs so far: what the counter reports. Counted here and observed
        # at collection, as a synchronous counter would cost an SDK aggregation per run.
        self.runs: dict[tuple[str, str], int] = {}
        self._runs_lock = threading.Lock()  # runs finish on the server's loop and ours
        instruments.routes.add(self)
        # A field's metric attributes by its key: made once, not per run.
        self._attributes: dict[str, dict[str, str]] = {}

    def start(self, item: Field) -> Span:
        """The span of a run of ``item`` starting now, a child of the current span if any;
        :data:`~opentelemetry.trace.INVALID_SPAN` (nothing to record) while no tracer provider
        is set."""
        tracer = self._tracer
        if tracer is None:
            if not _tracer_provider_set():
                return trace.INVALID_SPAN
            # Set since this route was made: from now on its tracer, not the API's proxy.
            tracer = self._tracer = trace.get_tracer(SCOPE)
        return tracer.start_span(f"status check {item.key}")

    def running(self, span: Span | None) -> contextlib.AbstractContextManager[None]:
        """Make ``span`` current while the check runs: spans the check opens nest under it."""
        if span is None or span is trace.INVALID_SPAN or not span.is_recording():
            return _NOT_CURRENT
        return _Current(span)

    def finish(
        self, span: Span, item: Field, outcome: Outcome, error: BaseException | None
    ) -> None:
        """End a run's span and count the run: ``outcome`` is what the check produced."""
        key, result = item.key, outcome.result
        self.duration.record(outcome.duration, self._labels(key))
        run = (key, result)
        with self._runs_lock:
            self.runs[run] = self.runs.get(run, 0) + 1
        if span is trace.INVALID_SPAN:
            return
        if not span.is_recording():
            span.end()
            return
        span.set_attributes(
            {
                "health_check.name": key,
                "health_check.route": self.route,
                "health_check.result": result,
                "health_check.duration": outcome.duration,
                "health_check.critical": item.critical,
            }
        )
        if result in ("failing", "timed_out"):
            span.set_attribute("error.type", _error_type(outcome, error))
            span.set_status(Status(StatusCode.ERROR, outcome.error if self.expose_errors else None))
        span.end()

    def record_state(self, item: Field, outcome: Outcome, origin: Origin) -> None:
        """Keep what the gauge reports of a field: what it shows, thresholds applied, after
        each of its finished runs (another process's included) and once it is stale (a state
        listener)."""
        self.states[item.key] = (1 if outcome.ok else 0, self._labels(item.key))

    def _labels(self, key: str) -> dict[str, str]:
        labels = self._attributes.get(key)
        if labels is None:
            labels = self._attributes[key] = {
                "health_check.name": key,
                "health_check.route": self.route,
            }
        return labels


class _Current:
    """A span made current in the calling context, and detached from it on exit."""

    token: Token[Context]

    def __init__(self, span: Span) -> None:
        self.span = span

    def __enter__(self) -> None:
        self.token = context.attach(trace.set_span_in_context(self.span))

    def __exit__(self, *exc_info: object) -> None:
        context.detach(self.token)


#: What a run whose span records nothing makes current: nothing.
_NOT_CURRENT = contextlib.nullcontext()


def _tracer_provider_set() -> bool:
    """Whether the app set a global tracer provider (the SDK's, say).

    Asked per run until one is set, so that a provider set after the route was made gets the
    next run's span. ``trace.get_tracer_provider()`` would tell too, but it looks up an
    environment variable on every call while none is set, which costs more than the run's
    no-op span; the API keeps the provider in ``_TRACER_PROVIDER`` (1.20 to 1.45 at least).
    Should that name go, this says "set", and every run asks the tracer as before.
    """
    return getattr(trace, "_TRACER_PROVIDER", trace) is not None


def _error_type(outcome: Outcome, error: BaseException | None) -> str:
    """The exception's fully qualified class name, ``timeout``, or ``_OTHER``."""
    if outcome.error_kind == "timed_out":
        return TIMEOUT
    if error is None:
        return OTHER
    kind = type(error)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


class _Instruments:
    """The process's metric instruments, shared by every route (created once)."""

    def __init__(self) -> None:
        meter = metrics.get_meter(SCOPE)
        self.routes: weakref.WeakSet[Telemetry] = weakref.WeakSet()
        self.duration = meter.create_histogram(
            "health_check.duration", unit="s", description="How long a check ran."
        )
        meter.create_observable_counter(
            "health_check.runs",
            callbacks=[self.observe_runs],
            unit="{run}",
            description="Finished runs of a check, by result.",
        )
        meter.create_observable_gauge(
            "health_check.status",
            callbacks=[self.observe_states],
            unit="1",
            description="1 when the check is healthy or degraded at its last run, 0 failing.",
        )

    def observe_states(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            metrics.Observation(value, labels)
            for route in list(self.routes)
            for value, labels in list(route.states.values())
        ]

    def observe_runs(self, options: CallbackOptions) -> Iterable[Observation]:
        observed = []
        for route in list(self.routes):
            with route._runs_lock:
                counts = list(route.runs.items())
            for (key, result), runs in counts:
                labels = {**route._labels(key), "health_check.result": result}
                observed.append(metrics.Observation(runs, labels))
        return observed


_lock = threading.Lock()
_shared: list[_Instruments] = []


def _instruments() -> _Instruments:
    with _lock:
        if not _shared:
            _shared.append(_Instruments())
        return _shared[0]


def for_route(enabled: bool, route: str, expose_errors: bool) -> Telemetry | None:
    """A route's telemetry: ``None`` when its setting is off or the API is not installed."""
    if not enabled or not AVAILABLE:
        return None
    return Telemetry(route, expose_errors)
