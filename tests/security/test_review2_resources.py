"""Second review, resources before authentication (issue 10, class of finding 4): unary calls whose request
message never comes.

gRPC runs a unary handler (where the guard authenticates) only once the request message has arrived, and
gRPC's own `maximum_concurrent_rpcs` counts every call from its headers. A client with any certificate
the CA issued and no token opens that many unary calls and never sends their messages: every legitimate
call then gets RESOURCE_EXHAUSTED ("Concurrent RPC limit exceeded!") with no audit line; at the defaults
one connection with ~4100 such streams did it. Fixed by admitting unary calls on their metadata
(gateway/server/registration.py, guard.py): a call without a valid token is refused at its headers and holds
nothing; one with a token holds one of its peer's slots while its message is awaited, at most
`[server] message_timeout_s`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from gateway.protos.inference import grpc_service_pb2 as pb
from gateway.server.app import GatewayThread
from gateway.server.limits import BACKSTOP_FACTOR
from tests import harness
from tests.security import _grpc

MAX_CONCURRENT = 4  # the application's total and per-peer slots, so the old backstop was 16 calls


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    return _grpc.served_env(
        tmp_path_factory.mktemp("stalled"),
        max_concurrent_requests=MAX_CONCURRENT,
        max_concurrent_per_peer=MAX_CONCURRENT,
    )


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Any]:
    with GatewayThread(env.config) as gw:
        _grpc.wait_serving(gw)
        yield gw


def test_stalled_unary_calls_without_a_token_do_not_starve_others(env: harness.Env, gateway: Any) -> None:
    """More message-less unary calls (no token, or a bogus one) than any cap: legitimate calls still serve."""
    count = BACKSTOP_FACTOR * MAX_CONCURRENT * 2
    release = threading.Event()

    def never() -> Iterator[pb.ModelInferRequest]:
        release.wait(60)  # the request message never comes while the test runs
        yield from ()

    with _grpc.channel(env, gateway, "other") as chan:
        stalled_call = chan.stream_stream(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        bogus = (("authorization", "Bearer not.a.token"),)
        stalled = [stalled_call(never(), metadata=bogus if i % 2 else None, timeout=60) for i in range(count)]
        try:
            for _ in range(3):
                _grpc.assert_serves(env, gateway)
            seen = len(_grpc.records(env, gateway, "grpc:ModelInfer", "UNAUTHENTICATED"))
            with _grpc.channel(env, gateway) as other, pytest.raises(grpc.RpcError) as refused:
                _grpc.stub(other).ModelInfer(_grpc.good_request(), timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, "a complete token-less call is refused"
            assert len(_grpc.records(env, gateway, "grpc:ModelInfer", "UNAUTHENTICATED")) == seen + 1
        finally:
            release.set()
            for call in stalled:
                call.cancel()
    _grpc.assert_serves(env, gateway)


def test_a_stalled_call_is_refused_at_its_headers_or_bounded_and_timed_out(tmp_path: Any) -> None:
    """Admission on the metadata, before the message: without a valid token the stalled call is refused at
    once (UNAUTHENTICATED, audited, no model read); with one it holds one of its peer's slots (beyond them:
    RESOURCE_EXHAUSTED) and ends DEADLINE_EXCEEDED after `message_timeout_s`; a public call (Health.Check)
    waits in its own per-certificate bound; another client serves throughout."""
    env = _grpc.served_env(tmp_path, max_concurrent_requests=16, max_concurrent_per_peer=2, message_timeout_s=1.5)
    release = threading.Event()

    def never() -> Iterator[Any]:
        release.wait(30)
        yield from ()

    with GatewayThread(env.config) as gw, _grpc.channel(env, gw, "other") as chan:
        _grpc.wait_serving(gw)
        infer = chan.stream_stream(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        check = chan.stream_stream(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        seen = len(_grpc.records(env, gw, "grpc:ModelInfer", "UNAUTHENTICATED"))
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            next(infer(never(), timeout=20))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert time.monotonic() - began < 1.0, "refused at its headers, not after a timeout"
        records = _grpc.records(env, gw, "grpc:ModelInfer", "UNAUTHENTICATED")[seen:]
        assert len(records) == 1 and records[0].get("model") is None  # the message was never read

        token = _grpc.auth(env)
        held = [infer(never(), metadata=token, timeout=20) for _ in range(2)]  # the peer's two slots
        waiting = [check(never(), timeout=20) for _ in range(2)]  # public: its own bound of 2 per certificate
        time.sleep(0.3)
        for call, bound in (
            (infer(never(), metadata=token, timeout=20), "slots"),
            (check(never(), timeout=20), "wait"),
        ):
            with pytest.raises(grpc.RpcError) as over:
                next(call)
            assert over.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, bound
        _grpc.assert_serves(env, gw)  # another certificate: its own share
        for call in held + waiting:
            with pytest.raises(grpc.RpcError) as late:
                next(call)
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - began < 10
        release.set()
        _grpc.assert_serves(env, gw, "other")  # its slots came back
        assert len(_grpc.records(env, gw, "grpc:ModelInfer", "DEADLINE_EXCEEDED")) == 2
