"""Helpers for the gRPC data-path security tests: a served model, raw grpcio stubs per client certificate,
requests built field by field (what an attacker controls), and the process's resident memory."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from gateway.auth.tls import channel_credentials
from gateway.protos.inference import grpc_service_pb2 as pb
from gateway.protos.inference import grpc_service_pb2_grpc as pb_grpc
from tests import harness
from tests.models import make_onnx_mlp

MODEL = "m"
IN_DIM = 8


def served_env(root: Path, **server: Any) -> harness.Env:
    """A gRPC-only gateway world with one ONNX model `m` (FP32 [N, 8] -> [N, 1]); `server` overrides [server]."""
    env = harness.make_env(root)
    harness.seal_model(env, MODEL, 1, make_onnx_mlp(IN_DIM, (8,), 1, seed=1))
    # gRPC only: these tests attack gRPC; no metrics listener: metrics are read in-process, no port to collide on
    return env.with_config(server={"rest": False, "metrics_address": "", **server})


def wait_serving(gateway: Any, name: str = MODEL, timeout: float = 60.0) -> None:
    """Block until `name` serves (the manager loads in the background)."""
    deadline = time.time() + timeout
    while not any(s.name == name and s.state.name == "SERVING" for s in gateway.manager.status()):
        assert time.time() < deadline, f"{name} never served"
        time.sleep(0.05)


def cert_paths(env: harness.Env, client: str) -> tuple[Path, Path]:
    """(certificate, key) of a client: "client" is the default one, any other name one made by add_client."""
    stem = "client" if client == "client" else f"client-{client}"
    return env.certs / f"{stem}.pem", env.certs / f"{stem}.key"


def channel(env: harness.Env, gateway: Any, client: str = "client") -> grpc.Channel:
    """A raw mTLS channel to the gateway presenting `client`'s certificate."""
    cert, key = cert_paths(env, client)
    creds = channel_credentials(env.certs / "ca.pem", cert, key)
    return grpc.secure_channel(
        f"127.0.0.1:{gateway.grpc_port}", creds, options=[("grpc.max_send_message_length", 64 << 20)]
    )


def stub(chan: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    """The inference stub of a channel."""
    return pb_grpc.GRPCInferenceServiceStub(chan)


def auth(env: harness.Env, scopes: str = "infer:*") -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying a valid token."""
    return (("authorization", "Bearer " + harness.token(env, scopes)),)


def raw_request(
    model: str, datatype: str, shape: Sequence[int], raw: bytes, name: str = "input", version: str = ""
) -> pb.ModelInferRequest:
    """A ModelInferRequest with one raw input, every field as given (no client-side checks)."""
    req = pb.ModelInferRequest(model_name=model, model_version=version)
    tensor = req.inputs.add()
    tensor.name, tensor.datatype = name, datatype
    tensor.shape.extend(shape)
    req.raw_input_contents.append(raw)
    return req


def good_request(version: str = "") -> pb.ModelInferRequest:
    """A valid request for model `m`."""
    return raw_request(MODEL, "FP32", [1, IN_DIM], np.ones((1, IN_DIM), np.float32).tobytes(), version=version)


def assert_serves(env: harness.Env, gateway: Any, client: str = "client") -> None:
    """The gateway still answers a legitimate ModelInfer with the right output shape."""
    with channel(env, gateway, client) as chan:
        reply = stub(chan).ModelInfer(good_request(), metadata=auth(env), timeout=30)
    assert reply.model_name == MODEL and len(reply.raw_output_contents) == 1
    assert np.frombuffer(reply.raw_output_contents[0], np.float32).shape == (1,)


def rss_bytes() -> int:
    """This process's resident set size (the in-process gateway included)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def records(env: harness.Env, gateway: Any, method: str, status: str) -> list[dict[str, Any]]:
    """Audit records of one method (e.g. "grpc:ModelInfer") and status."""
    return [r for r in env.audit_lines(gateway) if r["method"] == method and r["status"] == status]


def suppressed(gateway: Any) -> float:
    """sealgate_audit_records_suppressed_total: refusal lines the audit rate bound dropped (after a flush)."""
    from prometheus_client.parser import text_string_to_metric_families

    gateway.recorder.flush()
    for family in text_string_to_metric_families(gateway.metrics.render().decode()):
        for sample in family.samples:
            if sample.name == "sealgate_audit_records_suppressed_total":
                return sample.value
    raise AssertionError("no sealgate_audit_records_suppressed_total")


def scrape(gateway: Any) -> str:
    """The gateway's metrics text, as a /metrics scrape returns it (after writing what the recorder holds)."""
    gateway.recorder.flush()
    return str(gateway.metrics.render().decode())
