"""OpenTelemetry tracing (`[tracing]`): a caller's W3C trace continues through the gateway.

Each authorized call gets one SERVER span (`grpc ModelInfer`, `rest ModelInfer`, ...) whose parent is the
caller's `traceparent` (gRPC metadata or HTTP header; `tracestate` kept), with children `auth` (the
guard's check), then `decode`, `queue`, `inference`, `encode` (the data plane's phases, laid out from the
times it measures anyway), and for a push or rollback `verify`, `smoke test` and `swap` (the manager's
release steps; from the repository poller they are traces of their own).

What a span may carry is fixed here: protocol, method, model (only a name no model can have is left out),
version, status code. Never a tensor, a token, key material, an error message or any other client text:
a refused call's span says which status it got, not why.

Off (the default), none of this runs: the guard and the data plane test one attribute and make no span.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import Token
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.config import TracingConfig
from gateway.serving.repository import NAME_PATTERN

if TYPE_CHECKING:
    from gateway.auth.authorizer import Metadata, Principal
    from gateway.server.dataplane import Phases
    from gateway.server.guard import Call

PROTOCOL = "sealgate.protocol"
METHOD = "rpc.method"
MODEL = "sealgate.model"
VERSION = "sealgate.model.version"
STATUS = "sealgate.status"
GRPC_STATUS = "rpc.grpc.status_code"
MAX_TRACEPARENT = 128  # version 00 is 55 characters; a longer one is ignored, never parsed
MAX_TRACESTATE = 512  # W3C: at least 512 must be propagated; more is dropped
MAX_TRACESTATE_MEMBERS = 32
# W3C trace-context members, checked here so that a malformed header is dropped silently (the SDK would log
# the client's text at WARNING on every call)
_MEMBER = re.compile(
    r"(?:[a-z][_0-9a-z*/-]{0,255}|[a-z0-9][_0-9a-z*/-]{0,240}@[a-z][_0-9a-z*/-]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
_PROPAGATOR = TraceContextTextMapPropagator()


class Authorize(Protocol):
    """`Guard.authorize`'s shape."""

    def __call__(self, call: Call, metadata: Metadata, action: str | None, model: str = "") -> Principal: ...


def trace_headers(metadata: Metadata) -> dict[str, str]:
    """The `traceparent` (and a well-formed `tracestate`) of gRPC metadata or HTTP headers, bounded.

    Anything too long, repeated or malformed is left out: the call then starts a trace of its own.
    """
    items = metadata.items() if isinstance(metadata, Mapping) else metadata
    found: dict[str, list[str]] = {}
    for key, value in items:
        if isinstance(key, str) and key.lower() in ("traceparent", "tracestate"):
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            found.setdefault(key.lower(), []).append(text)
    parents = found.get("traceparent", [])
    if len(parents) != 1 or len(parents[0]) > MAX_TRACEPARENT:
        return {}
    carrier = {"traceparent": parents[0]}
    state = ",".join(found.get("tracestate", []))
    members = [m.strip(" \t") for m in state.split(",") if m.strip(" \t")]
    if (
        state
        and len(state) <= MAX_TRACESTATE
        and len(members) <= MAX_TRACESTATE_MEMBERS
        and all(_MEMBER.fullmatch(m) for m in members)
        and len({m.split("=", 1)[0] for m in members}) == len(members)
    ):
        carrier["tracestate"] = state
    return carrier


def model_attribute(name: str) -> str | None:
    """`name` if a model could have it (bounded, plain), else None: no other client text goes into a span."""
    return name if name and NAME_PATTERN.fullmatch(name) else None


def version_attribute(version: object) -> int | None:
    """A version as an int when it is one (1-18 digits), else None."""
    if isinstance(version, int) and not isinstance(version, bool):
        return version
    if isinstance(version, str) and 0 < len(version) <= 18 and version.isascii() and version.isdigit():
        return int(version)
    return None


def exporter_for(config: TracingConfig) -> SpanExporter | None:
    """The span exporter `[tracing] exporter` names (None for "none": spans are made, then dropped)."""
    if config.exporter == "console":
        return ConsoleSpanExporter()
    if config.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=config.otlp_endpoint, insecure=config.otlp_endpoint.startswith("http://"))
    return None


