"""Issue 11's conformance matrix: one sealed ONNX model served once, called through every protocol a user's
stock client speaks, each cell of (protocol x case) its own test.

Protocols: tritonclient.grpc, tritonclient.http (JSON tensors and binary tensors), TF Serving's gRPC stubs
(tensorflow-serving-api), TF Serving REST :predict (rows, named rows, columns, named columns), and a dynamic
client that learns GRPCInferenceService from server reflection v1 alone (no generated inference stubs).
Cases: the answer (bit-identical float32 everywhere, and equal to ONNX Runtime run directly on the model
bytes), then the refusals: no token, a token without the scope, a bad shape, an unknown model, each with the
right code for its transport (gRPC status or HTTP status) and a short message, never INTERNAL / 500.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import requests
import tensorflow as tf  # the one slow import: the TF Serving stubs need it anyway
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway.protos.reflection.v1 import reflection_pb2 as reflection_v1
from gateway.protos.reflection.v1 import reflection_pb2_grpc as reflection_v1_grpc
from gateway.server.app import Gateway, GatewayThread
from tests import harness
from tests.models import MLP_INPUT, MLP_OUTPUT, make_onnx_mlp
from tests.security.mint import channel

MODEL, UNKNOWN = "conformance", "nope"
WIDTH, OUT = 8, 3
FILES = make_onnx_mlp(WIDTH, (16,), OUT, seed=11)
X = np.random.default_rng(11).standard_normal((4, WIDTH)).astype(np.float32)
NARROW = np.ascontiguousarray(X[:, : WIDTH - 3])  # the bad shape: [4, 5] for a model taking [N, 8]
INFERENCE_SERVICE = "inference.GRPCInferenceService"

TOKENS = {  # the token each case presents (None: no authorization header at all)
    "answer": f"infer:{MODEL}",
    "no_token": None,
    "wrong_scope": f"infer:other fetch:{MODEL} release:{MODEL}",  # every action but infer on this model
    "bad_shape": f"infer:{MODEL}",
    "unknown_model": "infer:*",  # may infer on anything: what remains is that the model does not exist
}
EXPECTED = {
    "grpc": {
        "no_token": "UNAUTHENTICATED",
        "wrong_scope": "PERMISSION_DENIED",
        "bad_shape": "INVALID_ARGUMENT",
        "unknown_model": "NOT_FOUND",
    },
    "rest": {"no_token": "401", "wrong_scope": "403", "bad_shape": "400", "unknown_model": "404"},
}

REASONS = {  # what each refusal's message names, the same words whatever the protocol (one error table)
    "no_token": "bearer token",
    "wrong_scope": f"lacks scope infer:{MODEL}",
    "bad_shape": "got shape [4, 5]",
    "unknown_model": f"'{UNKNOWN}' not found",
}


class Refused(Exception):
    """A call the gateway refused, as its transport's code ("NOT_FOUND", "404") and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


@dataclass
class Clients:
    """One client of each kind, connected to the one gateway over mutual TLS with the dev client certificate."""

    env: harness.Env
    triton_grpc: Any
    triton_http: Any
    tfs_grpc: Any
    rest: requests.Session
    rest_base: str
    rest_tls: dict[str, Any]
    dynamic_request: Any
    dynamic_infer: Any


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    """The one model, sealed for the gateway."""
    env = harness.make_env(tmp_path_factory.mktemp("conformance"))
    harness.seal_model(env, MODEL, 1, FILES)
    return env.with_config(server={"metrics_address": ""})


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Gateway]:
    """The running gateway, serving the model."""
    with GatewayThread(env.config) as gw:
        assert [(s.name, s.version, s.state.name) for s in gw.manager.status()] == [(MODEL, 1, "SERVING")]
        yield gw


def _reflected_pool(ch: grpc.Channel) -> descriptor_pool.DescriptorPool:
    """The inference service's files, as server reflection v1 sends them, added to a fresh pool in dependency order."""
    stub = reflection_v1_grpc.ServerReflectionStub(ch)
    request = reflection_v1.ServerReflectionRequest(file_containing_symbol=INFERENCE_SERVICE)
    (answer,) = list(stub.ServerReflectionInfo(iter([request]), timeout=20))
    todo = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in answer.file_descriptor_response.file_descriptor_proto
    ]
    pool, added = descriptor_pool.DescriptorPool(), set[str]()
    while todo:
        ready = [f for f in todo if set(f.dependency) <= added]
        assert ready, f"reflection sent files whose imports are missing: {[f.name for f in todo]}"
        for file in ready:
            pool.Add(file)
            added.add(file.name)
            todo.remove(file)
    return pool


