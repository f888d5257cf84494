"""Streams before authentication (issue 10, findings 4 and 11): a ModelStreamInfer stream is authenticated on
its metadata before its first message; a stream with no token, a bad token or a revoked certificate is
refused at once (UNAUTHENTICATED, audited) and holds no slot, so it cannot starve legitimate callers;
authenticated streams count against a per-certificate share as well as the total."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from gateway.auth import pki
from gateway.protos.inference import grpc_service_pb2 as pb
from gateway.server.app import GatewayThread
from tests import harness
from tests.security import _grpc

TOTAL = 16
PER_PEER = 4
FLOOD = 64  # four times the total: before the fix, these idle streams took every slot


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    env = _grpc.served_env(
        tmp_path_factory.mktemp("streams"), max_concurrent_requests=TOTAL, max_concurrent_per_peer=PER_PEER
    )
    pki.add_client(env.certs, "revoked")
    return env.with_config(tls={"crl": str(pki.revoke(env.certs, env.certs / "client-revoked.pem"))})


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Any]:
    with GatewayThread(env.config) as gw:
        _grpc.wait_serving(gw)
        yield gw


def _idle(stop: threading.Event) -> Iterator[pb.ModelInferRequest]:
    """A request stream that never sends a message until `stop` (an idle stream)."""
    stop.wait(60)
    yield from ()


class _Feed:
    """A request stream fed from a queue; None ends it."""

    def __init__(self) -> None:
        self.queue: queue.Queue[pb.ModelInferRequest | None] = queue.Queue()

    def __iter__(self) -> Iterator[pb.ModelInferRequest]:
        while (item := self.queue.get()) is not None:
            yield item


def _open_idle(stub: Any, count: int, stop: threading.Event, metadata: Any = ()) -> list[Any]:
    return [stub.ModelStreamInfer(_idle(stop), metadata=metadata, timeout=20) for _ in range(count)]


@pytest.mark.parametrize(
    ("client", "metadata", "reason"),
    [
        ("client", (), "missing bearer token"),
        ("client", (("authorization", "Bearer not.a.token"),), ""),
        ("revoked", None, "revoked"),  # a valid token, from a revoked certificate
    ],
    ids=["no-token", "bad-token", "revoked-cert"],
)
def test_unauthenticated_streams_are_refused_at_once_and_starve_no_one(
    env: harness.Env, gateway: Any, client: str, metadata: Any, reason: str
) -> None:
    md = _grpc.auth(env) if metadata is None else metadata
    before = len(_grpc.records(env, gateway, "grpc:ModelStreamInfer", "UNAUTHENTICATED"))
    dropped = _grpc.suppressed(gateway)
    stop = threading.Event()
    started = time.perf_counter()
    try:
        with _grpc.channel(env, gateway, client) as chan:
            streams = _open_idle(_grpc.stub(chan), FLOOD, stop, md)
            codes = [s.code() for s in streams]  # blocks until each stream has ended
            elapsed = time.perf_counter() - started
            assert codes == [grpc.StatusCode.UNAUTHENTICATED] * FLOOD
            assert elapsed < 10, f"refusing {FLOOD} idle streams took {elapsed:.1f} s: they were not refused at once"
            assert gateway.grpc_slots.in_use == 0, "a refused stream holds no slot"
            # a legitimate caller is served while the attacker keeps its (refused) streams coming
            more = _open_idle(_grpc.stub(chan), FLOOD, stop, md)
            _grpc.assert_serves(env, gateway, "other")
            assert [s.code() for s in more] == [grpc.StatusCode.UNAUTHENTICATED] * FLOOD
    finally:
        stop.set()
    refused = _grpc.records(env, gateway, "grpc:ModelStreamInfer", "UNAUTHENTICATED")[before:]
    # every refused stream is audited, or counted once the per-peer refusal rate bound is reached
    assert len(refused) >= FLOOD and len(refused) + _grpc.suppressed(gateway) - dropped == 2 * FLOOD
    assert all(reason in r["reason"] for r in refused)
    metrics = gateway.metrics.render().decode()
    assert 'method="ModelStreamInfer",model="",protocol="grpc",status="UNAUTHENTICATED"' in metrics
    _grpc.assert_serves(env, gateway)


def test_one_peer_gets_its_share_of_streams_and_no_more(env: harness.Env, gateway: Any) -> None:
    md = _grpc.auth(env)
    feeds = [_Feed() for _ in range(PER_PEER)]
    before = len(_grpc.records(env, gateway, "grpc:ModelStreamInfer", "RESOURCE_EXHAUSTED"))
    with _grpc.channel(env, gateway, "client") as chan:
        stub = _grpc.stub(chan)
        streams = [stub.ModelStreamInfer(iter(feed), metadata=md, timeout=60) for feed in feeds]
        try:
            for feed, responses in zip(feeds, streams, strict=True):  # each stream is admitted and answers
                feed.queue.put(_grpc.good_request())
                reply = next(responses)
                assert not reply.error_message and reply.infer_response.model_name == _grpc.MODEL
            assert gateway.grpc_slots.in_use == PER_PEER
            stop = threading.Event()
            try:
                extra = stub.ModelStreamInfer(_idle(stop), metadata=md, timeout=20)
                assert extra.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "max_concurrent_per_peer" in (extra.details() or "")
                with pytest.raises(grpc.RpcError) as unary:
                    stub.ModelInfer(_grpc.good_request(), metadata=md, timeout=30)
                assert unary.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            finally:
                stop.set()
            _grpc.assert_serves(env, gateway, "other")  # another certificate is served meanwhile
        finally:
            for feed in feeds:
                feed.queue.put(None)
            for responses in streams:
                assert responses.code() == grpc.StatusCode.OK
    refused = _grpc.records(env, gateway, "grpc:ModelStreamInfer", "RESOURCE_EXHAUSTED")[before:]
    assert len(refused) == 1
    deadline = time.time() + 10
    while gateway.grpc_slots.in_use and time.time() < deadline:
        time.sleep(0.05)
    assert gateway.grpc_slots.in_use == 0, "ended streams give their slots back"
    _grpc.assert_serves(env, gateway, "client")


def test_each_request_of_a_stream_is_authorized_for_its_model(env: harness.Env, gateway: Any) -> None:
    md = _grpc.auth(env, "infer:elsewhere")  # authenticates the stream, grants nothing on `m`
    feed = _Feed()
    with _grpc.channel(env, gateway) as chan:
        responses = _grpc.stub(chan).ModelStreamInfer(iter(feed), metadata=md, timeout=30)
        feed.queue.put(_grpc.good_request())
        reply = next(responses)
        feed.queue.put(None)
        assert responses.code() == grpc.StatusCode.OK
    assert "lacks scope infer:m" in reply.error_message and not reply.HasField("infer_response")
    assert _grpc.records(env, gateway, "grpc:ModelStreamInfer", "PERMISSION_DENIED")
