"""The gateway end to end on loopback: stock tritonclient and requests over mTLS + JWT, ONNX and
TensorFlow models, REST in both forms, security refusals with their codes and audit lines, bad input.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from gateway.server.app import GatewayThread
from tests import harness
from tests.models import make_onnx_mlp, make_tf_savedmodel

IN_DIM = 64


@pytest.fixture(scope="module")
def tf_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return make_tf_savedmodel(tmp_path_factory.mktemp("tf"), in_dim=8, out_dim=3, seed=1)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, tf_files: dict[str, bytes]) -> harness.Env:
    env = harness.make_env(tmp_path_factory.mktemp("gw"))
    harness.seal_model(env, "mlp", 1, make_onnx_mlp(IN_DIM, (32, 32), 2, seed=0))
    harness.seal_model(env, "tfm", 1, tf_files)
    return env


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Any]:
    with GatewayThread(env.config) as gw:
        deadline = time.time() + 60
        while time.time() < deadline and not all(
            any(s.name == n and s.state.name == "SERVING" for s in gw.manager.status()) for n in ("mlp", "tfm")
        ):
            time.sleep(0.1)
        yield gw


@pytest.fixture(scope="module")
def good(env: harness.Env) -> dict[str, str]:
    return {"authorization": "Bearer " + harness.token(env, "infer:* fetch:*")}


def _infer(client: Any, model: str, x: np.ndarray, headers: dict[str, str], name: str = "input") -> Any:
    inp = grpcclient.InferInput(name, list(x.shape), "FP32" if x.dtype == np.float32 else "INT32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp], headers=headers)


def _code(exc: InferenceServerException) -> str:
    return str(exc.status())


def test_onnx_outputs_match_onnxruntime(env: harness.Env, gateway: Any, good: dict[str, str]) -> None:
    files = make_onnx_mlp(IN_DIM, (32, 32), 2, seed=0)
    ref = ort.InferenceSession(files["model.onnx"], providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((5, IN_DIM)).astype(np.float32)
    with harness.triton(env, gateway.grpc_port) as client:
        assert client.is_server_live(headers=good)
        assert client.is_model_ready("mlp", headers=good)
        result = _infer(client, "mlp", x, good)
        meta = client.get_model_metadata("mlp", headers=good)
    np.testing.assert_allclose(result.as_numpy("output"), ref.run(None, {"input": x})[0], rtol=1e-6, atol=1e-6)
    assert result.get_response().model_version == "1"
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("input", "FP32", [-1, IN_DIM])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("output", "FP32", [-1, 2])]


def test_tensorflow_outputs_match_tensorflow(
    env: harness.Env, gateway: Any, good: dict[str, str], tf_files: dict[str, bytes], tmp_path: Path
) -> None:
    import tensorflow as tf

    for name, data in tf_files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    fn = tf.saved_model.load(str(tmp_path)).signatures["serving_default"]
    in_name = next(iter(fn.structured_input_signature[1]))
    out_name = next(iter(fn.structured_outputs))
    x = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    expected = fn(**{in_name: tf.constant(x)})[out_name].numpy()
    with harness.triton(env, gateway.grpc_port) as client:
        meta = client.get_model_metadata("tfm", headers=good)
        result = _infer(client, "tfm", x, good, name=in_name)
    assert meta.platform == "tensorflow_savedmodel"
    assert meta.inputs[0].name == in_name and meta.inputs[0].datatype == "FP32"
    assert list(meta.inputs[0].shape) == [-1, 8]
    np.testing.assert_allclose(result.as_numpy(out_name), expected, rtol=1e-5, atol=1e-5)


def _rest(
    env: harness.Env, gateway: Any, path: str, body: Any = None, token: str | None = None, cert: str | None = "client"
) -> requests.Response:
    url = f"https://127.0.0.1:{gateway.rest_port}{path}"
    headers = {"authorization": f"Bearer {token}"} if token else {}
    kw: dict[str, Any] = {"verify": str(env.certs / "ca.pem"), "headers": headers, "timeout": 30}
    if cert:
        kw["cert"] = (str(env.certs / f"{cert}.pem"), str(env.certs / f"{cert}.key"))
    if body is None:
        return requests.get(url, **kw)
    return requests.post(url, json=body, **kw)


def test_rest_refusal_before_the_body_keeps_the_connection_usable(env: harness.Env, gateway: Any) -> None:
    url = f"https://127.0.0.1:{gateway.rest_port}/v1/models/mlp:predict"
    body = {"instances": [[0.5] * IN_DIM]}
    tls: dict[str, Any] = {
        "verify": str(env.certs / "ca.pem"),  # per request: a session's verify loses to REQUESTS_CA_BUNDLE
        "cert": (str(env.certs / "client.pem"), str(env.certs / "client.key")),
        "timeout": 30,
    }
    with requests.Session() as s:
        refused = s.post(url, json=body, **tls)  # no token: refused before the body is read
        assert refused.status_code == 401 and refused.headers.get("Connection") == "close"
        ok = s.post(url, json=body, headers={"authorization": "Bearer " + harness.token(env)}, **tls)
        assert ok.status_code == 200, ok.text
        assert np.asarray(ok.json()["predictions"]).shape == (1, 2)


def test_rest_predict_both_forms_match_grpc(env: harness.Env, gateway: Any, good: dict[str, str]) -> None:
    tok = good["authorization"].split()[1]
    x = np.random.default_rng(2).standard_normal((3, IN_DIM)).astype(np.float32)
    with harness.triton(env, gateway.grpc_port) as client:
        expected = _infer(client, "mlp", x, good).as_numpy("output")
    rows = _rest(env, gateway, "/v1/models/mlp:predict", {"instances": x.tolist()}, tok)
    cols = _rest(env, gateway, "/v1/models/mlp/versions/1:predict", {"inputs": {"input": x.tolist()}}, tok)
    assert rows.status_code == 200 and cols.status_code == 200
    np.testing.assert_allclose(np.array(rows.json()["predictions"]), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(cols.json()["outputs"]), expected, rtol=1e-5, atol=1e-6)
    status = _rest(env, gateway, "/v1/models/mlp", token=tok)
    assert status.json()["model_version_status"][0]["state"] == "AVAILABLE"
    assert _rest(env, gateway, "/metrics").status_code == 404  # metrics live on their own listener
    gateway.recorder.flush()
    metrics = gateway.metrics.render().decode()
    assert 'sealgate_requests_total{method="Predict",model="mlp",protocol="rest",status="OK",version="1"}' in metrics


def test_rest_refusals(env: harness.Env, gateway: Any) -> None:
    tok = harness.token(env, "infer:other")
    assert _rest(env, gateway, "/v1/models/mlp:predict", {"instances": [[0.0] * IN_DIM]}).status_code == 401
    assert _rest(env, gateway, "/v1/models/mlp:predict", {"instances": [[0.0] * IN_DIM]}, tok).status_code == 403
    good = harness.token(env)
    bad_shape = _rest(env, gateway, "/v1/models/mlp:predict", {"instances": [[0.0] * 3]}, good)
    assert bad_shape.status_code == 400 and "input" in bad_shape.json()["error"]
    assert _rest(env, gateway, "/v1/models/nope:predict", {"instances": [[0.0]]}, good).status_code == 404
    # no client certificate: the handshake fails (TLS 1.3 reports it as the connection closing, not an alert)
    with pytest.raises(requests.exceptions.ConnectionError):
        _rest(env, gateway, "/v1/models/mlp", token=good, cert=None)


# --- security: transport -----------------------------------------------------------------------
def test_no_client_certificate_fails_handshake(env: harness.Env, gateway: Any, good: dict[str, str]) -> None:
    with harness.triton(env, gateway.grpc_port, client=None) as client, pytest.raises(InferenceServerException) as e:
        client.is_server_live(headers=good)
    assert "UNAVAILABLE" in _code(e.value)


def test_certificate_from_another_ca_fails_handshake(
    env: harness.Env, gateway: Any, good: dict[str, str], tmp_path: Path
) -> None:
    from gateway.auth import pki

    other = tmp_path / "other"
    pki.write_dev_pki(other)
    import tritonclient.grpc as tc

    client = tc.InferenceServerClient(
        f"127.0.0.1:{gateway.grpc_port}",
        ssl=True,
        root_certificates=str(env.certs / "ca.pem"),
        private_key=str(other / "client.key"),
        certificate_chain=str(other / "client.pem"),
    )
    with client, pytest.raises(InferenceServerException) as e:
        client.is_server_live(headers=good)
    assert "UNAVAILABLE" in _code(e.value)


# --- security: tokens --------------------------------------------------------------------------
def _refusals(env: harness.Env) -> dict[str, tuple[str | None, str]]:
    now = int(time.time())
    return {
        "no token": (None, "UNAUTHENTICATED"),
        "expired": (
            harness.signed(env, harness.claims(env, iat=now - 7200, nbf=now - 7200, exp=now - 3600)),
            "UNAUTHENTICATED",
        ),
        "wrong aud": (harness.signed(env, harness.claims(env, aud="someone-else")), "UNAUTHENTICATED"),
        "wrong iss": (harness.signed(env, harness.claims(env, iss="https://evil.example")), "UNAUTHENTICATED"),
        "alg none": (harness.forged_none(env), "UNAUTHENTICATED"),
        "hs256 with public key": (harness.forged_hs256_with_public_key(env), "UNAUTHENTICATED"),
        "unknown kid": (harness.signed(env, harness.claims(env), kid="not-a-key"), "UNAUTHENTICATED"),
        "altered payload": (harness.altered_payload(env), "UNAUTHENTICATED"),
        "missing scope": (harness.token(env, "infer:other fetch:mlp"), "PERMISSION_DENIED"),
        "bound to another cert": (
            harness.token(env, "infer:*", bind=env.certs / "client-other.pem"),
            "PERMISSION_DENIED",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "no token",
        "expired",
        "wrong aud",
        "wrong iss",
        "alg none",
        "hs256 with public key",
        "unknown kid",
        "altered payload",
        "missing scope",
        "bound to another cert",
    ],
)
def test_token_refusals(env: harness.Env, gateway: Any, case: str) -> None:
    tok, expected = _refusals(env)[case]
    headers = {"authorization": f"Bearer {tok}"} if tok else {}
    before = [(s.name, s.version, s.state.name) for s in gateway.manager.status()]
    lines_before = len(env.audit_lines(gateway))
    x = np.zeros((1, IN_DIM), np.float32)
    with harness.triton(env, gateway.grpc_port) as client, pytest.raises(InferenceServerException) as e:
        _infer(client, "mlp", x, headers)
    assert expected in _code(e.value)
    assert "Traceback" not in str(e.value)
    lines = env.audit_lines(gateway)[lines_before:]
    assert any(rec["method"] == "grpc:ModelInfer" and rec["status"] == expected for rec in lines), lines
    assert all(tok is None or tok not in str(rec) for rec in lines)
    assert [(s.name, s.version, s.state.name) for s in gateway.manager.status()] == before


def test_bound_token_works_over_its_own_certificate(env: harness.Env, gateway: Any) -> None:
    tok = harness.token(env, "infer:mlp", bind=env.certs / "client.pem")
    with harness.triton(env, gateway.grpc_port) as client:
        out = _infer(client, "mlp", np.zeros((1, IN_DIM), np.float32), {"authorization": f"Bearer {tok}"})
    assert out.as_numpy("output").shape == (1, 2)
    with (
        harness.triton(env, gateway.grpc_port, client="client-other") as client,
        pytest.raises(InferenceServerException) as e,
    ):
        _infer(client, "mlp", np.zeros((1, IN_DIM), np.float32), {"authorization": f"Bearer {tok}"})
    assert "PERMISSION_DENIED" in _code(e.value)


# --- bad input ---------------------------------------------------------------------------------
def _raw_request(model: str, datatype: str, shape: list[int], raw: bytes, name: str = "input") -> Any:
    from gateway.protos.inference import grpc_service_pb2 as pb

    req = pb.ModelInferRequest(model_name=model)
    t = req.inputs.add()
    t.name, t.datatype = name, datatype
    t.shape.extend(shape)
    req.raw_input_contents.append(raw)
    return req


def _stub(env: harness.Env, gateway: Any) -> tuple[grpc.Channel, Any]:
    from gateway.auth.tls import channel_credentials
    from gateway.protos.inference import grpc_service_pb2_grpc as pb_grpc

    creds = channel_credentials(env.certs / "ca.pem", env.certs / "client.pem", env.certs / "client.key")
    channel = grpc.secure_channel(
        f"127.0.0.1:{gateway.grpc_port}", creds, options=[("grpc.max_send_message_length", 64 << 20)]
    )
    return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def test_bad_input_codes_and_server_keeps_serving(env: harness.Env, gateway: Any, good: dict[str, str]) -> None:
    md = tuple(good.items())
    ok = np.zeros((2, IN_DIM), np.float32).tobytes()
    cases = {
        "wrong dtype": (
            _raw_request("mlp", "INT32", [2, IN_DIM], np.zeros((2, IN_DIM), np.int32).tobytes()),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "wrong shape": (
            _raw_request("mlp", "FP32", [2, 3], np.zeros((2, 3), np.float32).tobytes()),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "raw size": (_raw_request("mlp", "FP32", [2, IN_DIM], ok[:-4]), grpc.StatusCode.INVALID_ARGUMENT),
        "unknown input": (_raw_request("mlp", "FP32", [2, IN_DIM], ok, name="nope"), grpc.StatusCode.INVALID_ARGUMENT),
        "unknown model": (_raw_request("nope", "FP32", [2, IN_DIM], ok), grpc.StatusCode.NOT_FOUND),
        "too large": (
            _raw_request("mlp", "FP32", [8192, IN_DIM], np.zeros((8192, IN_DIM), np.float32).tobytes()),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ),
    }
    from gateway.protos.inference import grpc_service_pb2 as pb

    missing = pb.ModelInferRequest(model_name="mlp")
    cases["missing input"] = (missing, grpc.StatusCode.INVALID_ARGUMENT)
    unknown_version = _raw_request("mlp", "FP32", [2, IN_DIM], ok)
    unknown_version.model_version = "7"
    cases["unknown version"] = (unknown_version, grpc.StatusCode.NOT_FOUND)
    channel, stub = _stub(env, gateway)
    with channel:
        for label, (req, code) in cases.items():
            with pytest.raises(grpc.RpcError) as e:
                stub.ModelInfer(req, metadata=md, timeout=30)
            assert e.value.code() == code, (label, e.value.code(), e.value.details())
            assert "Traceback" not in (e.value.details() or "")
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == 1
        with pytest.raises(grpc.RpcError) as e:  # per-model health would tell which model names exist
            health.Check(health_pb2.HealthCheckRequest(service="mlp"), timeout=10)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        good_req = _raw_request("mlp", "FP32", [2, IN_DIM], ok)
        assert len(stub.ModelInfer(good_req, metadata=md, timeout=30).raw_output_contents) == 1


def test_typed_contents_and_repository_index(env: harness.Env, gateway: Any, good: dict[str, str]) -> None:
    from gateway.protos.inference import grpc_service_pb2 as pb

    req = pb.ModelInferRequest(model_name="mlp")
    t = req.inputs.add()
    t.name, t.datatype = "input", "FP32"
    t.shape.extend([1, IN_DIM])
    t.contents.fp32_contents.extend([0.5] * IN_DIM)
    channel, stub = _stub(env, gateway)
    with channel:
        resp = stub.ModelInfer(req, metadata=tuple(good.items()), timeout=30)
    ref = ort.InferenceSession(
        make_onnx_mlp(IN_DIM, (32, 32), 2, seed=0)["model.onnx"], providers=["CPUExecutionProvider"]
    )
    expected = ref.run(None, {"input": np.full((1, IN_DIM), 0.5, np.float32)})[0]
    np.testing.assert_allclose(
        np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(1, 2), expected, rtol=1e-6
    )
    with harness.triton(env, gateway.grpc_port) as client:
        index = client.get_model_repository_index(headers=good)
    assert {(m.name, m.state) for m in index.models} >= {("mlp", "SERVING"), ("tfm", "SERVING")}
