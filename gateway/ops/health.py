"""`sealgate health`: is this gateway serving? One mTLS round trip, an exit code and one line.

Made for Kubernetes exec probes and load-balancer external checks: it speaks gRPC Health (`grpc.health.v1`,
service "", public: no token) over mutual TLS with a client certificate, so it works on a port that accepts
nothing else; with a model it also asks the Open Inference Protocol's ModelReady (needs a token with
`infer:<model>`). The whole check has one deadline, so a hung or black-holed gateway fails fast.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import clip

EXIT_OK = 0
EXIT_NOT_READY = 1  # the gateway answered: not serving, or the model is not ready
EXIT_UNREACHABLE = 3  # no answer: refused, unreachable, TLS failure, timeout, or the call was refused


@dataclass(frozen=True)
class HealthResult:
    """The outcome of one check: a status word, why, and how long it took."""

    address: str
    status: str  # SERVING, NOT_SERVING, NOT_READY, UNREACHABLE, TLS_FAILURE, TIMEOUT, REFUSED
    detail: str
    latency_ms: float
    model: str = ""

    @property
    def ok(self) -> bool:
        """Whether the gateway (and the model, when one was named) is ready."""
        return self.status == "SERVING"

    @property
    def exit_code(self) -> int:
        """0 when ready, 1 when the gateway answered "not ready", 3 when it could not be asked."""
        if self.ok:
            return EXIT_OK
        return EXIT_NOT_READY if self.status in ("NOT_SERVING", "NOT_READY") else EXIT_UNREACHABLE

    def line(self) -> str:
        """The one line printed: status, address, the model, the detail and the time taken."""
        what = f"{self.status} {self.address}"
        if self.model:
            what += f" model {self.model}"
        return f"{what}: {self.detail} ({self.latency_ms:.0f} ms)"

    def to_json(self) -> dict[str, Any]:
        """The result as one JSON object (`sealgate health --json`)."""
        return {
            "ok": self.ok,
            "status": self.status,
            "address": self.address,
            "model": self.model or None,
            "detail": self.detail,
            "latency_ms": round(self.latency_ms, 1),
        }


def check(
    address: str,
    ca: Path,
    cert: Path,
    key: Path,
    *,
    timeout_s: float = 2.0,
    model: str = "",
    token: str = "",
    server_name: str = "",
) -> HealthResult:
    """Ask the gateway at `address` over mTLS whether it serves (and whether `model` is ready), within `timeout_s`."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from gateway.auth.tls import channel_credentials
    from gateway.protos.inference import grpc_service_pb2 as oip
    from gateway.protos.inference import grpc_service_pb2_grpc as oip_grpc

    start = time.monotonic()
    deadline = start + timeout_s

    def result(status: str, detail: str) -> HealthResult:
        return HealthResult(address, status, detail, (time.monotonic() - start) * 1000, model)

    creds = channel_credentials(ca, cert, key)
    options: list[tuple[str, Any]] = [("grpc.enable_retries", 0)]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    with grpc.secure_channel(address, creds, options=options) as channel:
        try:
            health = health_pb2_grpc.HealthStub(channel)
            answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
            if answer.status != health_pb2.HealthCheckResponse.SERVING:
                name = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
                return result("NOT_SERVING", f"the gateway answers but is not ready ({name})")
            if not model:
                return result("SERVING", "the gateway serves")
            stub = oip_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]  # generated
            ready = stub.ModelReady(
                oip.ModelReadyRequest(name=model),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=max(0.05, deadline - time.monotonic()),
            )
        except grpc.RpcError as err:
            return result(*_classify(err))
    if not ready.ready:
        return result("NOT_READY", "the gateway serves, the model has no ready version")
    return result("SERVING", "the gateway serves and the model is ready")


def _classify(err: Any) -> tuple[str, str]:
    """A failed call as (status, one-line detail): TLS failure, timeout, unreachable, or the gateway's refusal."""
    import grpc

    code, details = err.code(), " ".join(str(err.details() or "").split())
    lowered = details.lower()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "TIMEOUT", "no answer before the deadline"
    if code == grpc.StatusCode.UNAVAILABLE:
        if any(word in lowered for word in ("handshake", "ssl", "tls", "certificate")):
            return "TLS_FAILURE", f"the TLS handshake failed: {clip(details, 200)}"
        return "UNREACHABLE", f"cannot connect: {clip(details, 200)}"
    if code == grpc.StatusCode.NOT_FOUND:
        return "NOT_READY", f"{code.name}: {clip(details, 200)}"
    return "REFUSED", f"{code.name}: {clip(details, 200)}"
