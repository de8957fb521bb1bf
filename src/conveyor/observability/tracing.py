"""Optional OpenTelemetry tracing, configured by the standard ``OTEL_*`` variables."""

from __future__ import annotations

from typing import Any


def enable_tracing(app: Any, service_name: str = "conveyor") -> None:
    """Export spans of every request over OTLP/HTTP (endpoint from ``OTEL_EXPORTER_OTLP_*``)."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
