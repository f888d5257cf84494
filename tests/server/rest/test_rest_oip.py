"""The Open Inference Protocol over REST (KServe V2 / Triton HTTP) on the gateway's REST port, from stock clients.

tritonclient.http (binary tensors, its default, and JSON tensors) and requests against a real gateway over
mutual TLS: health, server and model metadata, readiness, config, statistics, inference (the same answer as
tritonclient.grpc), the repository index, load and unload (admin only, audited, pinned in the ledger). Then
the refusals of every /v2 route (no token 401, wrong scope 403, unknown model 404, bad input 400) and the
binary extension's lengths, each checked against the bytes received before anything is allocated.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from gateway.server.app import Gateway, GatewayThread
from tests import harness
from tests.models import make_onnx_mlp, make_onnx_string_identity, mlp_reference

X = np.arange(16, dtype=np.float32).reshape(2, 8) / 10


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    """Two versions of an MLP (FP32 [N, 8] -> [N, 2]) and a string identity model."""
    env = harness.make_env(tmp_path_factory.mktemp("oip"))
    harness.seal_model(env, "mlp", 1, make_onnx_mlp(8, (8,), 2, seed=1))
    harness.seal_model(env, "mlp", 2, make_onnx_mlp(8, (8,), 2, seed=2))
    harness.seal_model(env, "text", 1, make_onnx_string_identity())
    return env.with_config(server={"metrics_address": ""})


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Gateway]:
    """The running gateway, once every model serves."""
    with GatewayThread(env.config) as gw:
        assert gw.manager.default_version("mlp") == 2 and gw.manager.default_version("text") == 1
        yield gw


@pytest.fixture
def client(env: harness.Env, gateway: Gateway) -> Iterator[httpclient.InferenceServerClient]:
    """A stock tritonclient.http client over mutual TLS."""
    options = {
        "ca_certs": str(env.certs / "ca.pem"),
        "certfile": str(env.certs / "client.pem"),
        "keyfile": str(env.certs / "client.key"),
    }
    c = httpclient.InferenceServerClient(f"127.0.0.1:{gateway.rest_port}", ssl=True, ssl_options=options)
    yield c
    c.close()


def auth(env: harness.Env, scopes: str = "infer:mlp infer:text") -> dict[str, str]:
    """A fresh header dict (tritonclient.http writes its own headers into the dict it is given)."""
    return {"authorization": f"Bearer {harness.token(env, scopes)}"}


def call(
    env: harness.Env, gw: Gateway, method: str, path: str, token: str | None = None, **kwargs: Any
) -> requests.Response:
    """One request with `requests` over mutual TLS."""
    headers = dict(kwargs.pop("headers", {}))
    if token:
        headers["authorization"] = f"Bearer {token}"
    return requests.request(
        method,
        f"https://127.0.0.1:{gw.rest_port}{path}",
        headers=headers,
        verify=str(env.certs / "ca.pem"),
        cert=(str(env.certs / "client.pem"), str(env.certs / "client.key")),
        timeout=30,
        **kwargs,
    )


def infer(client: httpclient.InferenceServerClient, env: harness.Env, binary: bool) -> np.ndarray:
    """x through `mlp` with binary or JSON tensors both ways."""
    inp = httpclient.InferInput("input", list(X.shape), "FP32")
    inp.set_data_from_numpy(X, binary_data=binary)
    out = [httpclient.InferRequestedOutput("output", binary_data=binary)]
    result = client.infer("mlp", [inp], outputs=out, headers=auth(env), request_id="r-1")
    assert result.get_response()["model_version"] == "2" and result.get_response()["id"] == "r-1"
    return np.asarray(result.as_numpy("output"))


def test_health_is_public_and_the_rest_needs_a_token(env: harness.Env, gateway: Gateway, client: Any) -> None:
    """Live and ready answer a client certificate without a token (as gRPC ServerLive/Ready); /v2 does not."""
    assert client.is_server_live() and client.is_server_ready()
    assert call(env, gateway, "GET", "/v2/health/ready").json() == {"ready": True}
    assert call(env, gateway, "GET", "/v2").status_code == 401
    meta = client.get_server_metadata(headers=auth(env))
    assert meta["name"] == "sealgate" and "binary_tensor_data" in meta["extensions"]


def test_infer_binary_json_and_grpc_agree(env: harness.Env, gateway: Gateway, client: Any) -> None:
    """tritonclient.http with binary tensors (its default), with JSON tensors, and tritonclient.grpc: one answer."""
    expected = mlp_reference(8, (8,), 2, seed=2)(X)
    binary, plain = infer(client, env, True), infer(client, env, False)
    inp = grpcclient.InferInput("input", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)
    via_grpc = harness.triton(env, gateway.grpc_port).infer("mlp", [inp], headers=auth(env)).as_numpy("output")
    np.testing.assert_allclose(binary, expected, rtol=1e-5, atol=1e-5)
    assert np.array_equal(binary, plain) and np.array_equal(binary, via_grpc)
    default = httpclient.InferInput("input", list(X.shape), "FP32")
    default.set_data_from_numpy(X)  # no outputs named: the whole answer comes back binary
    assert np.array_equal(client.infer("mlp", [default], headers=auth(env)).as_numpy("output"), binary)


def test_bytes_tensors_both_ways(env: harness.Env, gateway: Gateway, client: Any) -> None:
    """BYTES in Triton's length-prefixed binary framing and as JSON strings."""
    words = np.array([b"sealed", b"", "é".encode()], dtype=object)
    for binary in (True, False):
        inp = httpclient.InferInput("text", [3], "BYTES")
        inp.set_data_from_numpy(words, binary_data=binary)
        out = [httpclient.InferRequestedOutput("text_out", binary_data=binary)]
        got = client.infer("text", [inp], outputs=out, headers=auth(env)).as_numpy("text_out")
        assert [bytes(w) if isinstance(w, bytes) else str(w).encode() for w in got] == list(words)


