"""Explanations through a real gateway (mTLS + JWT, gRPC and REST) on real ONNX and TensorFlow models.

Correctness: on a linear ONNX model KernelSHAP gives exactly w_i (x_i - E[x_i]) over the sealed background;
on a digits MLP base value + sum of the values is the output (local accuracy); a TensorFlow SavedModel is
explained too. Refusals: no reference.npz (FAILED_PRECONDITION / 412), the per-subject rate
(RESOURCE_EXHAUSTED / 429), nsamples over the maximum (INVALID_ARGUMENT / 400) and a token without
`explain:<model>` (PERMISSION_DENIED / 403): each refused before anything is computed, and audited.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits

from gateway.errors import ConfigError
from gateway.protos.sealgate.v1 import explain_pb2 as pb
from gateway.protos.sealgate.v1 import explain_pb2_grpc as pb_grpc
from gateway.release import reference as reference_data
from gateway.server.app import Gateway, GatewayThread
from tests import harness
from tests.models import make_onnx_mlp, make_tf_savedmodel
from tests.security.mint import channel, rpc_error

LIN_W = np.array([0.5, -1.25, 2.0, 0.0, 3.5, -0.75], dtype=np.float32)
LIN_B = 0.3
MAX_NSAMPLES = 600
PER_MINUTE = 4


def linear_onnx(w: np.ndarray, b: float) -> dict[str, bytes]:
    """y = x @ w + b: input "input" FP32 [-1, d] -> output "output" FP32 [-1, 1]."""
    d = len(w)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "W", "B"], ["output"])],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", d])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(w.reshape(d, 1), "W"), numpy_helper.from_array(np.array([b], np.float32), "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return {"model.onnx": model.SerializeToString()}


def digits() -> np.ndarray:
    """scikit-learn's digits (public data shipped in the package), pixels scaled to [0, 1]."""
    return (load_digits().data / 16.0).astype(np.float32)