@pytest.fixture(scope="module")
def clients(env: harness.Env, gateway: Gateway) -> Iterator[Clients]:
    """Every client of the matrix, built once."""
    certs = env.certs
    triton_http = httpclient.InferenceServerClient(
        f"127.0.0.1:{gateway.rest_port}",
        ssl=True,
        ssl_options={
            "ca_certs": str(certs / "ca.pem"),
            "certfile": str(certs / "client.pem"),
            "keyfile": str(certs / "client.key"),
        },
    )
    session = requests.Session()
    triton_grpc = harness.triton(env, gateway.grpc_port)
    with channel(certs, gateway.grpc_port, "client") as ch:
        service = _reflected_pool(ch).FindServiceByName(INFERENCE_SERVICE)
        method = service.methods_by_name["ModelInfer"]
        dynamic_infer = ch.unary_unary(
            f"/{service.full_name}/{method.name}",
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=message_factory.GetMessageClass(method.output_type).FromString,
        )
        yield Clients(
            env=env,
            triton_grpc=triton_grpc,
            triton_http=triton_http,
            tfs_grpc=prediction_service_pb2_grpc.PredictionServiceStub(ch),
            rest=session,
            rest_base=f"https://127.0.0.1:{gateway.rest_port}",
            # per request: a Session's own verify loses to $REQUESTS_CA_BUNDLE when the environment sets one
            rest_tls={"verify": str(certs / "ca.pem"), "cert": (str(certs / "client.pem"), str(certs / "client.key"))},
            dynamic_request=message_factory.GetMessageClass(method.input_type),
            dynamic_infer=dynamic_infer,
        )
    triton_grpc.close()
    triton_http.close()
    session.close()


def _headers(env: harness.Env, scopes: str | None) -> dict[str, str]:
    """A fresh header dict (tritonclient.http writes into the dict it is given): a bearer token, or nothing."""
    return {"authorization": f"Bearer {harness.token(env, scopes)}"} if scopes else {}


def _metadata(env: harness.Env, scopes: str | None) -> tuple[tuple[str, str], ...]:
    """The same as gRPC metadata."""
    return tuple(_headers(env, scopes).items())


def _grpc_refusal(exc: grpc.RpcError) -> Refused:
    return Refused(exc.code().name, exc.details() or "")


def _triton_refusal(exc: InferenceServerException) -> Refused:
    """tritonclient's exception: a gRPC code as "StatusCode.NAME", an HTTP one as "404"."""
    return Refused(str(exc.status()).removeprefix("StatusCode."), exc.message() or "")


