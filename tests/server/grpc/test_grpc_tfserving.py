"""TF Serving's gRPC API (PredictionService, ModelService) on a real gateway, called with the stock stubs of
`tensorflow-serving-api` over mTLS + JWT: the same answers as the Open Inference Protocol, version choice by
number and label, metadata and status, and every refusal with its code and nothing allocated for a lie.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as grpcclient
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from onnx import TensorProto, helper
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.apis import model_service_pb2 as stock_model_service
from tensorflow_serving.apis import prediction_service_pb2 as stock_prediction_service

from gateway.config import load_config
from gateway.protos.tensorflow_serving.apis import model_service_pb2 as our_model_service
from gateway.protos.tensorflow_serving.apis import prediction_service_pb2 as our_prediction_service
from gateway.server.app import Gateway, GatewayThread
from tests import harness
from tests.models import MLP_INPUT, MLP_OUTPUT, ONNX_OPSET, make_onnx_mlp

MODEL, SCORER = "tfs-mlp", "tfs-scorer"
WIDTH, OUT = 8, 3


def _scorer() -> dict[str, bytes]:
    """An ONNX model with TF Serving's classification shape: input `x` FP32 [N, 4] -> `scores` = softmax(x)."""
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["scores"], axis=1)],
        "scorer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    return {"model.onnx": model.SerializeToString()}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    """Two versions of an MLP (both serving: latest 2) and a classifier-shaped model."""
    env = harness.make_env(tmp_path_factory.mktemp("tfs"))
    toml = env.root / "sealgate.toml"
    toml.write_text(toml.read_text().replace("[repository]\n", "[repository]\nlatest = 2\n"))
    env = harness.Env(env.root, env.certs, env.models, load_config(toml))
    harness.seal_model(env, MODEL, 1, make_onnx_mlp(WIDTH, (8,), OUT, seed=1))
    harness.seal_model(env, MODEL, 2, make_onnx_mlp(WIDTH, (8,), OUT, seed=2))
    harness.seal_model(env, SCORER, 1, _scorer())
    return env


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Gateway]:
    """The running gateway, every version serving."""
    with GatewayThread(env.config) as gw:
        states = sorted((s.name, s.version, s.state.name) for s in gw.manager.status())
        assert states == [(MODEL, 1, "SERVING"), (MODEL, 2, "SERVING"), (SCORER, 1, "SERVING")]
        yield gw


@pytest.fixture(scope="module")
def channel(env: harness.Env, gateway: Gateway) -> Iterator[grpc.Channel]:
    """An mTLS channel to the gateway with the dev client certificate."""
    creds = grpc.ssl_channel_credentials(
        (env.certs / "ca.pem").read_bytes(),
        (env.certs / "client.key").read_bytes(),
        (env.certs / "client.pem").read_bytes(),
    )
    with grpc.secure_channel(f"127.0.0.1:{gateway.grpc_port}", creds) as ch:
        yield ch


def _auth(env: harness.Env, scope: str = f"infer:{MODEL} infer:{SCORER}") -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {harness.token(env, scope)}"),)


def _predict_request(x: np.ndarray, **spec: Any) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = spec.pop("name", MODEL)
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs[MLP_INPUT].CopyFrom(tf.make_tensor_proto(x))
    return request


def _code(fn: Any, *args: Any, **kwargs: Any) -> tuple[grpc.StatusCode, str]:
    """The status code and details a call fails with."""
    with pytest.raises(grpc.RpcError) as raised:
        fn(*args, timeout=30, **kwargs)
    return raised.value.code(), raised.value.details()


def _oip(env: harness.Env, gw: Gateway, x: np.ndarray, version: str = "") -> np.ndarray:
    """The same inference through the Open Inference Protocol (stock tritonclient)."""
    client = harness.triton(env, gw.grpc_port)
    try:
        tensor = grpcclient.InferInput(MLP_INPUT, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        headers = {"authorization": f"Bearer {harness.token(env, f'infer:{MODEL}')}"}
        out = client.infer(MODEL, [tensor], model_version=version, headers=headers).as_numpy(MLP_OUTPUT)
    finally:
        client.close()
    assert out is not None
    return out


X = np.random.default_rng(7).standard_normal((3, WIDTH)).astype(np.float32)


def test_predict_equals_the_oip_answer_for_each_version(env: harness.Env, gateway: Gateway, channel: Any) -> None:
    """Predict (tensor_content from tf.make_tensor_proto) answers exactly what ModelInfer answers, per version."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    default = stub.Predict(_predict_request(X), metadata=_auth(env), timeout=30)
    assert (default.model_spec.name, default.model_spec.version.value) == (MODEL, 2)
    assert default.model_spec.signature_name == "serving_default"
    np.testing.assert_array_equal(tf.make_ndarray(default.outputs[MLP_OUTPUT]), _oip(env, gateway, X))
    first = stub.Predict(_predict_request(X, version=1), metadata=_auth(env), timeout=30)
    assert first.model_spec.version.value == 1
    np.testing.assert_array_equal(tf.make_ndarray(first.outputs[MLP_OUTPUT]), _oip(env, gateway, X, "1"))
    assert not np.array_equal(tf.make_ndarray(first.outputs[MLP_OUTPUT]), tf.make_ndarray(default.outputs[MLP_OUTPUT]))


