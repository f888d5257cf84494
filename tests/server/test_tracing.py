"""Tracing end to end: a stock tritonclient (gRPC) or requests (REST) call carrying a W3C `traceparent`
continues the caller's trace through the gateway's spans (auth, decode, inference, encode), a push adds
verify / smoke test / swap under the Push span, and nothing secret or client-written reaches a span.
Spans are caught with the SDK's in-memory exporter on a real gateway over mTLS.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import opentelemetry.sdk.trace
import pytest
import requests
import tritonclient.grpc as grpcclient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from tritonclient.utils import InferenceServerException

from gateway.release.client import ReleaseClient
from gateway.server import tracing
from gateway.server.app import GatewayThread
from gateway.server.guard import Guard
from tests import harness
from tests.models import make_onnx_mlp

IN_DIM = 8
ALLOWED_KEYS = {
    tracing.PROTOCOL,
    tracing.METHOD,
    tracing.MODEL,
    tracing.VERSION,
    tracing.STATUS,
    tracing.GRPC_STATUS,
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    env = harness.make_env(tmp_path_factory.mktemp("traced"))
    harness.seal_model(env, "mlp", 1, make_onnx_mlp(IN_DIM, (16,), 2, seed=0))
    return env.with_config(tracing={"enabled": True, "exporter": "none"})


def _serving(gw: Any, name: str, version: int | None = None) -> None:
    """Wait until `name` serves `version` (None: any version)."""
    deadline = time.time() + 60
    while not any(
        s.name == name and version in (None, s.version) and s.state.name == "SERVING" for s in gw.manager.status()
    ):
        assert time.time() < deadline, gw.manager.status()
        time.sleep(0.05)


@pytest.fixture(scope="module")
def traced(env: harness.Env) -> Iterator[tuple[Any, InMemorySpanExporter]]:
    with GatewayThread(env.config) as gw:
        exported = InMemorySpanExporter()
        gw.tracing.provider.add_span_processor(SimpleSpanProcessor(exported))
        _serving(gw, "mlp", 1)
        yield gw, exported


def _ids() -> tuple[str, str, str]:
    """A fresh caller trace id and span id, and the sampled traceparent that carries them."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def _of_trace(exported: InMemorySpanExporter, trace_id: str, count: int) -> list[ReadableSpan]:
    """The spans of one trace, once at least `count` have been exported."""
    deadline = time.time() + 10
    while True:
        spans = [s for s in exported.get_finished_spans() if s.context and f"{s.context.trace_id:032x}" == trace_id]
        if len(spans) >= count or time.time() > deadline:
            return spans
        time.sleep(0.02)


def _check_call_trace(spans: list[ReadableSpan], name: str, caller_span: str) -> ReadableSpan:
    """The call's SERVER span is the caller's child; auth, decode, inference, encode are the call's children."""
    server = [s for s in spans if s.name == name]
    assert len(server) == 1, [s.name for s in spans]
    call = server[0]
    assert call.kind == SpanKind.SERVER
    assert call.parent is not None and call.parent.is_remote and f"{call.parent.span_id:016x}" == caller_span
    assert call.context is not None
    children = {s.name: s for s in spans if s.parent is not None and s.parent.span_id == call.context.span_id}
    assert {"auth", "decode", "inference", "encode"} <= set(children), sorted(children)
    assert call.attributes is not None
    assert call.attributes[tracing.MODEL] == "mlp" and call.attributes[tracing.VERSION] == 1
    assert call.attributes[tracing.STATUS] == "OK" and call.status.status_code != StatusCode.ERROR
    for phase in ("decode", "inference", "encode"):  # the phases lie inside the call, in order
        span = children[phase]
        assert span.start_time is not None and span.end_time is not None
        assert call.start_time is not None and call.end_time is not None
        assert call.start_time <= span.start_time <= span.end_time <= call.end_time
    decode, encode = children["decode"], children["encode"]
    assert decode.end_time is not None and encode.start_time is not None and decode.end_time <= encode.start_time
    return call


def _no_secrets(spans: list[ReadableSpan], *secret: str) -> None:
    """Only the fixed attribute keys, no event, and none of `secret` in any name, attribute or status."""
    for span in spans:
        attributes = dict(span.attributes or {})
        assert set(attributes) <= ALLOWED_KEYS, attributes
        assert not span.events, span.events
        text = repr((span.name, attributes, span.status.description))
        for s in secret:
            assert s not in text