# --- one function per protocol: x through `model` with a token for `scopes`, the answer or Refused ------------
def triton_grpc(c: Clients, x: np.ndarray, model: str, scopes: str | None) -> np.ndarray:
    tensor = grpcclient.InferInput(MLP_INPUT, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    try:
        result = c.triton_grpc.infer(model, [tensor], headers=_headers(c.env, scopes))
    except InferenceServerException as exc:
        raise _triton_refusal(exc) from exc
    return np.asarray(result.as_numpy(MLP_OUTPUT))


def _triton_http(c: Clients, x: np.ndarray, model: str, scopes: str | None, binary: bool) -> np.ndarray:
    tensor = httpclient.InferInput(MLP_INPUT, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    wanted = [httpclient.InferRequestedOutput(MLP_OUTPUT, binary_data=binary)]
    try:
        result = c.triton_http.infer(model, [tensor], outputs=wanted, headers=_headers(c.env, scopes))
    except InferenceServerException as exc:
        raise _triton_refusal(exc) from exc
    return np.asarray(result.as_numpy(MLP_OUTPUT))


def triton_http_json(c: Clients, x: np.ndarray, model: str, scopes: str | None) -> np.ndarray:
    return _triton_http(c, x, model, scopes, binary=False)


def triton_http_binary(c: Clients, x: np.ndarray, model: str, scopes: str | None) -> np.ndarray:
    return _triton_http(c, x, model, scopes, binary=True)


def tfs_grpc(c: Clients, x: np.ndarray, model: str, scopes: str | None) -> np.ndarray:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.inputs[MLP_INPUT].CopyFrom(tf.make_tensor_proto(x))
    try:
        answer = c.tfs_grpc.Predict(request, metadata=_metadata(c.env, scopes), timeout=30)
    except grpc.RpcError as exc:
        raise _grpc_refusal(exc) from exc
    return np.asarray(tf.make_ndarray(answer.outputs[MLP_OUTPUT]))


def _tfs_rest(c: Clients, model: str, scopes: str | None, body: dict[str, Any], key: str) -> np.ndarray:
    url = f"{c.rest_base}/v1/models/{model}:predict"
    r = c.rest.post(url, json=body, headers=_headers(c.env, scopes), timeout=30, **c.rest_tls)
    if r.status_code != 200:
        raise Refused(str(r.status_code), r.json()["error"])
    return np.asarray(r.json()[key], dtype=np.float32)


def tfs_rest_rows(c: Clients, x: np.ndarray, model: str, scopes: str | None) -> np.ndarray:
    return _tfs_rest(c, model, scopes, {"instances": x.tolist()}, "predictions")


def tfs_rest_named_rows(c: Clients, x: np.ndarray, model: str, scopes: str | None) -> np.ndarray:
    return _tfs_rest(c, model, scopes, {"instances": [{MLP_INPUT: row} for row in x.tolist()]}, "predictions")


def tfs_rest_columns(c: Clients, x: np.ndarray, model: str, scopes: str | None) -> np.ndarray:
    return _tfs_rest(c, model, scopes, {"inputs": x.tolist()}, "outputs")


def tfs_rest_named_columns(c: Clients, x: np.ndarray, model: str, scopes: str | None) -> np.ndarray:
    return _tfs_rest(c, model, scopes, {"inputs": {MLP_INPUT: x.tolist()}}, "outputs")


def reflected_grpc(c: Clients, x: np.ndarray, model: str, scopes: str | None) -> np.ndarray:
    request = c.dynamic_request(model_name=model)
    request.inputs.add(name=MLP_INPUT, datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    try:
        answer = c.dynamic_infer(request, metadata=_metadata(c.env, scopes), timeout=30)
    except grpc.RpcError as exc:
        raise _grpc_refusal(exc) from exc
    (output,) = answer.outputs
    assert (answer.model_name, output.name, output.datatype) == (model, MLP_OUTPUT, "FP32")
    (raw,) = answer.raw_output_contents
    return np.frombuffer(raw, dtype="<f4").reshape(list(output.shape))


Call = Callable[[Clients, np.ndarray, str, str | None], np.ndarray]
PROTOCOLS: dict[str, tuple[str, Call]] = {  # name -> (transport, call)
    "triton_grpc": ("grpc", triton_grpc),
    "triton_http_json": ("rest", triton_http_json),
    "triton_http_binary": ("rest", triton_http_binary),
    "tfs_grpc": ("grpc", tfs_grpc),
    "tfs_rest_rows": ("rest", tfs_rest_rows),
    "tfs_rest_named_rows": ("rest", tfs_rest_named_rows),
    "tfs_rest_columns": ("rest", tfs_rest_columns),
    "tfs_rest_named_columns": ("rest", tfs_rest_named_columns),
    "reflected_grpc": ("grpc", reflected_grpc),
}


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """ONNX Runtime, run directly on the model bytes that were sealed."""
    session = ort.InferenceSession(FILES["model.onnx"], providers=["CPUExecutionProvider"])
    (out,) = session.run([MLP_OUTPUT], {MLP_INPUT: X})
    assert out.dtype == np.float32 and out.shape == (len(X), OUT)
    return np.asarray(out)


@pytest.mark.parametrize("case", list(TOKENS))
@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_cell(clients: Clients, reference: np.ndarray, protocol: str, case: str) -> None:
    """The answer is bit-identical to ONNX Runtime's; each refusal has its transport's code and a short reason."""
    transport, call = PROTOCOLS[protocol]
    x = NARROW if case == "bad_shape" else X
    model = UNKNOWN if case == "unknown_model" else MODEL
    if case == "answer":
        got = call(clients, x, model, TOKENS[case])
        assert got.dtype == np.float32 and got.shape == reference.shape
        assert np.array_equal(got, reference), np.abs(got - reference).max()
        return
    with pytest.raises(Refused) as refused:
        call(clients, x, model, TOKENS[case])
    code, message = refused.value.code, refused.value.message
    assert code == EXPECTED[transport][case], message
    assert REASONS[case] in message and len(message) <= 512, message
