"""Unbounded metrics labels and refusal floods (issue 10, findings 5 and 11): a client-chosen model name
becomes a label only when the model exists; refused calls are all counted, their audit lines rate-bounded
per (status, peer) so a flood cannot fill the disk, and the lines it drops are counted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from gateway.server.app import GatewayThread
from gateway.server.metrics import OTHER
from tests import harness
from tests.security import _grpc

CALLS = 400
NAME_CHARS = 50_000


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    return _grpc.served_env(tmp_path_factory.mktemp("labels"), max_message_bytes=1 << 20)


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Any]:
    with GatewayThread(env.config) as gw:
        _grpc.wait_serving(gw)
        yield gw


def _name(i: int) -> str:
    return f"zz{i:05d}" + "x" * (NAME_CHARS - 7)


def _requests_total(text: str, status: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("sealgate_requests_total{") and f'status="{status}"' in line
    )


def test_token_less_calls_with_huge_names_leave_no_label(env: harness.Env, gateway: Any) -> None:
    before_rss, dropped = _grpc.rss_bytes(), _grpc.suppressed(gateway)
    before_lines = len(_grpc.records(env, gateway, "grpc:ModelInfer", "UNAUTHENTICATED"))
    with _grpc.channel(env, gateway) as chan:
        stub = _grpc.stub(chan)
        for i in range(CALLS):
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(_grpc.pb.ModelInferRequest(model_name=_name(i)), timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    text = _grpc.scrape(gateway)
    assert len(text) < 64 << 10, f"one scrape is {len(text)} bytes"
    assert "zz00000" not in text and "xxxxxxxx" not in text
    assert 'model="",protocol="grpc",status="UNAUTHENTICATED"' in text  # refused before the name was read
    assert _requests_total(text, "UNAUTHENTICATED") >= CALLS, "every refusal is counted"
    grown = _grpc.rss_bytes() - before_rss
    assert grown < 10 << 20, f"RSS grew by {grown >> 20} MiB"
    lines = _grpc.records(env, gateway, "grpc:ModelInfer", "UNAUTHENTICATED")[before_lines:]
    assert len(lines) + _grpc.suppressed(gateway) - dropped == CALLS, "each refusal is audited or counted"
    assert len(lines) < CALLS, "the audit lines of a flood are rate-bounded"
    assert all(r.get("model") is None for r in lines)  # refused before the message: no name read at all
    _grpc.assert_serves(env, gateway)


def test_authenticated_calls_with_unknown_names_fold_into_one_label(env: harness.Env, gateway: Any) -> None:
    md = _grpc.auth(env)
    with _grpc.channel(env, gateway) as chan:
        stub = _grpc.stub(chan)
        for name in ("nope", "also-nope", _name(7)):
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(_grpc.raw_request(name, "FP32", [1, 8], b"\0" * 32), metadata=md, timeout=30)
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError):
                stub.ModelMetadata(_grpc.pb.ModelMetadataRequest(name=name, version="1"), metadata=md, timeout=30)
    _grpc.assert_serves(env, gateway)
    text = _grpc.scrape(gateway)
    assert "nope" not in text and "xxxxxxxx" not in text
    assert f'model="{OTHER}",protocol="grpc",status="NOT_FOUND",version=""' in text
    assert 'model="m",protocol="grpc",status="OK",version="1"' in text, "a model that exists keeps its label"