def test_a_tritonclient_call_continues_the_callers_trace(env: harness.Env, traced: tuple[Any, Any]) -> None:
    """A gRPC ModelInfer with `traceparent` yields the gateway's spans in the caller's trace, rightly parented."""
    gw, exported = traced
    trace_id, span_id, parent = _ids()
    good = harness.token(env, "infer:mlp")
    client = harness.triton(env, gw.grpc_port)
    x = np.full((1, IN_DIM), 0.7312, dtype=np.float32)
    inp = grpcclient.InferInput("input", [1, IN_DIM], "FP32")
    inp.set_data_from_numpy(x)
    headers = {"authorization": "Bearer " + good, "traceparent": parent, "tracestate": "vendor=abc"}
    result = client.infer("mlp", [inp], headers=headers)
    assert result.as_numpy("output").shape == (1, 2)
    spans = _of_trace(exported, trace_id, 5)
    call = _check_call_trace(spans, "grpc ModelInfer", span_id)
    assert call.attributes is not None and call.attributes[tracing.PROTOCOL] == "grpc"
    assert call.context is not None and call.context.trace_state.get("vendor") == "abc"
    _no_secrets(spans, good, "0.7312", repr(float(x[0, 0]))[:6])


def test_a_rest_call_continues_the_callers_trace(env: harness.Env, traced: tuple[Any, Any]) -> None:
    """The same for an OIP REST infer: the HTTP `traceparent` header is the parent."""
    gw, exported = traced
    trace_id, span_id, parent = _ids()
    good = harness.token(env, "infer:mlp")
    body = {"inputs": [{"name": "input", "shape": [1, IN_DIM], "datatype": "FP32", "data": [0.4242] * IN_DIM}]}
    answer = requests.post(
        f"https://127.0.0.1:{gw.rest_port}/v2/models/mlp/infer",
        json=body,
        headers={"authorization": "Bearer " + good, "traceparent": parent},
        cert=(str(env.certs / "client.pem"), str(env.certs / "client.key")),
        verify=str(env.certs / "ca.pem"),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    spans = _of_trace(exported, trace_id, 5)
    call = _check_call_trace(spans, "rest ModelInfer", span_id)
    assert call.attributes is not None and call.attributes[tracing.PROTOCOL] == "rest"
    _no_secrets(spans, good, "0.4242")
    trace_id, span_id, parent = _ids()  # TF Serving's predict: its run happens in a worker thread
    answer = requests.post(
        f"https://127.0.0.1:{gw.rest_port}/v1/models/mlp:predict",
        json={"instances": [[0.5] * IN_DIM]},
        headers={"authorization": "Bearer " + good, "traceparent": parent},
        cert=(str(env.certs / "client.pem"), str(env.certs / "client.key")),
        verify=str(env.certs / "ca.pem"),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    spans = _of_trace(exported, trace_id, 3)
    predict = next(s for s in spans if s.name == "rest Predict")
    assert predict.parent is not None and f"{predict.parent.span_id:016x}" == span_id
    assert predict.context is not None
    inference = [s for s in spans if s.name == "inference"]
    assert len(inference) == 1 and inference[0].parent is not None
    assert inference[0].parent.span_id == predict.context.span_id


def test_a_refused_call_is_traced_with_its_status_and_no_token(
    env: harness.Env, traced: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A forged token: the call's span says UNAUTHENTICATED (the auth span is an error), never the token,
    the reason, or a malformed tracestate (which is dropped without a log line)."""
    gw, exported = traced
    trace_id, _, parent = _ids()
    forged = harness.altered_payload(env)
    client = harness.triton(env, gw.grpc_port)
    inp = grpcclient.InferInput("input", [1, IN_DIM], "FP32")
    inp.set_data_from_numpy(np.zeros((1, IN_DIM), dtype=np.float32))
    junk = "Not A Member<script>"
    with caplog.at_level(logging.DEBUG), pytest.raises(InferenceServerException) as refused:
        client.infer(
            "mlp", [inp], headers={"authorization": "Bearer " + forged, "traceparent": parent, "tracestate": junk}
        )
    assert "UNAUTHENTICATED" in str(refused.value.status())
    spans = _of_trace(exported, trace_id, 2)
    call = next(s for s in spans if s.name == "grpc ModelInfer")
    auth = next(s for s in spans if s.name == "auth")
    assert call.attributes is not None and call.attributes[tracing.STATUS] == "UNAUTHENTICATED"
    assert call.status.status_code == StatusCode.ERROR and auth.status.status_code == StatusCode.ERROR
    assert call.context is not None and len(call.context.trace_state) == 0, "the malformed tracestate was dropped"
    assert not {"decode", "inference"} & {s.name for s in spans}, "nothing ran"
    _no_secrets(spans, forged, forged.split(".")[1][:20], junk)
    assert junk not in caplog.text


def test_a_push_traces_verify_smoke_test_and_swap_under_the_push(
    env: harness.Env, traced: tuple[Any, Any], tmp_path: Path
) -> None:
    """Release steps: a Push with `traceparent` gets verify, smoke test and swap spans as its children."""
    gw, exported = traced
    trace_id, span_id, parent = _ids()
    sealed = harness.seal_model(env, "mlp", 2, make_onnx_mlp(IN_DIM, (16,), 2, seed=1), out=tmp_path / "2.sealed")
    target = harness.release_target(env, gw.grpc_port, "release:mlp")
    with ReleaseClient(target) as client:
        client.metadata = (*client.metadata, ("traceparent", parent))
        client.push(sealed, "mlp", 2)
    _serving(gw, "mlp", 2)
    spans = _of_trace(exported, trace_id, 5)
    push = next(s for s in spans if s.name == "grpc Push")
    assert push.parent is not None and f"{push.parent.span_id:016x}" == span_id
    assert push.context is not None
    under = {s.name: s for s in spans if s.parent is not None and s.parent.span_id == push.context.span_id}
    assert {"auth", "verify", "smoke test", "swap"} <= set(under), sorted(under)
    for step in ("verify", "smoke test"):
        attributes = under[step].attributes or {}
        assert attributes[tracing.MODEL] == "mlp" and attributes[tracing.VERSION] == 2
    _no_secrets(spans, target.token)


def test_tracing_off_makes_no_span(env: harness.Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default: no tracer, the guard's authorize is the class's own, and a call with `traceparent`
    starts no span at all (the SDK's start_span is never reached)."""
    started: list[str] = []
    real = opentelemetry.sdk.trace.Tracer.start_span

    def counting(self: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        started.append(name)
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(opentelemetry.sdk.trace.Tracer, "start_span", counting)
    plain = env.with_config(tracing={"enabled": False})
    with GatewayThread(plain.config) as gw:
        assert gw.tracing is None and gw.dataplane.tracing is None
        assert "authorize" not in vars(gw.guard) and type(gw.guard) is Guard
        _serving(gw, "mlp")  # version 2 once the push test ran
        client = harness.triton(env, gw.grpc_port)
        inp = grpcclient.InferInput("input", [1, IN_DIM], "FP32")
        inp.set_data_from_numpy(np.zeros((1, IN_DIM), dtype=np.float32))
        headers = {"authorization": "Bearer " + harness.token(env), "traceparent": _ids()[2]}
        assert client.infer("mlp", [inp], headers=headers).as_numpy("output").shape == (1, 2)
    assert started == []


def test_trace_headers_are_bounded_and_checked() -> None:
    """Only one well-formed, short traceparent is taken; a long or malformed tracestate is dropped."""
    _, _, parent = _ids()
    assert tracing.trace_headers({"traceparent": parent}) == {"traceparent": parent}
    assert tracing.trace_headers([("traceparent", parent), ("traceparent", parent)]) == {}
    assert tracing.trace_headers([("traceparent", "0" * 500)]) == {}
    assert tracing.trace_headers([("traceparent", parent.encode()), ("tracestate", b"a=1,b=2")]) == {
        "traceparent": parent,
        "tracestate": "a=1,b=2",
    }
    for state in ("a=" + "x" * 600, "a=1,a=2", "UPPER=1", ",".join(f"k{i}=v" for i in range(40))):
        assert tracing.trace_headers([("traceparent", parent), ("tracestate", state)]) == {"traceparent": parent}
    assert tracing.model_attribute("mlp") == "mlp" and tracing.model_attribute("../etc" + "x" * 100) is None
    assert tracing.version_attribute("12") == 12 and tracing.version_attribute("1; drop") is None
