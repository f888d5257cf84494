"""Beyond `[server] max_concurrent_requests`, calls are refused with RESOURCE_EXHAUSTED (gRPC) or 429 (REST),
the refusal is audited over REST, and the server takes calls again once a slot frees up."""

from __future__ import annotations

import queue
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from gateway.server.app import GatewayThread
from tests import harness
from tests.models import make_onnx_mlp


@pytest.fixture()
def env(tmp_path: Path) -> harness.Env:
    env = harness.make_env(tmp_path)
    harness.seal_model(env, "m", 1, make_onnx_mlp(8, (8,), 1, seed=1))
    return env.with_config(server={"max_concurrent_requests": 1})


def _input() -> Any:
    inp = grpcclient.InferInput("input", [1, 8], "FP32")
    inp.set_data_from_numpy(np.ones((1, 8), np.float32))
    return inp


def test_grpc_beyond_the_limit_is_resource_exhausted(env: harness.Env) -> None:
    headers = {"authorization": "Bearer " + harness.token(env)}
    with GatewayThread(env.config) as gw, harness.triton(env, gw.grpc_port) as holder:
        answers: queue.Queue[Any] = queue.Queue()
        holder.start_stream(lambda result, error: answers.put(error or result), headers=headers)
        holder.async_stream_infer("m", [_input()])
        assert answers.get(timeout=30).as_numpy("output").shape == (1, 1)  # the stream holds the one slot
        with harness.triton(env, gw.grpc_port) as other, pytest.raises(InferenceServerException) as e:
            other.infer("m", [_input()], headers=headers)
        assert "RESOURCE_EXHAUSTED" in str(e.value.status())
        holder.stop_stream()
        with harness.triton(env, gw.grpc_port) as other:
            assert other.infer("m", [_input()], headers=headers).as_numpy("output").shape == (1, 1)


def test_rest_beyond_the_limit_is_429_and_audited(env: harness.Env) -> None:
    token = harness.token(env)
    with GatewayThread(env.config) as gw:
        ctx = ssl.create_default_context(cafile=str(env.certs / "ca.pem"))
        ctx.load_cert_chain(env.certs / "client.pem", env.certs / "client.key")
        raw = ctx.wrap_socket(
            socket.create_connection(("127.0.0.1", gw.rest_port), timeout=30), server_hostname="localhost"
        )
        # a request whose body never comes: its handler holds the only slot while it waits
        raw.sendall(
            b"POST /v1/models/m:predict HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n"
            + f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        url = f"https://127.0.0.1:{gw.rest_port}/v1/models/m:predict"
        tls: dict[str, Any] = {
            "verify": str(env.certs / "ca.pem"),
            "cert": (str(env.certs / "client.pem"), str(env.certs / "client.key")),
            "headers": {"authorization": f"Bearer {token}"},
            "timeout": 30,
        }
        deadline = time.time() + 10
        while (busy := requests.post(url, json={"instances": [[1.0] * 8]}, **tls)).status_code != 429:
            assert time.time() < deadline, "the held request never took the slot"
            time.sleep(0.05)
        assert "busy" in busy.json()["error"]
        refused = [r for r in env.audit_lines(gw) if r["status"] == "RESOURCE_EXHAUSTED"]
        assert refused and all(r["method"] == "rest:Predict" for r in refused)
        raw.close()  # the held request ends; its slot frees
        deadline = time.time() + 10
        while (ok := requests.post(url, json={"instances": [[1.0] * 8]}, **tls)).status_code != 200:
            assert ok.status_code == 429 and time.time() < deadline, ok.text
            time.sleep(0.05)
        assert np.asarray(ok.json()["predictions"]).shape == (1, 1)