def test_metadata_ready_config_and_stats(env: harness.Env, gateway: Gateway, client: Any) -> None:
    """Model metadata, readiness, Triton's config and statistics counted by the data plane."""
    meta = client.get_model_metadata("mlp", headers=auth(env))
    assert meta["versions"] == ["2"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}]
    assert client.is_model_ready("mlp", headers=auth(env))
    assert not client.is_model_ready("mlp", "1", headers=auth(env))  # stored, not serving
    assert call(env, gateway, "GET", "/v2/models/mlp/versions/1/ready", harness.token(env)).status_code == 503
    config = client.get_model_config("mlp", headers=auth(env))
    assert config["max_batch_size"] == 0 and config["input"][0] == {
        "name": "input",
        "data_type": "TYPE_FP32",
        "dims": [-1, 8],
    }
    before = client.get_inference_statistics("mlp", headers=auth(env))["model_stats"][0]
    infer(client, env, True)
    after = client.get_inference_statistics("mlp", "2", headers=auth(env))["model_stats"][0]
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert after["inference_stats"]["compute_infer"]["ns"] > before["inference_stats"]["compute_infer"]["ns"]
    every = client.get_inference_statistics(headers=auth(env, "infer:text"))["model_stats"]
    assert [s["name"] for s in every] == ["text"]  # only the models the token may infer on


def test_repository_index_load_and_unload(env: harness.Env, gateway: Gateway, client: Any) -> None:
    """Unload pins the previous version as the default (an audited rollback); load brings v2 back."""
    index = client.get_model_repository_index(headers=auth(env, "infer:mlp"))
    assert {(m["name"], m["version"], m["state"]) for m in index} == {
        ("mlp", "1", "AVAILABLE"),
        ("mlp", "2", "SERVING"),
    }
    for refused, code in ((auth(env), "403"), ({}, "401")):
        with pytest.raises(InferenceServerException) as err:
            client.unload_model("mlp", headers=refused)
        assert err.value.status() == code
    assert gateway.manager.default_version("mlp") == 2
    seen = len(env.audit_lines(gateway))
    client.unload_model("mlp", headers=auth(env, "admin"))
    assert gateway.manager.default_version("mlp") == 1 and gateway.manager.pinned("mlp") == 1
    assert client.get_model_metadata("mlp", headers=auth(env))["versions"] == ["1"]
    client.load_model("mlp", headers=auth(env, "admin"))
    assert gateway.manager.default_version("mlp") == 2
    client.load_model("mlp", headers=auth(env, "admin"))  # already serving: nothing changes
    records = [r for r in env.audit_lines(gateway)[seen:] if r["method"].startswith("rest:Repository")]
    assert [(r["method"], r["status"], r["model"]) for r in records] == [
        ("rest:RepositoryModelUnload", "OK", "mlp"),
        ("rest:RepositoryModelLoad", "OK", "mlp"),
        ("rest:RepositoryModelLoad", "OK", "mlp"),
    ]
    for version in (1, 2):  # a version chosen in the load's config, as over gRPC
        config = json.dumps({"version_policy": {"specific": {"versions": [version]}}})
        client.load_model("mlp", headers=auth(env, "admin"), config=config)
        assert gateway.manager.default_version("mlp") == version
    with pytest.raises(InferenceServerException, match="serves as it was signed") as err:
        client.load_model("mlp", headers=auth(env, "admin"), config=json.dumps({"backend": "python"}))
    assert err.value.status() == "400"
    files = {"parameters": {"file:1/model.onnx": "AAAA"}}
    refused = call(env, gateway, "POST", "/v2/repository/models/mlp/load", harness.token(env, "admin"), json=files)
    assert refused.status_code == 400 and "not accepted" in refused.json()["error"]
    text = call(env, gateway, "POST", "/v2/repository/models/text/unload", harness.token(env, "admin"))
    assert text.status_code == 412 and "no earlier verified version" in text.json()["error"]
    assert gateway.manager.default_version("text") == 1


