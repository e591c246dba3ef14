"""The OpenTelemetry SDK kept in memory, as an app configures it: finished spans in an
in-memory exporter, metrics in an in-memory reader. The global providers can be set once per
process: :func:`configure` sets them on its first call and returns the same pair after."""

from __future__ import annotations

import functools
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

#: The name of every span of a check run, as ``<prefix><key>``.
CHECK_SPAN = "status check "


@functools.cache
def configure() -> tuple[InMemorySpanExporter, InMemoryMetricReader]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(tracer_provider)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return exporter, reader


def forget_finished_spans() -> None:
    """Drop the spans the exporter keeps, if :func:`configure` set the SDK up in this process
    (this does not set it up): a test measuring the process's memory then counts what the code
    under test keeps, not every span this exporter was made to keep."""
    if configure.cache_info().currsize:
        configure()[0].clear()


def span_dict(span: ReadableSpan) -> dict[str, Any]:
    """What a test reads of a finished span, as JSON (for spans of a server process)."""
    assert span.context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "parent_id": None if span.parent is None else f"{span.parent.span_id:016x}",
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "description": span.status.description,
        "events": [event.name for event in span.events],
    }


def finished_spans() -> list[dict[str, Any]]:
    """Every span finished in this process so far."""
    exporter, _ = configure()
    return [span_dict(span) for span in exporter.get_finished_spans()]


def check_spans(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [span for span in spans if span["name"].startswith(CHECK_SPAN)]


def metric_points(name: str) -> list[tuple[dict[str, Any], Any]]:
    """The data points of the metric ``name`` now: (attributes, value or histogram count)."""
    _, reader = configure()
    data = reader.get_metrics_data()
    points = []
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    for point in metric.data.data_points:
                        value = getattr(point, "value", None)
                        if value is None:
                            value = point.count  # a histogram's
                        points.append((dict(point.attributes or {}), value))
    return points
