"""The showcase adapter in a worker whose spans are recorded (OpenTelemetry's SDK, a batch processor) and then
dropped: what tracing costs a worker, without a collector to send to (scripts/benchmarks/observability.py)."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from adapters.showcase import ShowcaseAdapter


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


_provider = TracerProvider()
_provider.add_span_processor(BatchSpanProcessor(_Drop()))
trace.set_tracer_provider(_provider)


class TracedShowcaseAdapter(ShowcaseAdapter):
    """ShowcaseAdapter, unchanged: importing this module is what turns the recording on."""