ROUTES = [
    ("GET", "/v2/models/{m}"),
    ("GET", "/v2/models/{m}/ready"),
    ("GET", "/v2/models/{m}/config"),
    ("GET", "/v2/models/{m}/stats"),
    ("POST", "/v2/models/{m}/infer"),
    ("POST", "/v2/repository/models/{m}/load"),
    ("POST", "/v2/repository/models/{m}/unload"),
]
GOOD_BODY = {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}]}


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_refusals_of_each_model_route(env: harness.Env, gateway: Gateway, method: str, path: str) -> None:
    """No token 401, a token for another model 403, an unknown model 404; each a JSON error."""
    admin = "repository" in path
    body = {"json": GOOD_BODY} if path.endswith("infer") else {}
    assert call(env, gateway, method, path.format(m="mlp"), **body).status_code == 401
    wrong = harness.token(env, "infer:text" if not admin else "infer:mlp release:mlp")
    denied = call(env, gateway, method, path.format(m="mlp"), wrong, **body)
    assert denied.status_code == 403 and "lacks scope" in denied.json()["error"]
    missing = call(env, gateway, method, path.format(m="nope"), harness.token(env, "admin"), **body)
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}, "shape"),
        ({"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [1] * 7}]}, "7 values"),
        ({"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP99", "data": [1] * 8}]}, "datatype"),
        ({"inputs": [{"name": "x" * 500, "shape": [1], "datatype": "FP32", "data": [1]}]}, "x" * 100),
        ({"inputs": [], "extra": 1}, "unknown field"),
        ({"inputs": [{"name": "input", "shape": [1 << 30, 1 << 30], "datatype": "FP32", "data": []}]}, "elements"),
    ],
)
def test_bad_json_inference_is_400(env: harness.Env, gateway: Gateway, body: dict[str, Any], needle: str) -> None:
    """Wrong shape, count, datatype, unknown field, absurd shape: 400 with a clipped echo, never 500."""
    r = call(env, gateway, "POST", "/v2/models/mlp/infer", harness.token(env), json=body)
    assert r.status_code == 400 and needle in r.json()["error"], r.text
    assert len(r.text) < 700


def _binary(header: dict[str, Any], data: bytes, length: int | None = None) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + data, {"inference-header-content-length": str(len(head) if length is None else length)}


def _tensor(size: int, shape: list[int], datatype: str = "FP32") -> dict[str, Any]:
    return {
        "inputs": [{"name": "input", "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": size}}]
    }


@pytest.mark.parametrize(
    ("body", "length", "needle"),
    [
        (_tensor(32, [1, 8]), None, "runs past"),  # 16 bytes sent for a 32-byte tensor
        (_tensor(16, [1, 8]), None, "needs 32"),  # the declared size disagrees with the shape
        (_tensor(8, [1, 8]), None, "needs 32"),  # too few for the shape, though all arrived
        (_tensor(8, [1, 2]), None, "bytes of binary data follow"),  # bytes left over
        (_tensor(16, [1 << 20, 1 << 20]), None, "elements"),  # a huge shape in a tiny body
        (_tensor(16, [1, 8]), 10**6, "larger than the body"),
        (_tensor(16, [1, 8]), -1, "not a byte count"),
    ],
)
def test_binary_lengths_are_checked_against_the_bytes(
    env: harness.Env, gateway: Gateway, body: dict[str, Any], length: int | None, needle: str
) -> None:
    """Each size of the binary extension is checked against what arrived: 400, nothing allocated."""
    data, headers = _binary(body, np.zeros(4, np.float32).tobytes(), length)
    r = call(env, gateway, "POST", "/v2/models/mlp/infer", harness.token(env), data=data, headers=headers)
    assert r.status_code == 400 and needle in r.json()["error"], r.text


def test_binary_bytes_framing_and_encoding(env: harness.Env, gateway: Gateway) -> None:
    """A BYTES element running past its data is 400; a compressed body is 415 (never decompressed)."""
    framed = struct.pack("<I", 50) + b"short"
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]}
    data, headers = _binary(body, framed)
    r = call(
        env, gateway, "POST", "/v2/models/text/infer", harness.token(env, "infer:text"), data=data, headers=headers
    )
    assert r.status_code == 400 and "runs past" in r.json()["error"]
    gz = call(
        env,
        gateway,
        "POST",
        "/v2/models/mlp/infer",
        harness.token(env),
        json=GOOD_BODY,
        headers={"content-encoding": "gzip"},
    )
    assert gz.status_code == 415
