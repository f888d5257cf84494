"""`[server] event_loop`: the gateway serves gRPC and REST over mutual TLS on uvloop and on asyncio's loop.

uvloop loses the bytes a stream read before a TLS upgrade (MagicStack/uvloop#707): the REST listener's
first version upgraded with StreamWriter.start_tls and every REST handshake then timed out under uvloop.
The REST call below is the regression test; the refusal of a handshake without a client certificate
checks that a failed handshake is still audited on both loops.
"""

from __future__ import annotations

import socket
import ssl
import time

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient

from gateway.errors import ConfigError
from gateway.server import loops
from gateway.server.app import GatewayThread
from tests import harness
from tests.models import make_onnx_mlp

X = np.arange(8, dtype=np.float32).reshape(1, 8)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    """One small MLP, sealed."""
    env = harness.make_env(tmp_path_factory.mktemp("loops"))
    harness.seal_model(env, "mlp", 1, make_onnx_mlp(8, (8,), 2, seed=1))
    return env


def test_unknown_event_loop_is_refused(env: harness.Env) -> None:
    with pytest.raises(ConfigError, match="event_loop"):
        env.with_config(server={"event_loop": "trio"})
    with pytest.raises(ConfigError, match="event_loop"):
        loops.loop_factory("trio")


@pytest.mark.parametrize("kind", ["uvloop", "asyncio"])
def test_serves_grpc_and_rest_on_each_loop(env: harness.Env, kind: str) -> None:
    cfg = env.with_config(server={"event_loop": kind, "metrics_address": ""})
    token = harness.token(env, "infer:mlp")
    thread = GatewayThread(cfg.config)
    with thread as gw:
        assert loops.loop_name(thread.loop) == kind
        client = harness.triton(env, gw.grpc_port)
        inp = grpcclient.InferInput("input", [1, 8], "FP32")
        inp.set_data_from_numpy(X)
        grpc_out = client.infer("mlp", [inp], headers={"authorization": f"Bearer {token}"}).as_numpy("output")
        client.close()
        r = requests.post(
            f"https://127.0.0.1:{gw.rest_port}/v2/models/mlp/infer",
            json={"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": X.ravel().tolist()}]},
            headers={"authorization": f"Bearer {token}"},
            cert=(str(env.certs / "client.pem"), str(env.certs / "client.key")),
            verify=str(env.certs / "ca.pem"),
            timeout=10,
        )
        assert r.status_code == 200, r.text
        rest_out = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(grpc_out.shape)
        np.testing.assert_array_equal(rest_out, grpc_out)

        # a handshake without a client certificate fails, is audited, and the listener goes on serving
        ctx = ssl.create_default_context(cafile=str(env.certs / "ca.pem"))
        ctx.check_hostname = False
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with socket.create_connection(("127.0.0.1", gw.rest_port), timeout=5) as raw:
                with ctx.wrap_socket(raw) as tls:
                    tls.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
                    if not tls.recv(1):
                        raise ConnectionError("closed")
        deadline = time.monotonic() + 5
        while not any(line.get("method") == "rest:tls-handshake" for line in env.audit_lines(gw)):
            assert time.monotonic() < deadline, "the refused handshake left no audit line"
            time.sleep(0.05)
        again = requests.get(
            f"https://127.0.0.1:{gw.rest_port}/v2/health/live",
            cert=(str(env.certs / "client.pem"), str(env.certs / "client.key")),
            verify=str(env.certs / "ca.pem"),
            timeout=10,
        )
        assert again.status_code == 200