def test_typed_values_labels_and_output_filter(env: harness.Env, gateway: Gateway, channel: Any) -> None:
    """float_val instead of tensor_content, the `stable` label (the default version), output_filter honoured."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = _predict_request(X, version_label="stable")
    typed = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=X.reshape(-1).tolist())
    typed.tensor_shape.dim.add(size=3)
    typed.tensor_shape.dim.add(size=WIDTH)
    request.inputs[MLP_INPUT].CopyFrom(typed)
    request.output_filter.append(MLP_OUTPUT)
    answer = stub.Predict(request, metadata=_auth(env), timeout=30)
    assert answer.model_spec.version.value == 2 and list(answer.outputs) == [MLP_OUTPUT]
    np.testing.assert_array_equal(tf.make_ndarray(answer.outputs[MLP_OUTPUT]), _oip(env, gateway, X))
    code, details = _code(stub.Predict, _predict_request(X, version_label="canary"), metadata=_auth(env))
    assert code is grpc.StatusCode.NOT_FOUND and "canary" in details


def test_metadata_and_status(env: harness.Env, channel: Any) -> None:
    """GetModelMetadata packs a SignatureDefMap the stock class unpacks; GetModelStatus lists the versions."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    answer = stub.GetModelMetadata(request, metadata=_auth(env), timeout=30)
    assert (answer.model_spec.name, answer.model_spec.version.value) == (MODEL, 2)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert answer.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    (name, info), (out_name, out_info) = *signature.inputs.items(), *signature.outputs.items()
    assert (name, info.dtype, [d.size for d in info.tensor_shape.dim]) == (MLP_INPUT, types_pb2.DT_FLOAT, [-1, WIDTH])
    assert (out_name, [d.size for d in out_info.tensor_shape.dim]) == (MLP_OUTPUT, [-1, OUT])

    status_stub = model_service_pb2_grpc.ModelServiceStub(channel)
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = MODEL
    listed = status_stub.GetModelStatus(status_request, metadata=_auth(env), timeout=30).model_version_status
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert sorted((s.version, s.state, s.status.error_code) for s in listed) == [(1, available, 0), (2, available, 0)]
    status_request.model_spec.version.value = 1
    (one,) = status_stub.GetModelStatus(status_request, metadata=_auth(env), timeout=30).model_version_status
    assert one.version == 1