def with_reference(files: dict[str, bytes], rows: np.ndarray) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The release path's packing: the model's files with reference.npz, and the provenance entry."""
    packed, record = reference_data.pack(files, rows, rows=len(rows), source="test public data")
    return packed, {"reference": record}


@pytest.fixture(scope="module")
def background() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(40, len(LIN_W))).astype(np.float32)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, background: np.ndarray) -> harness.Env:
    """Models: lin (linear, reference), bare (linear, no reference), digits (64-32-10 MLP), tf (Keras 8 -> 3)."""
    env = harness.make_env(tmp_path_factory.mktemp("explain"))
    lin, prov = with_reference(linear_onnx(LIN_W, LIN_B), background)
    harness.seal_model(env, "lin", 1, lin, prov)
    harness.seal_model(env, "bare", 1, linear_onnx(LIN_W, LIN_B))
    mlp, prov = with_reference(make_onnx_mlp(64, (32,), 10, seed=3), reference_data.sample(digits()[:1000], 50))
    harness.seal_model(env, "digits", 1, mlp, prov)
    saved = make_tf_savedmodel(tmp_path_factory.mktemp("tf"), in_dim=8, out_dim=3, seed=2)
    tf_ref = np.random.default_rng(3).normal(size=(20, 8)).astype(np.float32)
    tf_files, prov = with_reference(saved, tf_ref)
    harness.seal_model(env, "tf", 1, tf_files, prov)
    explain = {"max_nsamples": MAX_NSAMPLES, "default_nsamples": 300, "max_per_minute": PER_MINUTE}
    return env.with_config(explain=explain)


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Gateway]:
    with GatewayThread(env.config) as gw:
        states = {s.name: s.state.name for s in gw.manager.status()}
        assert states == dict.fromkeys(("bare", "digits", "lin", "tf"), "SERVING"), states
        yield gw


def explain_grpc(env: harness.Env, gw: Gateway, token: str, **fields: Any) -> pb.ExplainResponse:
    """One Explain call over gRPC (mTLS, bearer token)."""
    instances = [pb.Instance(values=np.asarray(x, np.float64).reshape(-1).tolist()) for x in fields.pop("instances")]
    with channel(env.certs, gw.grpc_port, "client") as ch:
        stub = pb_grpc.ExplainStub(ch)
        request = pb.ExplainRequest(instances=instances, **fields)
        answer: pb.ExplainResponse = stub.Explain(request, metadata=(("authorization", f"Bearer {token}"),), timeout=60)
        return answer


def explain_rest(env: harness.Env, gw: Gateway, token: str, path: str, body: dict[str, Any]) -> requests.Response:
    """One POST .../:explain over REST (mTLS, bearer token)."""
    return requests.post(
        f"https://127.0.0.1:{gw.rest_port}{path}",
        json=body,
        headers={"authorization": f"Bearer {token}"},
        verify=str(env.certs / "ca.pem"),
        cert=(str(env.certs / "client.pem"), str(env.certs / "client.key")),
        timeout=60,
    )


def test_linear_kernel_shap_is_w_times_x_minus_its_mean(
    env: harness.Env, gateway: Gateway, background: np.ndarray
) -> None:
    """gRPC and REST: phi_i = w_i (x_i - E[x_i]) within 1e-3, base = E[f], output = f(x), for both methods."""
    token = harness.token(env, "explain:lin", sub="linear")
    xs = np.random.default_rng(11).normal(size=(2, len(LIN_W))).astype(np.float32)
    mean = background.astype(np.float64).mean(axis=0)
    expected = LIN_W * (xs - mean)
    answer = explain_grpc(env, gateway, token, model_name="lin", instances=xs, nsamples=200)
    assert answer.method == "kernel_shap" and answer.model_version == "1" and list(answer.feature_shape) == [6]
    for x, want, got in zip(xs, expected, answer.explanations, strict=True):
        np.testing.assert_allclose(got.values, want, atol=1e-3)
        assert abs(got.base_value - (mean @ LIN_W + LIN_B)) < 1e-3
        assert abs(got.output - (x @ LIN_W + LIN_B)) < 1e-4 and got.target == 0
    assert answer.evaluations > 200  # coalitions x background rows, plus the instances themselves
    body = {"instances": xs[:1].tolist(), "parameters": {"method": "occlusion"}}
    r = explain_rest(env, gateway, token, "/v1/models/lin/versions/1:explain", body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert (
        doc["method"] == "occlusion" and doc["model_version"] == "1" and doc["evaluations"] == len(LIN_W) + 3
    )  # x (target), x and M occluded, mean
    np.testing.assert_allclose(doc["explanations"][0]["values"], expected[0], atol=1e-3)


def test_digits_mlp_local_accuracy(env: harness.Env, gateway: Gateway) -> None:
    """base value + sum(SHAP) = output within 1e-3 over gRPC and REST; the output is what inference answers."""
    token = harness.token(env, "explain:digits infer:digits", sub="digits")
    rows = digits()[1500:1502]
    answer = explain_grpc(env, gateway, token, model_name="digits", instances=rows)
    assert len(answer.explanations) == 2 and list(answer.feature_shape) == [64]
    triton = harness.triton(env, gateway.grpc_port)
    import tritonclient.grpc as grpcclient

    inp = grpcclient.InferInput("input", [2, 64], "FP32")
    inp.set_data_from_numpy(rows)
    logits = triton.infer("digits", [inp], headers={"authorization": f"Bearer {token}"}).as_numpy("output")
    for e, scores in zip(answer.explanations, logits, strict=True):
        assert len(e.values) == 64
        assert abs(e.base_value + sum(e.values) - e.output) < 1e-3
        assert e.target == int(np.argmax(scores)) and abs(e.output - scores[e.target]) < 1e-4
    body = {"instances": [rows[0].tolist()], "parameters": {"nsamples": 100, "target": 3}}
    r = explain_rest(env, gateway, token, "/v1/models/digits:explain", body)
    assert r.status_code == 200, r.text
    e = r.json()["explanations"][0]
    assert e["target"] == 3 and abs(e["base_value"] + sum(e["values"]) - e["output"]) < 1e-3
    assert abs(e["output"] - float(logits[0][3])) < 1e-4


def test_tensorflow_model_is_explained(env: harness.Env, gateway: Gateway) -> None:
    """A TensorFlow SavedModel (run in a worker thread by its backend): local accuracy on a chosen column."""
    token = harness.token(env, "explain:tf", sub="tf")
    x = np.random.default_rng(5).normal(size=(1, 8)).astype(np.float32)
    answer = explain_grpc(env, gateway, token, model_name="tf", instances=x, target=1, nsamples=128)
    e = answer.explanations[0]
    assert e.target == 1 and len(e.values) == 8 and abs(e.base_value + sum(e.values) - e.output) < 1e-3
    assert max(abs(v) for v in e.values) > 1e-4  # a real attribution, not zeros


def test_no_reference_is_failed_precondition(env: harness.Env, gateway: Gateway) -> None:
    """A model sealed without reference.npz: FAILED_PRECONDITION / 412, nothing computed, audited."""
    token = harness.token(env, "explain:bare", sub="bare")
    before = (gateway.explainer.computed, gateway.explainer.evaluations)
    err = rpc_error(lambda: explain_grpc(env, gateway, token, model_name="bare", instances=[LIN_W]))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "reference.npz" in (err.details() or "")
    r = explain_rest(env, gateway, token, "/v1/models/bare:explain", {"instances": [LIN_W.tolist()]})
    assert r.status_code == 412 and "reference.npz" in r.json()["error"]
    assert (gateway.explainer.computed, gateway.explainer.evaluations) == before
    statuses = {(a["method"], a["status"]) for a in env.audit_lines(gateway) if a["model"] == "bare"}
    assert {("grpc:Explain", "FAILED_PRECONDITION"), ("rest:Explain", "FAILED_PRECONDITION")} <= statuses


def test_rate_limit_per_subject(env: harness.Env, gateway: Gateway) -> None:
    """max_per_minute explanations per subject, across gRPC and REST; then RESOURCE_EXHAUSTED / 429, computing
    nothing; another subject is not affected."""
    token = harness.token(env, "explain:lin", sub="rate")
    x = [LIN_W.tolist()]
    before = gateway.explainer.computed
    for _ in range(PER_MINUTE - 1):
        assert explain_grpc(env, gateway, token, model_name="lin", instances=x, method="occlusion").explanations
    r = explain_rest(env, gateway, token, "/v1/models/lin:explain", {"instances": x})
    assert r.status_code == 200, r.text
    assert gateway.explainer.computed == before + PER_MINUTE
    err = rpc_error(lambda: explain_grpc(env, gateway, token, model_name="lin", instances=x, method="occlusion"))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "rate limit" in (err.details() or "")
    r = explain_rest(env, gateway, token, "/v1/models/lin:explain", {"instances": x})
    assert r.status_code == 429 and "rate limit" in r.json()["error"]
    assert gateway.explainer.computed == before + PER_MINUTE
    other = harness.token(env, "explain:lin", sub="rate-other")
    assert explain_grpc(env, gateway, other, model_name="lin", instances=x, method="occlusion").explanations


def test_nsamples_over_the_maximum_is_refused(env: harness.Env, gateway: Gateway) -> None:
    """nsamples > [explain] max_nsamples: INVALID_ARGUMENT / 400 before any model run; so is an unknown method."""
    token = harness.token(env, "explain:lin", sub="nsamples")
    before = (gateway.explainer.computed, gateway.explainer.evaluations)
    x = [LIN_W.tolist()]
    err = rpc_error(lambda: explain_grpc(env, gateway, token, model_name="lin", instances=x, nsamples=MAX_NSAMPLES + 1))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_nsamples" in (err.details() or "")
    body = {"instances": x, "parameters": {"nsamples": MAX_NSAMPLES + 1}}
    assert explain_rest(env, gateway, token, "/v1/models/lin:explain", body).status_code == 400
    body = {"instances": x, "parameters": {"method": "lime"}}
    assert explain_rest(env, gateway, token, "/v1/models/lin:explain", body).status_code == 400
    body = {"instances": x, "parameters": {"nsamples": 10, "extra": 1}}
    assert explain_rest(env, gateway, token, "/v1/models/lin:explain", body).status_code == 400
    assert (gateway.explainer.computed, gateway.explainer.evaluations) == before


def test_bad_instances_are_invalid_argument(env: harness.Env, gateway: Gateway) -> None:
    """An instance of the wrong size, or too many instances: INVALID_ARGUMENT / 400."""
    token = harness.token(env, "explain:lin", sub="shapes")
    err = rpc_error(lambda: explain_grpc(env, gateway, token, model_name="lin", instances=[[1.0, 2.0]]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "instance 0" in (err.details() or "")
    body = {"instances": [LIN_W.tolist()] * 9}
    r = explain_rest(env, gateway, token, "/v1/models/lin:explain", body)
    assert r.status_code == 400 and "max_instances" in r.json()["error"]


def test_wrong_scope_is_permission_denied_and_computes_nothing(env: harness.Env, gateway: Gateway) -> None:
    """`infer:lin` does not grant explanations: PERMISSION_DENIED / 403, no model run, audited; the success
    of a granted call is audited and counted as Explain."""
    infer_only = harness.token(env, "infer:lin infer:digits", sub="scope")
    before = (gateway.explainer.computed, gateway.explainer.evaluations)
    seen = len(env.audit_lines(gateway))
    err = rpc_error(lambda: explain_grpc(env, gateway, infer_only, model_name="lin", instances=[LIN_W]))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "explain:lin" in (err.details() or "")
    r = explain_rest(env, gateway, infer_only, "/v1/models/lin:explain", {"instances": [LIN_W.tolist()]})
    assert r.status_code == 403 and "explain:lin" in r.json()["error"]
    assert (gateway.explainer.computed, gateway.explainer.evaluations) == before
    records = env.audit_lines(gateway)[seen:]  # a refused call's record names no subject: it was not authorized
    assert {(a["method"], a["model"], a["status"]) for a in records} == {
        ("grpc:Explain", "lin", "PERMISSION_DENIED"),
        ("rest:Explain", "lin", "PERMISSION_DENIED"),
    }
    granted = harness.token(env, "explain:lin", sub="scope-ok")
    assert explain_grpc(env, gateway, granted, model_name="lin", instances=[LIN_W], method="occlusion").explanations
    ok = [a for a in env.audit_lines(gateway) if a["subject"] == "scope-ok"]
    assert [(a["method"], a["model"], a["version"], a["status"]) for a in ok] == [("grpc:Explain", "lin", "1", "OK")]
    text = requests.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=10).text
    counted = [line for line in text.splitlines() if 'method="Explain"' in line and not line.startswith("#")]
    assert counted, "Explain calls are counted in the metrics"


def test_release_path_seals_a_public_reference(env: harness.Env, gateway: Gateway, tmp_path: Path) -> None:
    """`publish.release` (what `sealgate release` runs) packs reference.npz, says in provenance that it is public
    data, and the pushed version is explainable at once; the demo's explain step works on it."""
    from gateway.artifact.keys import load_recipient, load_signer
    from gateway.demo import explain_prediction
    from gateway.release.client import ReleaseClient
    from gateway.release.publish import release
    from gateway.release.report import GateReport, GateResult

    target = harness.release_target(env, gateway.grpc_port, "release:digits")
    report = GateReport([GateResult("no_nan", "passed", 0.0, 0.0, "no NaN")])
    with ReleaseClient(target) as client:
        release(
            make_onnx_mlp(64, (32,), 10, seed=4),
            name="digits",
            version=2,
            report=report,
            provenance={},
            signer=load_signer(env.certs / "signing.key"),
            recipients=[load_recipient(env.certs / "gateway.pub")],
            client=client,
            out=tmp_path / "digits-2.sealed",
            reference=reference_data.sample(digits()[:1000], 30, seed=1),
        )
    assert gateway.manager.default_version("digits") == 2
    record = gateway.manager.get("digits").provenance["reference"]
    assert record["public"] is True and record["rows"] == 30 and "never client data" in record["note"]
    answer = explain_prediction(gateway.grpc_port, env.certs, digits()[1700], nsamples=64)
    e = answer.explanations[0]
    assert answer.model_version == "2" and abs(e.base_value + sum(e.values) - e.output) < 1e-3


def test_packing_refuses_a_model_that_has_a_reference(tmp_path: Path) -> None:
    """The release path never silently replaces a reference: a model already holding one is refused."""
    files, record = reference_data.pack(linear_onnx(LIN_W, LIN_B), digits()[:, :6], rows=10)
    assert record["public"] is True and record["rows"] == 10 and record["feature_shape"] == [6]
    with pytest.raises(ConfigError, match=r"already holds reference\.npz"):
        reference_data.pack(files, digits()[:, :6])
