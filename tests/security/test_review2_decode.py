"""Second review, decoding (issue 10, classes of findings 3, 8 and 10): requests that are ambiguous or
stretch a bound, against a live gateway.

Accepted on the main of the review, refused now: a gRPC tensor sent two ways (typed contents beside
raw_input_contents, or values in a second typed field), which the model ran on one way while anything
that inspected the request may have read the other; a gRPC request id of any length (echoed whole in the
response; REST allows 256 characters); JSON `true`/`false` as the values of a numeric input (cast to 1/0).
The other cases were already refused and stay pinned here, each with its status and message.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import requests

from gateway.protos.inference import grpc_service_pb2 as pb
from gateway.server.app import GatewayThread
from tests import harness
from tests.security import _grpc

ONES = np.ones((1, _grpc.IN_DIM), np.float32)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    return _grpc.served_env(tmp_path_factory.mktemp("decode2")).with_config(server={"rest": True})


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Any]:
    with GatewayThread(env.config) as gw:
        _grpc.wait_serving(gw)
        yield gw


def _typed(datatype: str, field: str, values: list[Any], shape: tuple[int, ...] = (1, _grpc.IN_DIM)) -> Any:
    """A ModelInferRequest for "m" with typed contents in `field`."""
    request = pb.ModelInferRequest(model_name=_grpc.MODEL)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "input", datatype
    tensor.shape.extend(shape)
    getattr(tensor.contents, field).extend(values)
    return request


def _typed_and_raw() -> Any:
    request = _typed("FP32", "fp32_contents", [9.0] * _grpc.IN_DIM)
    request.raw_input_contents.append(ONES.tobytes())
    return request


def _two_fields() -> Any:
    request = _typed("FP32", "fp32_contents", [1.0] * _grpc.IN_DIM)
    request.inputs[0].contents.int_contents.extend([9] * _grpc.IN_DIM)
    return request


def _long_id() -> Any:
    request = _grpc.good_request()
    request.id = "i" * 257
    return request


GRPC_CASES: dict[str, tuple[Any, str]] = {
    # new refusals
    "typed beside raw": (_typed_and_raw(), "typed contents must not be sent with raw_input_contents"),
    "two typed fields": (_two_fields(), "FP32 values belong in fp32_contents only"),
    "id of 257 characters": (_long_id(), "request id must be a string of at most 256 characters"),
    # already refused: pinned
    "shape zero beside 2**62": (_grpc.raw_request("m", "FP32", [0, 2**62], b""), "more than 268435456 elements"),
    "shape int64 max": (_grpc.raw_request("m", "FP32", [2**63 - 1, 1], ONES.tobytes()), "more than 268435456"),
    "shape int64 min": (_grpc.raw_request("m", "FP32", [-(2**63), -1], ONES.tobytes()), "negative dimension"),
    "rank 33": (_grpc.raw_request("m", "FP32", [1] * 33, b"\0" * 4), "33 dimensions, at most 32"),
    "BF16": (_grpc.raw_request("m", "BF16", [1, 8], b"\0" * 16), "unknown datatype 'BF16'"),
    "BYTES prefix 0xfffffff0": (
        _grpc.raw_request("m", "BYTES", [1, 2], struct.pack("<I", 0xFFFFFFF0) + b"a" * 4),
        "runs past the end",
    ),
    "typed INT8 300": (_typed("INT8", "int_contents", [300] * 8), "outside the range of INT8"),
    "typed UINT8 2**32-1": (_typed("UINT8", "uint_contents", [2**32 - 1] * 8), "outside the range of UINT8"),
    "typed FP16": (_typed("FP16", "fp32_contents", [1.0] * 8), "FP16 must be sent as raw content"),
    "version superscript two": (_grpc.good_request("\u00b2"), "invalid model_version"),
    "version 1e0": (_grpc.good_request("1e0"), "invalid model_version"),
}


@pytest.mark.parametrize("case", list(GRPC_CASES))
def test_grpc_request_is_refused(env: harness.Env, gateway: Any, case: str) -> None:
    """INVALID_ARGUMENT with a bounded message naming the problem; audited; the server still serves."""
    request, words = GRPC_CASES[case]
    seen = len(_grpc.records(env, gateway, "grpc:ModelInfer", "INVALID_ARGUMENT"))
    with _grpc.channel(env, gateway) as chan, pytest.raises(grpc.RpcError) as refused:
        _grpc.stub(chan).ModelInfer(request, metadata=_grpc.auth(env), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in (refused.value.details() or "") and len(refused.value.details() or "") < 400
    assert len(_grpc.records(env, gateway, "grpc:ModelInfer", "INVALID_ARGUMENT")) == seen + 1
    _grpc.assert_serves(env, gateway)


def test_typed_contents_alone_still_serve(env: harness.Env, gateway: Any) -> None:
    """The typed path itself is unchanged: the same values typed or raw give the same answer."""
    with _grpc.channel(env, gateway) as chan:
        stub = _grpc.stub(chan)
        typed = stub.ModelInfer(_typed("FP32", "fp32_contents", [1.0] * 8), metadata=_grpc.auth(env), timeout=30)
        raw = stub.ModelInfer(_grpc.good_request(), metadata=_grpc.auth(env), timeout=30)
    assert typed.raw_output_contents[0] == raw.raw_output_contents[0]


def _rest_body(data: Any, datatype: str = "FP32") -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": [1, 8], "datatype": datatype, "data": data}]}).encode()


REST_CASES: dict[str, tuple[bytes, str]] = {
    # new refusal
    "booleans as FP32": (_rest_body([True] * 8), "FP32 needs numbers, not true or false"),
    # already refused: pinned
    "1e999999": (_rest_body([0] * 8).replace(b"[0, 0", b"[1e999999, 0", 1), "beyond the range of a 64-bit float"),
    "5000-digit integer": (
        _rest_body([0] * 8).replace(b"[0, 0", b"[" + b"9" * 5000 + b", 0", 1),
        "more than 40 digits",
    ),
    "UTF-8 BOM": (b"\xef\xbb\xbf" + _rest_body([0] * 8), "not valid JSON"),
    "UTF-16": (_rest_body([0] * 8).decode().encode("utf-16"), "not UTF-8"),
    "100000 empty arrays": (_rest_body([[]] * 100_000), "0 values, shape [1, 8] needs 8"),
    "shape [0, 2**62]": (_rest_body([]).replace(b"[1, 8]", b"[0, 4611686018427387904]"), "more than 268435456"),
    "shape of booleans": (_rest_body([0] * 8).replace(b"[1, 8]", b"[true, 8]"), "shape must be a list of integers"),
    "datatype BF16": (_rest_body([0] * 8, "BF16"), "unknown datatype 'BF16'"),
}


@pytest.mark.parametrize("case", list(REST_CASES))
def test_rest_body_is_refused(env: harness.Env, gateway: Any, case: str) -> None:
    """400 with a bounded JSON error naming the problem; the server still serves."""
    body, words = REST_CASES[case]
    reply = requests.post(
        f"https://127.0.0.1:{gateway.rest_port}/v2/models/m/infer",
        data=body,
        headers={"authorization": "Bearer " + harness.token(env), "content-type": "application/json"},
        cert=(str(_grpc.cert_paths(env, "client")[0]), str(_grpc.cert_paths(env, "client")[1])),
        verify=str(env.certs / "ca.pem"),
        timeout=30,
    )
    assert reply.status_code == 400, reply.text
    assert words in reply.json()["error"] and len(reply.text) < 400
    _grpc.assert_serves(env, gateway)
