"""Prometheus gauges for the checks of a FlaskStatus, current after every evaluation::

    from flask_status.prometheus import instrument

    instrument(status)  # into prometheus_client's global REGISTRY

gives, per field, ``flask_status_check_up{check="database",route="/api/status"}`` (1 when
the check worked at its last evaluation, degraded included, else 0),
``flask_status_check_state{check=...,route=...,state="degraded"}`` (one series per state, 1
for the field's state and 0 for the others, as a StateSet) and
``flask_status_check_duration_seconds`` (how long it ran; 0 for constants). The ``route``
label tells the FlaskStatus instances that share a registry apart: all of them feed the same
metrics.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import get_args

from .extension import FlaskStatus
from .extras import requires_extra
from .outcome import Outcome, State

with requires_extra("flask_status.prometheus", "prometheus"):
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector

UP = "flask_status_check_up"
DURATION = "flask_status_check_duration_seconds"
STATE = "flask_status_check_state"
LABELS = ("check", "route")
#: Every state a field can be in: each has a series of ``flask_status_check_state``.
STATES: tuple[State, ...] = get_args(State)


class StatusCollector(Collector):
    """The ``flask_status_*`` metrics of one registry, fed by any number of routes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # route -> check -> (state, duration): replaced whole, so a scrape sees one evaluation.
        self._latest: dict[str, dict[str, tuple[State, float]]] = {}

    def add_route(self, route: str) -> None:
        with self._lock:
            if route in self._latest:
                raise ValueError(
                    f"route {route!r} is already instrumented in this registry: "
                    "pass another route= to tell the instances apart"
                )
            self._latest[route] = {}

    def update(self, route: str, outcomes: Mapping[str, Outcome]) -> None:
        checks = {key: (outcome.state, outcome.duration) for key, outcome in outcomes.items()}
        with self._lock:
            # Merge: a request for one field (``<url>/<field>``, ``?exclude=``) leaves the
            # other fields' gauges at their last evaluation.
            self._latest.setdefault(route, {}).update(checks)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        up, state, duration = _families()
        with self._lock:
            latest = list(self._latest.items())
        for route, checks in latest:
            for check, (current, seconds) in checks.items():
                up.add_metric([check, route], 1.0 if current in ("ok", "degraded") else 0.0)
                for name in STATES:
                    state.add_metric([check, route, name], 1.0 if name == current else 0.0)
                duration.add_metric([check, route], seconds)
        return [up, state, duration]

    def describe(self) -> Iterable[GaugeMetricFamily]:
        # Lets every registry (not only auto-describing ones) refuse clashing metric names.
        return _families()


def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
    return (
        GaugeMetricFamily(
            UP,
            "1 if the check worked (degraded included) at its last evaluation, else 0.",
            labels=LABELS,
        ),
        GaugeMetricFamily(
            STATE,
            "1 for the check's state at its last evaluation (ok, degraded, failing, skipped, "
            "starting, stale), 0 for the others.",
            labels=(*LABELS, "state"),
        ),
        GaugeMetricFamily(DURATION, "Seconds the check ran at its last evaluation.", labels=LABELS),
    )


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, StatusCollector] = (
    weakref.WeakKeyDictionary()
)
_collectors_lock = threading.Lock()


def instrument(
    status: FlaskStatus,
    registry: CollectorRegistry | None = None,
    *,
    route: str | None = None,
) -> None:
    """Keep the gauges of ``status``'s fields current in ``registry`` (default: the global one).

    ``route`` labels this instance's series (default: ``status.url``). Instances in one
    registry share the metrics and need distinct routes: a repeated one raises ValueError.
    The series appear after the first evaluation of the status route.
    """
    if not isinstance(status, FlaskStatus):
        raise TypeError(f"status must be a FlaskStatus, got {type(status).__name__}")
    if registry is None:
        registry = REGISTRY
    elif not isinstance(registry, CollectorRegistry):
        raise TypeError(f"registry must be a CollectorRegistry, got {type(registry).__name__}")
    label = status.url if route is None else route
    if not isinstance(label, str) or not label:
        raise TypeError("route must be a non-empty str")
    with _collectors_lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = StatusCollector()
            registry.register(collector)  # raises if other metrics already use these names
            _collectors[registry] = collector
        collector.add_route(label)
    status.on_evaluated(lambda outcomes: collector.update(label, outcomes))
