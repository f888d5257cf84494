"""Unbounded echoes (issue 10, finding 12): client strings in error messages and audit lines are clipped to
128 characters with control characters escaped, so a 100 KB model or tensor name cannot bloat a
grpc-message, forge a log line, or be held in memory by the audit's caches."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from gateway.errors import InvalidInput, clip
from gateway.server.app import GatewayThread
from gateway.server.status_map import grpc_status, http_status
from tests import harness
from tests.security import _grpc

HUGE = "big name " * 11_112  # 100 KB; spaces keep the audit log from redacting it as key-like
MESSAGE_BOUND = 200


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    return _grpc.served_env(tmp_path_factory.mktemp("echo"))


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Any]:
    with GatewayThread(env.config) as gw:
        _grpc.wait_serving(gw)
        yield gw


def _refusal(stub: Any, request: Any, metadata: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(request, metadata=metadata, timeout=30)
    return refused.value


def test_a_huge_model_name_is_clipped_in_the_message_and_the_audit_line(env: harness.Env, gateway: Any) -> None:
    with _grpc.channel(env, gateway) as chan:
        stub = _grpc.stub(chan)
        for metadata, code in ((_grpc.auth(env), "NOT_FOUND"), ((), "UNAUTHENTICATED")):
            error = _refusal(stub, _grpc.raw_request(HUGE, "FP32", [1, 8], b"\0" * 32), metadata)
            assert error.code().name == code
            assert len(error.details() or "") <= MESSAGE_BOUND, len(error.details() or "")
            line = _grpc.records(env, gateway, "grpc:ModelInfer", code)[-1]
            if code == "UNAUTHENTICATED":  # refused on its metadata: the message, and its name, never read
                assert line.get("model") is None
            else:
                assert line["model"].startswith("big name") and len(line["model"]) <= 129
            assert len(line["reason"]) <= 257
    _grpc.assert_serves(env, gateway)


def test_a_huge_tensor_name_or_datatype_is_clipped(env: harness.Env, gateway: Any) -> None:
    md = _grpc.auth(env)
    with _grpc.channel(env, gateway) as chan:
        stub = _grpc.stub(chan)
        cases = [
            _grpc.raw_request(_grpc.MODEL, "FP32", [1, 8], b"\0" * 4, name=HUGE),
            _grpc.raw_request(_grpc.MODEL, "FP32" + "Q" * 100_000, [1, 8], b"\0" * 32),
            _grpc.raw_request(_grpc.MODEL, "FP32", [-1] + [7] * 30, b"\0" * 4, name=HUGE),
        ]
        for request in cases:
            error = _refusal(stub, request, md)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert len(error.details() or "") <= 2 * MESSAGE_BOUND + 100, len(error.details() or "")
            assert "big name " * 20 not in (error.details() or "") and "QQQQ" * 20 not in (error.details() or "")
    line = _grpc.records(env, gateway, "grpc:ModelInfer", "INVALID_ARGUMENT")[-1]
    assert len(line["reason"]) <= 257
    _grpc.assert_serves(env, gateway)


def test_control_characters_are_escaped_in_messages(env: harness.Env, gateway: Any) -> None:
    forged = 'x\n{"status":"OK"}\r\x1b[2J'
    with _grpc.channel(env, gateway) as chan:
        error = _refusal(_grpc.stub(chan), _grpc.raw_request(forged, "FP32", [1, 8], b"\0" * 32), _grpc.auth(env))
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "\n" not in details and "\r" not in details and "\x1b" not in details and "\\n" in details
    lines = env.audit_lines(gateway)  # writes what the recorder holds first
    raw = env.audit.read_text()
    assert '{"status":"OK"}\r' not in raw and raw.count("\n") == len(lines)
    assert lines[-1]["status"] == "NOT_FOUND" and "\n" not in lines[-1]["model"]


def test_clip_bounds_and_escapes() -> None:
    assert clip("abc") == "abc"
    assert clip("a" * 128) == "a" * 128
    assert clip("a" * 129) == "a" * 128 + "…"
    assert clip("a\nb") == "a\\nb"
    assert len(clip("\x00" * 1000)) == 129
    assert clip(12345) == "12345"
    code, message = grpc_status(InvalidInput("x" * 100_000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and len(message) <= 513
    assert len(http_status(InvalidInput("y" * 100_000))[1]) <= 513
