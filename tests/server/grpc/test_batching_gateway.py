"""Dynamic batching through the real gateway: concurrent tritonclient calls of mixed shapes get exactly the
bytes an unbatched run gives, batches form, /metrics shows them, and a bad request fails alone."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from gateway.backends import BackendConfig, LoadedModel, load_model
from gateway.backends.isolated.process import IsolatedModel
from gateway.server.app import GatewayThread
from gateway.serving.batching import BatchingModel
from tests import harness
from tests.models import ONNX_OPSET, make_onnx_mlp

IN_DIM = 32
CALLS = 96
CLIENTS = 12


def _wide_files() -> dict[str, bytes]:
    """x FP32 [-1, -1] -> y = relu(x) * 3 and s = x - 3: the second dimension varies per request.

    Element-wise on purpose: ONNX Runtime's ReduceSum may sum a row in another order when the batch grows
    (1 ulp apart, measured), so a reduction across a row is not bit-stable under batching; GEMMs were.
    """
    three = helper.make_tensor("three", TensorProto.FLOAT, [], [3.0])
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Mul", ["r", "three"], ["y"]),
            helper.make_node("Sub", ["x", "three"], ["s"]),
        ],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "k"])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "k"]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, ["n", "k"]),
        ],
        [three],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    return {"model.onnx": model.SerializeToString()}


MODELS = {"mlp": make_onnx_mlp(IN_DIM, (64, 64), 2, seed=3), "wide": _wide_files()}


@pytest.fixture(scope="module", params=["none", "process"])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    """The batched gateway with models in process and in isolated workers (batches awaited on the loop)."""
    env = harness.make_env(tmp_path_factory.mktemp("batch"))
    for name, files in MODELS.items():
        harness.seal_model(env, name, 1, files)
    return env.with_config(
        backend={"intra_op_threads": 1, "isolation": request.param},
        batching={"enabled": True, "models": ["mlp", "wide"], "max_batch_size": 16, "max_queue_delay_us": 3000},
    )


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Any]:
    with GatewayThread(env.config) as gw:
        deadline = time.time() + 60
        while time.time() < deadline and not all(gw.dataplane.model_ready(n) for n in MODELS):
            time.sleep(0.1)
        yield gw


@pytest.fixture(scope="module")
def reference() -> Iterator[dict[str, LoadedModel]]:
    """The same models loaded as the gateway loads them, called one request at a time (no batching)."""
    models = {name: load_model(files, BackendConfig(intra_op_threads=1)) for name, files in MODELS.items()}
    yield models
    for model in models.values():
        model.close()


def _request(i: int) -> tuple[str, str, np.ndarray]:
    """The i-th request of the mixed load: varied batch sizes; for `wide`, two second-dimension sizes."""
    rng = np.random.default_rng(i)
    if i % 3 == 0:
        return "wide", "x", rng.standard_normal((1 + i % 4, 3 if i % 2 else 5)).astype(np.float32)
    return "mlp", "input", rng.standard_normal((1 + i % 5, IN_DIM)).astype(np.float32)


def test_mixed_shape_load_is_byte_identical_to_unbatched_calls(
    env: harness.Env, gateway: Any, reference: dict[str, LoadedModel]
) -> None:
    assert all(isinstance(gateway.dataplane.model(n).model, BatchingModel) for n in MODELS)
    isolated = env.config.backend.isolation == "process"
    assert all(isinstance(gateway.dataplane.model(n).model.inner, IsolatedModel) == isolated for n in MODELS)
    if isolated:  # lone calls go at once (`idle_wait = false`): no extra worker spin through a queue delay
        assert all(gateway.dataplane.model(n).model.inner._linger == 0 for n in MODELS)
    headers = {"authorization": "Bearer " + harness.token(env, "infer:*")}
    clients = [harness.triton(env, gateway.grpc_port) for _ in range(CLIENTS)]

    def call(i: int) -> tuple[int, dict[str, np.ndarray]]:
        model, name, x = _request(i)
        inp = grpcclient.InferInput(name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = clients[i % CLIENTS].infer(model, [inp], headers=headers)
        outs = [o.name for o in MODELS_OUT[model]]
        return i, {o: result.as_numpy(o) for o in outs}

    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(call, range(CALLS)))
    finally:
        for client in clients:
            client.close()
    for i, outputs in answers:
        model, name, x = _request(i)
        expected = reference[model].infer({name: x})
        for out, value in outputs.items():
            assert value.tobytes() == expected[out].tobytes(), (i, model, out)
    sizes = {n: gateway.batching.stats.batch_sizes(n) for n in MODELS}
    batches = sum(sum(s.values()) for s in sizes.values())
    assert batches < CALLS  # concurrent requests were merged into batches
    body = urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=5).read().decode()
    counts = dict(re.findall(r'sealgate_batch_size_count\{model="(\w+)"\} ([0-9.e+]+)', body))
    assert set(counts) == set(MODELS) and sum(float(v) for v in counts.values()) == batches
    assert re.search(r'sealgate_batch_queue_seconds_count\{model="mlp"\} ([0-9.e+]+)', body)


MODELS_OUT = {name: load_model(files).outputs for name, files in MODELS.items()}


def test_a_bad_request_fails_alone_among_concurrent_good_ones(env: harness.Env, gateway: Any) -> None:
    headers = {"authorization": "Bearer " + harness.token(env, "infer:mlp")}

    def call(i: int) -> str:
        x = np.ones((1, IN_DIM if i else IN_DIM + 1), dtype=np.float32)
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        with harness.triton(env, gateway.grpc_port) as client:
            try:
                client.infer("mlp", [inp], headers=headers)
            except InferenceServerException as exc:
                return str(exc.status())
        return "OK"

    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(call, range(6)))
    assert codes[0] == "StatusCode.INVALID_ARGUMENT"
    assert codes[1:] == ["OK"] * 5
