"""Attack class: what answers without a token (issue 10, finding 7, gRPC side).

gRPC Health and reflection need no token but still a client certificate that verifies and is not revoked:
a revoked or CA:TRUE certificate is refused UNAUTHENTICATED, audited and counted. Health answers only for the
whole server, so a model name cannot be probed: Check("mlp") for a served model and Check("nope") get the same
NOT_FOUND. OIP ServerLive/ServerReady go through the same certificate check.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.auth import pki
from gateway.auth.chain import REFUSED
from gateway.protos.inference import grpc_service_pb2 as pb
from gateway.protos.inference import grpc_service_pb2_grpc as pb_grpc
from gateway.server.app import Gateway, GatewayThread
from tests import harness
from tests.models import make_onnx_mlp
from tests.security.mint import channel, mint, rpc_error

SERVING = health_pb2.HealthCheckResponse.SERVING
UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    """A dev PKI whose CRL revokes client-other, a CA:TRUE "client", and the served model mlp."""
    env = harness.make_env(tmp_path_factory.mktemp("public"))
    harness.seal_model(env, "mlp", 1, make_onnx_mlp(8, (8,), 1, seed=1))
    env = env.with_config(tls={"crl": str(pki.revoke(env.certs, env.certs / "client-other.pem"))})
    mint(env.certs, "ca-as-client", ca=True)
    return env


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Gateway]:
    """The gateway, once mlp is SERVING."""
    with GatewayThread(env.config) as gw:
        assert [(s.name, s.state.name) for s in gw.manager.status()] == [("mlp", "SERVING")]
        yield gw


def _check(env: harness.Env, gw: Gateway, service: str, client: str = "client") -> Any:
    """Health.Check(service) presenting certs/<client>.pem, without a token."""
    with channel(env.certs, gw.grpc_port, client) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=10)


def _first_watch(env: harness.Env, gw: Gateway, service: str, client: str = "client") -> Any:
    """The first message of Health.Watch(service), without a token."""
    with channel(env.certs, gw.grpc_port, client) as ch:
        stream = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=service), timeout=10)
        try:
            return next(stream)
        finally:
            stream.cancel()


def _list_services(env: harness.Env, gw: Gateway, client: str = "client") -> list[str]:
    """Reflection's list_services, without a token."""
    with channel(env.certs, gw.grpc_port, client) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    return [s.name for s in replies[0].list_services_response.service]


def _failures(gw: Gateway, reason: str) -> float:
    """sealgate_auth_failures_total for `reason`."""
    return gw.metrics.registry.get_sample_value("sealgate_auth_failures_total", {"reason": reason}) or 0.0


def test_health_reveals_no_model_name(env: harness.Env, gateway: Gateway) -> None:
    """A served model's name and an unknown one get the same answer from Check and Watch; "" is SERVING."""
    assert _check(env, gateway, "").status == SERVING
    served, unknown = (rpc_error(lambda s=s: _check(env, gateway, s)) for s in ("mlp", "nope"))
    assert served.code() == unknown.code() == grpc.StatusCode.NOT_FOUND
    assert served.details() == unknown.details()
    assert _first_watch(env, gateway, "mlp").status == _first_watch(env, gateway, "nope").status == UNKNOWN
    assert _first_watch(env, gateway, "").status == SERVING
    seen = env.audit_lines(gateway)
    assert {"grpc:Health.Check", "grpc:Health.Watch"} <= {r["method"] for r in seen}
    assert all(r["model"] in ("", None) for r in seen if r["method"].startswith("grpc:Health"))


@pytest.mark.parametrize(
    ("client", "reason", "message"),
    [("client-other", "revoked", "client certificate revoked"), ("ca-as-client", "certificate", REFUSED)],
    ids=["revoked", "ca-true"],
)
def test_health_and_reflection_refuse_a_bad_certificate(
    env: harness.Env, gateway: Gateway, client: str, reason: str, message: str
) -> None:
    """A revoked or CA:TRUE client certificate gets UNAUTHENTICATED from Health (Check, Watch) and reflection,
    each refusal audited and counted; the dev client is still answered."""
    before, seen = _failures(gateway, reason), len(env.audit_lines(gateway))
    calls = {
        "grpc:Health.Check": lambda: _check(env, gateway, "", client),
        "grpc:Health.Watch": lambda: _first_watch(env, gateway, "", client),
        "grpc:Reflection.Info": lambda: _list_services(env, gateway, client),
    }
    for method, call in calls.items():
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (method, error.code(), error.details())
        assert error.details() == message
    # a stream an earlier test closed may be recorded a moment later (OK, or CANCELLED when its channel closed
    # first): only the refusals under test count
    lines = [r for r in env.audit_lines(gateway)[seen:] if r["status"] == "UNAUTHENTICATED"]
    assert sorted(r["method"] for r in lines) == sorted(calls)
    assert all(r["status"] == "UNAUTHENTICATED" and r["reason"] == message and r["subject"] is None for r in lines)
    assert _failures(gateway, reason) == before + len(calls)
    assert _check(env, gateway, "").status == SERVING
    assert "grpc.health.v1.Health" in _list_services(env, gateway)


@pytest.mark.parametrize("method", ["ServerLive", "ServerReady"])
def test_server_live_and_ready_check_the_certificate(env: harness.Env, gateway: Gateway, method: str) -> None:
    """OIP ServerLive/ServerReady refuse a CA:TRUE certificate even with a valid admin token."""
    md = (("authorization", "Bearer " + harness.token(env, "admin")),)
    request = getattr(pb, f"{method}Request")()
    with channel(env.certs, gateway.grpc_port, "ca-as-client") as ch:
        error = rpc_error(
            lambda: getattr(pb_grpc.GRPCInferenceServiceStub(ch), method)(request, metadata=md, timeout=10)
        )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and error.details() == REFUSED
    with channel(env.certs, gateway.grpc_port, "client") as ch:
        reply = getattr(pb_grpc.GRPCInferenceServiceStub(ch), method)(request, metadata=md, timeout=10)
    assert (reply.live if method == "ServerLive" else reply.ready) is True


@pytest.mark.parametrize("method", ["ServerLive", "ServerReady"])
def test_server_live_and_ready_are_public_but_not_for_revoked_peers(
    env: harness.Env, gateway: Gateway, method: str
) -> None:
    """OIP ServerLive/ServerReady answer probes without a token, but a revoked certificate is refused and audited."""
    request = getattr(pb, f"{method}Request")()
    with channel(env.certs, gateway.grpc_port, "client") as ch:
        reply = getattr(pb_grpc.GRPCInferenceServiceStub(ch), method)(request, timeout=10)
    assert (reply.live if method == "ServerLive" else reply.ready) is True
    seen = len(env.audit_lines(gateway))
    with channel(env.certs, gateway.grpc_port, "client-other") as ch:
        error = rpc_error(lambda: getattr(pb_grpc.GRPCInferenceServiceStub(ch), method)(request, timeout=10))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    lines = env.audit_lines(gateway)[seen:]
    assert [(r["method"], r["status"]) for r in lines] == [(f"grpc:{method}", "UNAUTHENTICATED")]
