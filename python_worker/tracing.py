"""OpenTelemetry spans for tool calls, when the OpenTelemetry API is installed (``pip install krait[otel]``).

Each call is a span ``krait.tool <name>`` (kind SERVER), a child of the caller's span when the call's metadata
carries W3C trace context (``traceparent``, ``tracestate``: request metadata on the link, gRPC headers on gRPC).
Its attributes: ``krait.tool``, ``krait.session_id``, ``krait.worker_id``, ``krait.call_id``, and at its end
``krait.chunks``, ``krait.bytes``, ``rpc.grpc.status_code``, ``error.type``; a failed call records its exception
and sets the span's status to ERROR. The tool runs with the span current (a tool's own spans are its children)
and finds it as ``ctx.span``. The span's trace id goes back to the caller as ``trace_id`` in the final chunk's or
the response's metadata.

Export is configured the OpenTelemetry way: with the SDK installed and ``OTEL_TRACES_EXPORTER`` or
``OTEL_EXPORTER_OTLP_ENDPOINT`` set, :func:`configure_from_env` installs a tracer provider with a batch
processor and the OTLP exporter (``OTEL_SERVICE_NAME``, default ``krait-worker``). An adapter may also install
its own provider at import (the tests install the SDK's in-memory exporter so). ``OTEL_SDK_DISABLED=true``
turns the spans off; without OpenTelemetry nothing here runs.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

log = logging.getLogger("krait.worker")

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the optional extra is not installed
    trace = None  # type: ignore[assignment]

_PROPAGATOR = TraceContextTextMapPropagator() if trace is not None else None


def available() -> bool:
    """Spans are made: the OpenTelemetry API is installed and not disabled."""
    return trace is not None and os.environ.get("OTEL_SDK_DISABLED", "").lower() != "true"


def configure_from_env() -> None:
    """Install the OTLP exporter when the environment asks for one (see the module doc)."""
    if not available():
        return
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter_name == "none" or (exporter_name == "" and not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return
    if exporter_name not in ("", "otlp"):
        log.warning(
            "OTEL_TRACES_EXPORTER=%s: a worker exports spans with otlp only; spans are not exported", exporter_name
        )
        return
    try:
        # the otel extra's exporter, imported by name: mypy need not find it where the extra is not installed
        otlp = importlib.import_module("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        log.warning("OpenTelemetry export asked for, but %s is missing: pip install krait[otel]", exc.name)
        return
    service = os.environ.get("OTEL_SERVICE_NAME", "krait-worker")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(otlp.OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


# OTEL_PYTHON_TRACER_PROVIDER names a provider get_tracer_provider() loads itself: read once, not per call
_PROVIDER_FROM_ENV = bool(os.environ.get("OTEL_PYTHON_TRACER_PROVIDER"))
_UNKNOWN = object()


def _no_provider() -> bool:
    """No tracer provider is installed (yet: an adapter may install one at any time, so asked every call).
    ``trace.get_tracer_provider()`` would look the environment up on every call until one is; the API's own
    global says the same at no cost (the public call is the fallback, should that global ever go)."""
    installed = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
    if installed is None and not _PROVIDER_FROM_ENV:
        return True
    if installed is not _UNKNOWN and installed is not None:
        return isinstance(installed, trace.ProxyTracerProvider)
    return isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


class CallSpan:
    """One call's span: made current on the calling thread by :meth:`attach` (a streaming tool's thread
    inherits it), ended once by :meth:`end`."""

    __slots__ = ("_token", "span")

    def __init__(self, tool: str, metadata: Mapping[str, str], *, worker_id: str, session_id: str, call_id: str):
        assert _PROPAGATOR is not None
        parent = _PROPAGATOR.extract(carrier={k: v for k, v in metadata.items() if k in ("traceparent", "tracestate")})
        tracer = trace.get_tracer("krait.worker")
        self.span = tracer.start_span(
            f"krait.tool {tool}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "krait.tool": tool,
                "krait.session_id": session_id,
                "krait.worker_id": worker_id,
                "krait.call_id": call_id,
            },
        )
        self._token: object | None = None

    @property
    def trace_id(self) -> str:
        """The span's trace id, 32 hex digits ("" when the span does not record: no SDK installed)."""
        context = self.span.get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else ""

    def attach(self) -> None:
        self._token = otel_context.attach(trace.set_span_in_context(self.span))

    def detach(self) -> None:
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
            self._token = None

    def end(self, status: str, error: BaseException | None = None, chunks: int = 0, nbytes: int = 0) -> None:
        span = self.span
        span.set_attribute("rpc.grpc.status_code", status)
        if chunks:
            span.set_attribute("krait.chunks", chunks)
            span.set_attribute("krait.bytes", nbytes)
        if error is not None:
            span.set_attribute("error.type", type(error).__name__)
            span.record_exception(error)
        if status != "OK":
            span.set_status(Status(StatusCode.ERROR, f"{status}: {error}" if error is not None else status))
        span.end()


def start(tool: str, metadata: Mapping[str, str], *, worker_id: str, session_id: str, call_id: str) -> Any:
    """A :class:`CallSpan` for a call, or None when nothing would record it. Only called where spans are
    :func:`available` (the engine looks once, when it starts: not an environment lookup per call)."""
    if "traceparent" not in metadata and _no_provider():
        # nothing would record this span, and with no parent it carries no trace id: the tool sees INVALID_SPAN
        # either way (~40 µs a call saved; an adapter may still install a provider later: looked up each call)
        return None
    return CallSpan(tool, metadata, worker_id=worker_id, session_id=session_id, call_id=call_id)


def current_span(ctx: Any) -> Any:
    """The call's OpenTelemetry span (``ToolContext.span``): ``trace.INVALID_SPAN`` when spans are off."""
    call_span = getattr(ctx, "_call_span", None)
    if call_span is not None:
        return call_span.span
    return trace.INVALID_SPAN if trace is not None else None


@contextlib.contextmanager
def span_current(ctx: Any) -> Iterator[None]:
    """Make the call's span current where the tool runs on another context than the engine's thread (an async
    tool's task on the worker's event loop); nothing when the call has no span."""
    call_span = getattr(ctx, "_call_span", None)
    if call_span is None:
        yield
        return
    token = otel_context.attach(trace.set_span_in_context(call_span.span))
    try:
        yield
    finally:
        otel_context.detach(token)