def test_classify_and_regress_follow_the_model_outputs(env: harness.Env, channel: Any) -> None:
    """A model with a `scores` output classifies tf.Examples (softmax here); one without is INVALID_ARGUMENT."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    rows = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5]], dtype=np.float32)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = SCORER
    for row in rows:
        request.input.example_list.examples.add().features.feature["x"].float_list.value.extend(row.tolist())
    answer = stub.Classify(request, metadata=_auth(env), timeout=30)
    expected = np.exp(rows) / np.exp(rows).sum(axis=1, keepdims=True)
    got = [[(c.label, c.score) for c in item.classes] for item in answer.result.classifications]
    assert [[label for label, _ in item] for item in got] == [["0", "1", "2", "3"]] * 2
    np.testing.assert_allclose([[score for _, score in item] for item in got], expected, rtol=1e-6)

    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = SCORER
    regress.input.CopyFrom(request.input)
    code, details = _code(stub.Regress, regress, metadata=_auth(env))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "no regress signature" in details and "'outputs'" in details
    request.model_spec.name = MODEL
    code, details = _code(stub.Classify, request, metadata=_auth(env))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "no classify signature" in details


def _tensor(shape: list[int], **fields: Any) -> tensor_pb2.TensorProto:
    tensor = tensor_pb2.TensorProto(dtype=fields.pop("dtype", types_pb2.DT_FLOAT), **fields)
    for size in shape:
        tensor.tensor_shape.dim.add(size=size)
    return tensor


BAD_INPUTS = {
    "wrong width": (_tensor([1, WIDTH - 1], float_val=[0.5] * (WIDTH - 1)), "shape"),
    "content shorter than shape": (_tensor([2, WIDTH], tensor_content=b"\0" * 4 * WIDTH), "needs 64"),
    "2**40 elements in 4 bytes": (_tensor([1 << 20, 1 << 20], tensor_content=b"\0" * 4), "elements"),
    "fill past the limit": (_tensor([1 << 16, WIDTH], float_val=[1.0]), "cannot fill"),
    "unknown rank": (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0]), "known shape"),
    "negative dimension": (_tensor([-1, WIDTH], float_val=[0.5] * WIDTH), "negative"),
    "unserved dtype": (_tensor([1, WIDTH], dtype=types_pb2.DT_COMPLEX64), "DT_COMPLEX64"),
    "double for float": (_tensor([1, WIDTH], dtype=types_pb2.DT_DOUBLE, double_val=[0.5] * WIDTH), "FP32"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_tensors_are_invalid_argument(env: harness.Env, channel: Any, case: str) -> None:
    """A tensor whose shape, size or type does not hold is INVALID_ARGUMENT with a clipped message, never INTERNAL."""
    tensor, hint = BAD_INPUTS[case]
    tensor.tensor_shape.unknown_rank = case == "unknown rank"
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs[MLP_INPUT].CopyFrom(tensor)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    code, details = _code(stub.Predict, request, metadata=_auth(env))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and hint in details and len(details) <= 512, details


def test_typed_fill_within_the_limit_is_tfs_semantics(env: harness.Env, gateway: Gateway, channel: Any) -> None:
    """One float_val fills the shape (TF's rule) when the result stays within the message limit."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs[MLP_INPUT].CopyFrom(_tensor([2, WIDTH], float_val=[0.25]))
    answer = stub.Predict(request, metadata=_auth(env), timeout=30)
    full = np.full((2, WIDTH), 0.25, dtype=np.float32)
    np.testing.assert_array_equal(tf.make_ndarray(answer.outputs[MLP_OUTPUT]), _oip(env, gateway, full))


def test_refusals_carry_the_right_codes_and_are_audited(env: harness.Env, gateway: Gateway, channel: Any) -> None:
    """No token UNAUTHENTICATED, another model's scope PERMISSION_DENIED, unknown model or signature or
    version NOT_FOUND / INVALID_ARGUMENT, on both services; each refusal is in the audit log."""
    predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = MODEL
    seen = len(env.audit_lines(gateway))
    wrong = _auth(env, "infer:other")
    assert _code(predict, _predict_request(X))[0] is grpc.StatusCode.UNAUTHENTICATED
    assert _code(status, status_request)[0] is grpc.StatusCode.UNAUTHENTICATED
    assert _code(predict, _predict_request(X), metadata=wrong)[0] is grpc.StatusCode.PERMISSION_DENIED
    assert _code(status, status_request, metadata=wrong)[0] is grpc.StatusCode.PERMISSION_DENIED
    everything = _auth(env, "infer:*")
    assert _code(predict, _predict_request(X, name="nope"), metadata=everything)[0] is grpc.StatusCode.NOT_FOUND
    status_request.model_spec.name = "nope"
    assert _code(status, status_request, metadata=everything)[0] is grpc.StatusCode.NOT_FOUND
    assert _code(predict, _predict_request(X, version=9), metadata=_auth(env))[0] is grpc.StatusCode.NOT_FOUND
    code, details = _code(predict, _predict_request(X, version=0), metadata=_auth(env))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "version" in details
    code, details = _code(predict, _predict_request(X, signature_name="x" * 500), metadata=_auth(env))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "serving_default" in details and len(details) < 200
    records = env.audit_lines(gateway)[seen:]
    assert [r["status"] for r in records if r["method"] == "grpc:GetModelStatus"] == [
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "NOT_FOUND",
    ]
    assert [r["status"] for r in records if r["method"] == "grpc:Predict"][:3] == [
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "NOT_FOUND",
    ]


# --- the contract itself ---------------------------------------------------------------------------
def _messages(file: FileDescriptor) -> dict[str, descriptor_pb2.DescriptorProto]:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    return {m.name: m for m in proto.message_type}


def _fields(message: descriptor_pb2.DescriptorProto, prefix: str = "") -> dict[str, tuple[Any, ...]]:
    """Every field of a message and its nested messages: (number, type, label, type name)."""
    found = {prefix + f.name: (f.number, f.type, f.label, f.type_name) for f in message.field}
    for nested in message.nested_type:
        found.update(_fields(nested, f"{prefix}{nested.name}."))
    return found


def _closure(file: FileDescriptor) -> list[FileDescriptor]:
    out, todo = [], [file]
    while todo:
        current = todo.pop()
        if current.name not in {f.name for f in out}:
            out.append(current)
            todo.extend(current.dependencies)
    return out


@pytest.mark.parametrize(
    ("ours", "stock"),
    [
        (our_prediction_service.DESCRIPTOR, stock_prediction_service.DESCRIPTOR),
        (our_model_service.DESCRIPTOR, stock_model_service.DESCRIPTOR),
    ],
)
def test_our_contract_is_the_stock_contract(ours: FileDescriptor, stock: FileDescriptor) -> None:
    """Every message field we declare (through every imported file) has the stock stubs' number and type, and
    every RPC we declare has the stock request and response types: only the trimmed parts are missing."""
    stock_files = {f.name: f for f in _closure(stock)}
    for file in _closure(ours):
        if file.package.startswith("google.protobuf"):
            continue
        theirs = stock_files[file.name] if file.name in stock_files else None
        if theirs is None:  # error_codes.proto: TF 2.21 re-exports it from xla/tsl, same enum
            assert file.name == "tensorflow/core/protobuf/error_codes.proto"
            continue
        their_messages = _messages(theirs)
        for name, message in _messages(file).items():
            mine, stock_fields = _fields(message), _fields(their_messages[name])
            assert {k: v for k, v in stock_fields.items() if k in mine} == mine, (file.name, name)
    (service,) = ours.services_by_name.values()
    stock_service = stock.services_by_name[service.name]
    for method in service.methods:
        theirs = stock_service.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == (
            theirs.input_type.full_name,
            theirs.output_type.full_name,
        )
    assert service.full_name == stock_service.full_name


def test_the_generator_mirrors_only_the_allowed_well_known_types(tmp_path: Path) -> None:
    """A proto importing Int64Value compiles into the private pool with its well-known file mirrored first."""
    from gateway.protos import generate

    (tmp_path / "x").mkdir()
    (tmp_path / "x/w.proto").write_text(
        'syntax = "proto3";\npackage x;\nimport "google/protobuf/wrappers.proto";\n'
        "message W { google.protobuf.Int64Value v = 1; }\n"
    )
    text = generate.render(proto_root=tmp_path)["x/w_pb2.py"].decode()
    assert "_sealgate_pool.mirror(google_dot_protobuf_dot_wrappers__pb2.DESCRIPTOR)\nDESCRIPTOR = " in text
    assert "_descriptor_pool.Default()" not in text
    assert "x/w_pb2_grpc.py" not in generate.render(proto_root=tmp_path)