class CallTrace:
    """The SERVER span of one call while it runs, and the context token that made it current."""

    __slots__ = ("span", "token")

    def __init__(self, span: trace.Span, token: Token[Context]) -> None:
        self.span = span
        self.token = token

    def end(self, call: Call) -> None:
        """End the span with the call's final method, model, version and status; restore the context."""
        span, call.trace = self.span, None
        if span.is_recording():
            span.update_name(f"{call.protocol} {call.method}")
            attributes: dict[str, Any] = {
                METHOD: call.method,
                STATUS: call.status.name,
                GRPC_STATUS: call.status.value[0],
            }
            model = model_attribute(call.model)
            version = version_attribute(call.version)
            if model is not None:
                attributes[MODEL] = model
                if version is not None:
                    attributes[VERSION] = version
            span.set_attributes(attributes)
            if call.status.name != "OK":
                span.set_status(Status(StatusCode.ERROR, call.status.name))
        span.end()
        # restore the context the call began in, unless the call ends in another task (a stream closed by
        # the garbage collector), where nothing of it is current
        if trace.get_current_span() is span:
            otel_context.detach(self.token)


class Tracing:
    """The gateway's tracer: its own TracerProvider (several gateways may share a process), never the global one."""

    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        """Sample `sample_ratio` of new traces and follow a caller's sampled flag; export to `exporter`
        (default: the one `[tracing] exporter` names), in batches."""
        self.config = config
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        )
        chosen = exporter if exporter is not None else exporter_for(config)
        if chosen is not None:
            self.provider.add_span_processor(BatchSpanProcessor(chosen))
        self.tracer = self.provider.get_tracer("sealgate")

    def shutdown(self) -> None:
        """Export what is queued and stop (at gateway stop)."""
        self.provider.shutdown()

    # --- calls (the guard) --------------------------------------------------------------------------
    def wrap_authorize(self, authorize: Authorize) -> Authorize:
        """`Guard.authorize` traced: the call's span is started (once per call) from the caller's trace
        headers and made current, then the check runs inside an `auth` span."""

        def traced(call: Call, metadata: Metadata, action: str | None, model: str = "") -> Principal:
            if call.trace is None:
                self.start_call(call, metadata, model)
            span = self.tracer.start_span("auth", record_exception=False, set_status_on_exception=False)
            try:
                return authorize(call, metadata, action, model)
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            finally:
                span.end()

        return traced

    def start_call(self, call: Call, metadata: Metadata, model: str = "") -> None:
        """Start `call`'s SERVER span as a child of the caller's trace (if it sent one), backdated to when
        the call began, and make it current until `CallTrace.end`."""
        parent = _PROPAGATOR.extract(trace_headers(metadata))
        began = time.time_ns() - int((time.perf_counter() - call.started) * 1e9)
        attributes: dict[str, Any] = {PROTOCOL: call.protocol, METHOD: call.method}
        name = model_attribute(model or call.model)
        if name is not None:
            attributes[MODEL] = name
        span = self.tracer.start_span(
            f"{call.protocol} {call.method}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=began,
            record_exception=False,
            set_status_on_exception=False,
        )
        call.trace = CallTrace(span, otel_context.attach(trace.set_span_in_context(span)))

    # --- the data plane -----------------------------------------------------------------------------
    def phases(self, name: str, version: int, started_ns: int, finished_ns: int, phases: Phases) -> None:
        """The phases of one inference as spans under the current one: decode from `started_ns`, encode
        up to `finished_ns` (perf_counter_ns), inference and queue just before encode; a phase that took
        no time (inline backends have no queue) has no span."""
        if not trace.get_current_span().is_recording():
            return
        offset = time.time_ns() - time.perf_counter_ns()
        encode_at = finished_ns - phases.output_ns
        infer_at = encode_at - phases.infer_ns
        spans = (
            ("decode", started_ns, started_ns + phases.input_ns, phases.input_ns),
            ("queue", infer_at - phases.queue_ns, infer_at, phases.queue_ns),
            ("inference", infer_at, encode_at, 1),
            ("encode", encode_at, finished_ns, phases.output_ns),
        )
        attributes: dict[str, Any] = {MODEL: name, VERSION: version}
        for label, begin, end, took in spans:
            if took > 0:
                span = self.tracer.start_span(label, attributes=attributes, start_time=begin + offset)
                span.end(end_time=end + offset)

    # --- release steps (the manager) ----------------------------------------------------------------
    @contextmanager
    def step(self, step: str, name: str, version: int) -> Iterator[None]:
        """A span around one release step (verify, smoke test, swap) of model `name` v`version`; a
        failure marks it ERROR with the exception's class, never its message."""
        attributes: dict[str, Any] = {VERSION: version} if version > 0 else {}  # swap: the route as a whole
        model = model_attribute(name)
        if model is not None:
            attributes[MODEL] = model
        span = self.tracer.start_span(
            step, attributes=attributes, record_exception=False, set_status_on_exception=False
        )
        try:
            yield
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()
