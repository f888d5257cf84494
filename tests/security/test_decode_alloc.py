"""Allocation before validation (issue 10, finding 3): declared tensor sizes are checked against the bytes
actually received before anything is allocated, so a 30-byte request cannot make the gateway allocate
gigabytes or stall its event loop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from gateway.protos.inference import grpc_service_pb2 as pb
from gateway.server.app import GatewayThread
from gateway.server.tensors import MAX_ELEMENTS, decode_off_loop
from tests import harness
from tests.security import _grpc

BOMB = 268_435_456  # 2**28 elements: within MAX_ELEMENTS, so only the byte check can stop it


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    return _grpc.served_env(tmp_path_factory.mktemp("alloc"))


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Any]:
    with GatewayThread(env.config) as gw:
        _grpc.wait_serving(gw)
        yield gw


def _typed_bytes_bomb() -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=_grpc.MODEL)
    tensor = req.inputs.add()
    tensor.name, tensor.datatype = "input", "BYTES"
    tensor.shape.append(BOMB)
    tensor.contents.bytes_contents.append(b"x")
    return req


CASES = {
    "raw BYTES, 4 bytes for 2**28 elements": _grpc.raw_request(_grpc.MODEL, "BYTES", [BOMB], b"\0\0\0\0"),
    "raw BYTES, 2-D": _grpc.raw_request(_grpc.MODEL, "BYTES", [1 << 14, 1 << 14], b"\1\0\0\0a"),
    "raw FP32, 4 bytes for 2**28 elements": _grpc.raw_request(_grpc.MODEL, "FP32", [BOMB], b"\0\0\0\0"),
    "typed BYTES, 1 value for 2**28": _typed_bytes_bomb(),
    "shape product past the limit": _grpc.raw_request(_grpc.MODEL, "FP32", [1 << 40, 1 << 40], b"\0" * 4),
    "thousands of dimensions": _grpc.raw_request(_grpc.MODEL, "FP32", [1] * 5000, b"\0" * 4),
}


@pytest.mark.parametrize("label", list(CASES))
def test_declared_sizes_beyond_the_bytes_are_refused_before_allocation(
    env: harness.Env, gateway: Any, label: str
) -> None:
    request = CASES[label]
    assert len(request.SerializeToString()) < 20_000, "the attack is a small request"
    with _grpc.channel(env, gateway) as chan:
        stub, md = _grpc.stub(chan), _grpc.auth(env)
        stub.ModelInfer(_grpc.good_request(), metadata=md, timeout=30)  # warm: connection and first-call costs
        before, started = _grpc.rss_bytes(), time.perf_counter()
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, metadata=md, timeout=30)
        elapsed, grown = time.perf_counter() - started, _grpc.rss_bytes() - before
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert "input 'input'" in (refused.value.details() or "")
    assert len(refused.value.details() or "") < 400
    assert grown < 50 << 20, f"RSS grew by {grown >> 20} MiB for a {label} request"
    assert elapsed < 1.0, f"answered in {elapsed:.2f} s"
    lines = _grpc.records(env, gateway, "grpc:ModelInfer", "INVALID_ARGUMENT")
    assert lines and lines[-1]["model"] == _grpc.MODEL and "input" in lines[-1]["reason"]
    _grpc.assert_serves(env, gateway)


def test_the_event_loop_keeps_answering_while_a_large_request_decodes(env: harness.Env, gateway: Any) -> None:
    """A large BYTES request (valid framing, 2**17 elements) is decoded off the loop: a small call meanwhile
    is answered promptly, and the large one still gets its (model-level) answer."""
    count = 1 << 17  # 512 KiB of framing, under the test server's 1 MiB message limit
    raw = b"\0\0\0\0" * count
    big = _grpc.raw_request(_grpc.MODEL, "BYTES", [count], raw)
    assert decode_off_loop(big) and not decode_off_loop(_grpc.good_request())
    with _grpc.channel(env, gateway) as chan:
        stub, md = _grpc.stub(chan), _grpc.auth(env)
        future = stub.ModelInfer.future(big, metadata=md, timeout=60)
        started = time.perf_counter()
        stub.ModelInfer(_grpc.good_request(), metadata=md, timeout=30)
        small = time.perf_counter() - started
        with pytest.raises(grpc.RpcError) as refused:
            future.result()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # BYTES is not the model's input type
    assert small < 1.0


def test_decode_limits_are_consistent() -> None:
    """The element limit is what the bomb above sits on: a larger shape is refused by count alone."""
    assert BOMB <= MAX_ELEMENTS
    assert np.dtype(object).itemsize * BOMB >= 2 << 30, "the allocation the check prevents is gigabytes"
