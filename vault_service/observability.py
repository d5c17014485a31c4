"""Logs, traces and metrics that carry ids and codes, never personal values.

- structlog renders JSON lines with the request id bound from a contextvar.
- Traces: the request gate (vault_service/access/gate.py) names each server span
  `METHOD /route/{template}` and records method, route template and status only. The generic ASGI
  instrumentation is not used on purpose: it records the raw path and the query
  string (`url.query`), and search query strings are names and birth dates.
- asyncpg spans come from the OpenTelemetry instrumentation with parameter capture off.
- Alerts (alerts/store.py) are also OpenTelemetry log records (logger
  `vault_service.alerts`, ids and counts as attributes) and a counter
  `vault_service.alerts.raised` by kind and severity.
- Exporters follow the usual OTEL_* variables: OTLP over HTTP when
  OTEL_EXPORTER_OTLP_ENDPOINT (or the traces/metrics/logs variants) is set, none
  otherwise.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final, TextIO

import structlog
from opentelemetry import _logs, metrics, trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

REQUEST_ID_HEADER: Final = "x-request-id"
# Only a UUID from the proxy is kept: free text here would reach every log line and
# error body (a client could put a NIR in it).
_REQUEST_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_tracer = trace.get_tracer("vault_service.http")
_meter = metrics.get_meter("vault_service.http")
_requests = _meter.create_counter("vault_service.http.requests", description="HTTP requests")
_duration = _meter.create_histogram(
    "vault_service.http.duration", unit="s", description="HTTP request duration"
)
_alerts_raised = metrics.get_meter("vault_service.alerts").create_counter(
    "vault_service.alerts.raised", description="Alerts raised, by kind and severity"
)
_alert_records = _logs.get_logger("vault_service.alerts")
_SEVERITY: Final = {
    "info": _logs.SeverityNumber.INFO,
    "warning": _logs.SeverityNumber.WARN,
    "critical": _logs.SeverityNumber.ERROR,
}
_configured = False
_tracing = False


def export_alert(kind: str, severity: str, attributes: Mapping[str, str | int]) -> None:
    """One alert as an OpenTelemetry log record and a count (ids and counts only)."""
    _alerts_raised.add(1, {"alert.kind": kind, "alert.severity": severity})
    _alert_records.emit(
        _logs.LogRecord(
            timestamp=time.time_ns(),
            severity_text=severity.upper(),
            severity_number=_SEVERITY.get(severity, _logs.SeverityNumber.WARN),
            body=kind,
            attributes={"alert.kind": kind, "alert.severity": severity, **attributes},
        )
    )


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """JSON lines on stdout for the service; the CLI passes stderr, keeping its stdout
    for what it prints (a token, JSON)."""
    out = stream or sys.stdout
    logging.basicConfig(format="%(message)s", stream=out, level=level.upper())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # No exception text: it can carry values (a driver's error echoes a row).
        structlog.processors.dict_tracebacks if level.upper() == "DEBUG" else _drop_exc_info,
        structlog.processors.JSONRenderer(),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )


def _drop_exc_info(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    exc = event.pop("exc_info", None)
    if exc:
        info = sys.exc_info() if exc is True else exc
        if isinstance(info, tuple) and info[0] is not None:
            event["error_type"] = info[0].__name__
    return event


def configure_telemetry(
    service_name: str = "vault-service",
    *,
    always: bool = False,
    metric_readers: Sequence[MetricReader] = (),
) -> None:
    """Install SDK providers once per process, when an OTLP exporter is configured
    (or `always`, for tests that capture spans). Without one the API's no-op tracer
    stays: spans nobody exports are pure cost on the hot path. Sampling follows the
    standard OTEL_TRACES_SAMPLER variables, read by the SDK."""
    global _configured, _tracing  # noqa: PLW0603 - process-wide providers are set exactly once
    if _configured:
        return
    traces = bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )
    exported_metrics = bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    )
    exported_logs = bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")
    )
    if not (traces or exported_metrics or exported_logs or always):
        return
    _configured = True
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    tracer_provider = TracerProvider(resource=resource)
    readers = list(metric_readers)
    logger_provider = LoggerProvider(resource=resource)
    if exported_logs:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

        logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    _logs.set_logger_provider(logger_provider)
    if traces:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if exported_metrics:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    trace.set_tracer_provider(tracer_provider)
    _tracing = True
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
    if not (traces or always):
        return
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    # capture_parameters stays off: parameters are blind indexes and ciphertexts at
    # best, and a future query could bind a value.
    AsyncPGInstrumentor(capture_parameters=False).instrument()  # type: ignore[no-untyped-call]


def tracing_enabled() -> bool:
    """Whether server spans are worth making: only when an SDK provider is installed
    (an exporter is configured, or a test captures spans)."""
    return _tracing
