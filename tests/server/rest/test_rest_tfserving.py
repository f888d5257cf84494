"""TF Serving's REST API, complete, on the gateway's REST port: every predict form, signature_name, classify and
regress, model metadata, version labels, and the refusals of each route (401, 403, 404, 400).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
from onnx import TensorProto, helper, numpy_helper

from gateway.backends.base import TensorSpec
from gateway.errors import InvalidInput
from gateway.server import tfs_rest
from gateway.server.app import Gateway, GatewayThread
from tests import harness
from tests.models import make_onnx_mlp, make_onnx_string_identity, mlp_reference

ROW = [0.1 * i for i in range(8)]


def _onnx(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any] = ()) -> dict[str, bytes]:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="sealgate-tests")
    return {"model.onnx": model.SerializeToString()}


def _vi(name: str, dims: list[Any]) -> Any:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def two_inputs() -> dict[str, bytes]:
    """ "a" + "b" -> "sum", FP32 [N, 2]."""
    return _onnx(
        [helper.make_node("Add", ["a", "b"], ["sum"])], [_vi("a", ["n", 2]), _vi("b", ["n", 2])], [_vi("sum", ["n", 2])]
    )


def classifier() -> dict[str, bytes]:
    """ "x" FP32 [N, 3] -> "scores" = softmax(x) [N, 3]: a model that declares a classify signature."""
    return _onnx(
        [helper.make_node("Softmax", ["x"], ["scores"], axis=1)], [_vi("x", ["n", 3])], [_vi("scores", ["n", 3])]
    )


def regressor() -> dict[str, bytes]:
    """ "x" FP32 [N, 2] -> "outputs" = x @ [1, 2] [N, 1]: a model that declares a regress signature."""
    weight = numpy_helper.from_array(np.array([[1.0], [2.0]], np.float32), "w")
    return _onnx(
        [helper.make_node("MatMul", ["x", "w"], ["outputs"])],
        [_vi("x", ["n", 2])],
        [_vi("outputs", ["n", 1])],
        [weight],
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    """An MLP in two versions, a two-input model, a classifier, a regressor and a string model."""
    env = harness.make_env(tmp_path_factory.mktemp("tfs"))
    harness.seal_model(env, "mlp", 1, make_onnx_mlp(8, (8,), 2, seed=1))
    harness.seal_model(env, "mlp", 2, make_onnx_mlp(8, (8,), 2, seed=2))
    harness.seal_model(env, "pair", 1, two_inputs())
    harness.seal_model(env, "cls", 1, classifier())
    harness.seal_model(env, "reg", 1, regressor())
    harness.seal_model(env, "text", 1, make_onnx_string_identity())
    return env.with_config(server={"metrics_address": ""})


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Gateway]:
    """The running gateway, once every model serves."""
    with GatewayThread(env.config) as gw:
        assert {s.name for s in gw.manager.status() if s.state.name == "SERVING"} == {
            "mlp",
            "pair",
            "cls",
            "reg",
            "text",
        }
        yield gw


def call(
    env: harness.Env, gw: Gateway, method: str, path: str, body: Any = None, scopes: str | None = "infer:*"
) -> requests.Response:
    """One request with `requests` over mutual TLS, with a token for `scopes` (None: no token)."""
    headers = {"authorization": f"Bearer {harness.token(env, scopes)}"} if scopes else {}
    return requests.request(
        method,
        f"https://127.0.0.1:{gw.rest_port}{path}",
        json=body,
        headers=headers,
        verify=str(env.certs / "ca.pem"),
        cert=(str(env.certs / "client.pem"), str(env.certs / "client.key")),
        timeout=30,
    )


def test_every_predict_form_gives_the_same_answer(env: harness.Env, gateway: Gateway) -> None:
    """Rows (bare and named, also for a single-input model), columns (bare and named), signature_name."""
    expected = mlp_reference(8, (8,), 2, seed=2)(np.array([ROW]))
    forms = [
        ({"instances": [ROW]}, "predictions"),
        ({"instances": [{"input": ROW}]}, "predictions"),
        ({"inputs": [ROW]}, "outputs"),
        ({"inputs": {"input": [ROW]}}, "outputs"),
        ({"signature_name": "serving_default", "instances": [ROW]}, "predictions"),
    ]
    for body, key in forms:
        r = call(env, gateway, "POST", "/v1/models/mlp:predict", body)
        assert r.status_code == 200, (body, r.text)
        np.testing.assert_allclose(r.json()[key], expected, rtol=1e-5, atol=1e-5)
    pair = call(env, gateway, "POST", "/v1/models/pair:predict", {"instances": [{"a": [1, 2], "b": [3, 4]}]})
    assert pair.json() == {"predictions": [[4.0, 6.0]]}
    other = call(env, gateway, "POST", "/v1/models/mlp:predict", {"signature_name": "other", "instances": [ROW]})
    assert other.status_code == 400 and "serving_default" in other.json()["error"]


def test_b64_strings(env: harness.Env, gateway: Gateway) -> None:
    """Binary strings as {"b64": ...}, beside plain strings; bad base64 is 400."""
    raw = "sealed ✓".encode()
    r = call(
        env,
        gateway,
        "POST",
        "/v1/models/text:predict",
        {"instances": [{"b64": base64.b64encode(raw).decode()}, "plain"]},
    )
    assert r.status_code == 200 and r.json()["predictions"][1] == "plain", r.text
    bad = call(env, gateway, "POST", "/v1/models/text:predict", {"inputs": [{"b64": "%%%"}]})
    assert bad.status_code == 400 and "base64" in bad.json()["error"]
    spec = TensorSpec("text", "BYTES", (-1,))
    assert list(tfs_rest._array([{"b64": base64.b64encode(raw).decode()}], spec)) == [raw]
    with pytest.raises(InvalidInput):
        tfs_rest._array([{"b64": "QQ==", "x": 1}], spec)


def test_classify_and_regress(env: harness.Env, gateway: Gateway) -> None:
    """A model with a `scores` output classifies, one with `outputs` regresses; others get a clear 400."""
    r = call(
        env, gateway, "POST", "/v1/models/cls:classify", {"examples": [{"x": [0.0, 0.0, 0.0]}, {"x": [0.0, 0.0, 9.0]}]}
    )
    assert r.status_code == 200, r.text
    first, second = r.json()["result"]
    assert [c for c, _ in first] == ["0", "1", "2"] and all(abs(s - 1 / 3) < 1e-6 for _, s in first)
    assert second[2][1] > 0.99
    r = call(
        env,
        gateway,
        "POST",
        "/v1/models/reg:regress",
        {"context": {"x": [1.0, 1.0]}, "examples": [{}, {"x": [2.0, 0.5]}]},
    )
    assert r.status_code == 200 and r.json() == {"result": [3.0, 3.0]}, r.text
    for verb, needle in ((":classify", "'scores'"), (":regress", "'outputs'")):
        no = call(env, gateway, "POST", f"/v1/models/mlp{verb}", {"examples": [{"input": ROW}]})
        assert no.status_code == 400 and needle in no.json()["error"] and "declares one" in no.json()["error"]


def test_metadata_status_and_labels(env: harness.Env, gateway: Gateway) -> None:
    """GetModelMetadata (TF Serving's shape), status and predict through the stable label; no canary serves."""
    meta = call(env, gateway, "GET", "/v1/models/mlp/metadata").json()
    assert meta["model_spec"] == {"name": "mlp", "signature_name": "", "version": "2"}
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["input"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in signature["inputs"]["input"]["tensor_shape"]["dim"]] == ["-1", "8"]
    assert call(env, gateway, "GET", "/v1/models/mlp/versions/2/metadata").status_code == 200
    assert call(env, gateway, "GET", "/v1/models/mlp/versions/1/metadata").status_code == 503  # stored, not serving
    stable = call(env, gateway, "GET", "/v1/models/mlp/labels/stable").json()
    assert [s["version"] for s in stable["model_version_status"]] == ["2"]
    via_label = call(env, gateway, "POST", "/v1/models/mlp/labels/stable:predict", {"instances": [ROW]})
    direct = call(env, gateway, "POST", "/v1/models/mlp/versions/2:predict", {"instances": [ROW]})
    assert via_label.json() == direct.json()
    canary = call(env, gateway, "GET", "/v1/models/mlp/labels/canary")
    assert canary.status_code == 404 and "no canary" in canary.json()["error"]
    assert call(env, gateway, "GET", "/v1/models/mlp/labels/beta").status_code == 404


ROUTES = [
    ("GET", "/v1/models/{m}", None),
    ("GET", "/v1/models/{m}/metadata", None),
    ("GET", "/v1/models/{m}/labels/stable", None),
    ("POST", "/v1/models/{m}:predict", {"instances": [ROW]}),
    ("POST", "/v1/models/{m}:classify", {"examples": [{"input": ROW}]}),
    ("POST", "/v1/models/{m}:regress", {"examples": [{"input": ROW}]}),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_refusals_of_each_route(env: harness.Env, gateway: Gateway, method: str, path: str, body: Any) -> None:
    """No token 401, a token for another model 403, an unknown model 404: JSON errors."""
    assert call(env, gateway, method, path.format(m="mlp"), body, scopes=None).status_code == 401
    denied = call(env, gateway, method, path.format(m="mlp"), body, scopes="infer:pair")
    assert denied.status_code == 403 and set(denied.json()) == {"error"}
    missing = call(env, gateway, method, path.format(m="nope"), body)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"instances": [[0.5] * 3]}, "shape"),
        ({"instances": [{"input": ROW}, ROW]}, "mix"),
        ({"instances": [{"nope": ROW}]}, "unknown input"),
        ({"instances": [ROW], "extra": True}, "unknown field"),
        ({"instances": [[None] * 8]}, "needs numbers"),
    ],
)
def test_bad_predict_bodies_are_400(env: harness.Env, gateway: Gateway, body: Any, needle: str) -> None:
    """Bad shapes and forms are 400 with a reason, never 500."""
    r = call(env, gateway, "POST", "/v1/models/mlp:predict", body)
    assert r.status_code == 400 and needle in r.json()["error"], r.text
