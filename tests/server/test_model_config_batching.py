"""ModelConfig of batched models, Triton's way, through stock tritonclient.grpc and tritonclient.http.

A model the gateway batches reports its policy's max_batch_size, dims without the batch dimension and a
dynamic_batching block (preferred sizes, queue delay, queue bound); a model outside [batching] and one opted
out by its own [batching.per_model.NAME] table report max_batch_size 0 and full dims, as before. The models are
the fake "sum" backend (x FP32 [-1, 3] -> sum FP32 [-1, 1]); gateway, TLS, tokens and clients are real.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from gateway.server.app import Gateway, GatewayThread
from gateway.serving.batching import BatchingModel
from tests import fakes, harness

TUNED, GLOBAL, PLAIN, OPTOUT = "tuned", "global", "plain", "optout"
TUNED_POLICY = {"max_batch_size": 8, "preferred_batch_sizes": [4, 8], "max_queue_delay_us": 700, "max_queue_size": 64}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[harness.Env, Gateway]]:
    """`global` batched by the global policy, `tuned` by its own table, `optout` opted out, `plain` not listed."""
    with fakes.sum_backend():
        env = harness.make_env(tmp_path_factory.mktemp("config-batching"))
        for name in (TUNED, GLOBAL, PLAIN, OPTOUT):
            harness.seal_model(env, name, 1, fakes.sum_files(3))
        env = env.with_config(
            batching={
                "enabled": True,
                "models": [GLOBAL, OPTOUT],
                "max_batch_size": 16,
                "max_queue_delay_us": 250,
                "max_queue_size": 100,
                "per_model": {TUNED: TUNED_POLICY, OPTOUT: {"enabled": False}},
            }
        )
        with GatewayThread(env.config) as gw:
            deadline = time.time() + 60
            while time.time() < deadline and not all(
                gw.dataplane.model_ready(n) for n in (TUNED, GLOBAL, PLAIN, OPTOUT)
            ):
                time.sleep(0.05)
            yield env, gw


def _headers(env: harness.Env) -> dict[str, str]:
    return {"authorization": "Bearer " + harness.token(env, "infer:*")}


def _http(env: harness.Env, gw: Gateway) -> httpclient.InferenceServerClient:
    options = {
        "ca_certs": str(env.certs / "ca.pem"),
        "certfile": str(env.certs / "client.pem"),
        "keyfile": str(env.certs / "client.key"),
    }
    return httpclient.InferenceServerClient(f"127.0.0.1:{gw.rest_port}", ssl=True, ssl_options=options)


def test_batched_models_report_their_policy_over_grpc(served: tuple[harness.Env, Gateway]) -> None:
    """tritonclient.grpc: max_batch_size and dynamic_batching are the model's policy, dims lose the batch dim;
    `plain` (not listed) and `optout` (its table says enabled = false) stay max_batch_size 0, full dims."""
    env, gw = served
    assert isinstance(gw.dataplane.model(TUNED).model, BatchingModel)  # the gateway really batches these two
    assert isinstance(gw.dataplane.model(GLOBAL).model, BatchingModel)
    assert not isinstance(gw.dataplane.model(OPTOUT).model, BatchingModel)
    with harness.triton(env, gw.grpc_port) as client:
        got = {n: client.get_model_config(n, headers=_headers(env)).config for n in (TUNED, GLOBAL, PLAIN, OPTOUT)}
        as_json = client.get_model_config(TUNED, headers=_headers(env), as_json=True)["config"]
    tuned = got[TUNED]
    assert tuned.max_batch_size == 8 and tuned.HasField("dynamic_batching")
    assert tuned.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert list(tuned.dynamic_batching.preferred_batch_size) == [4, 8]
    assert tuned.dynamic_batching.max_queue_delay_microseconds == 700
    assert tuned.dynamic_batching.default_queue_policy.max_queue_size == 64
    assert [(t.name, list(t.dims)) for t in tuned.input] == [("x", [3])]
    assert [(t.name, list(t.dims)) for t in tuned.output] == [("sum", [1])]
    assert as_json["max_batch_size"] == 8 and as_json["dynamic_batching"]["max_queue_delay_microseconds"] == "700"
    glob = got[GLOBAL]
    assert glob.max_batch_size == 16 and list(glob.dynamic_batching.preferred_batch_size) == []
    assert (
        glob.dynamic_batching.max_queue_delay_microseconds,
        glob.dynamic_batching.default_queue_policy.max_queue_size,
    ) == (250, 100)
    assert [list(t.dims) for t in glob.input] == [[3]]
    for name in (PLAIN, OPTOUT):
        config = got[name]
        assert config.max_batch_size == 0 and not config.HasField("dynamic_batching"), name
        assert [list(t.dims) for t in config.input] == [[-1, 3]] and [list(t.dims) for t in config.output] == [[-1, 1]]


def test_batched_models_report_their_policy_over_rest(served: tuple[harness.Env, Gateway]) -> None:
    """tritonclient.http's get_model_config: the same figures in Triton's JSON; no dynamic_batching key for
    the unbatched models."""
    env, gw = served
    client = _http(env, gw)
    try:
        got = {n: client.get_model_config(n, headers=_headers(env)) for n in (TUNED, GLOBAL, PLAIN, OPTOUT)}
    finally:
        client.close()
    assert got[TUNED]["max_batch_size"] == 8
    assert got[TUNED]["dynamic_batching"] == {
        "preferred_batch_size": [4, 8],
        "max_queue_delay_microseconds": 700,
        "default_queue_policy": {"max_queue_size": 64},
    }
    assert got[TUNED]["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [3]}]
    assert got[TUNED]["output"] == [{"name": "sum", "data_type": "TYPE_FP32", "dims": [1]}]
    assert got[GLOBAL]["max_batch_size"] == 16 and got[GLOBAL]["dynamic_batching"]["preferred_batch_size"] == []
    for name in (PLAIN, OPTOUT):
        assert got[name]["max_batch_size"] == 0 and "dynamic_batching" not in got[name], name
        assert got[name]["input"][0]["dims"] == [-1, 3]


def test_a_client_sizing_requests_from_the_config_gets_its_rows_back(served: tuple[harness.Env, Gateway]) -> None:
    """What a Triton client does with the answer: a request of [max_batch_size, *dims] rows infers as such."""
    env, gw = served
    with harness.triton(env, gw.grpc_port) as client:
        config = client.get_model_config(TUNED, headers=_headers(env)).config
        shape = [config.max_batch_size, *config.input[0].dims]
        x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
        inp = grpcclient.InferInput(config.input[0].name, shape, "FP32")
        inp.set_data_from_numpy(x)
        result: Any = client.infer(TUNED, [inp], headers=_headers(env))
    np.testing.assert_array_equal(result.as_numpy("sum"), x.sum(axis=1, keepdims=True))
