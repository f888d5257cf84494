"""One version rule (issue 10, findings 8 and 14): a version is 1 to 18 ASCII digits, >= 1, the same at seal,
push, in the repository's file pattern and on every request; `²`, `①` or `٣` are client mistakes
(INVALID_ARGUMENT), never INTERNAL, and an 18-digit version survives a restart with List agreeing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.auth.tls import channel_credentials
from gateway.errors import InvalidInput
from gateway.protos.inference import grpc_service_pb2 as pb
from gateway.protos.sealgate.v1 import release_pb2, release_pb2_grpc
from gateway.server.app import GatewayThread
from gateway.serving.repository import VERSION_FILE, Repository
from gateway.versions import MAX_VERSION, MAX_VERSION_DIGITS, check_version, parse_version
from tests import harness
from tests.models import make_onnx_mlp
from tests.security import _grpc

BAD_TEXT = ["²", "①", "٣", "1²", "0", "00", "-1", "+1", " 1", "1 ", "1\n", "1_0", "1e3", "0x1", "1" * 19, "9" * 40]
BIG = MAX_VERSION  # 999999999999999999: the largest version, 18 digits


@pytest.mark.parametrize("text", BAD_TEXT)
def test_parse_version_takes_ascii_digits_only(text: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_version(text)
    assert len(str(refused.value)) < 200


def test_parse_and_check_version_accept_the_whole_range() -> None:
    assert MAX_VERSION_DIGITS == 18 and MAX_VERSION == 10**18 - 1
    assert parse_version("1") == 1 and parse_version("007") == 7 and parse_version("9" * 18) == MAX_VERSION
    assert check_version(1) == 1 and check_version(MAX_VERSION) == MAX_VERSION
    for bad in (0, -1, MAX_VERSION + 1, 10**400, True, 1.0, "1", None):
        with pytest.raises(InvalidInput):
            check_version(bad)  # type: ignore[arg-type]


def test_the_repository_pattern_is_the_version_rule(tmp_path: Path) -> None:
    assert VERSION_FILE.fullmatch(f"{MAX_VERSION}.sealed") and VERSION_FILE.fullmatch("1.sealed")
    for name in (f"{MAX_VERSION + 1}.sealed", "0.sealed", "01.sealed", "².sealed"):
        assert not VERSION_FILE.fullmatch(name)
    repo = Repository(tmp_path / "models")
    assert repo.path("m", MAX_VERSION).name == f"{MAX_VERSION}.sealed"
    with pytest.raises(InvalidInput):
        repo.path("m", MAX_VERSION + 1)
    with pytest.raises(InvalidInput):
        repo.store("m", MAX_VERSION + 1, b"whatever")
    assert repo.scan() == {}, "nothing was stored"


def test_a_19_digit_version_is_refused_at_seal(tmp_path: Path) -> None:
    env = harness.make_env(tmp_path)
    with pytest.raises(InvalidInput):
        harness.seal_model(env, "m", MAX_VERSION + 1, make_onnx_mlp(8, (8,), 1, seed=1))
    assert not any(env.models.rglob("*.sealed")), "nothing was written"


@pytest.fixture()
def env(tmp_path: Path) -> harness.Env:
    env = _grpc.served_env(tmp_path)
    harness.seal_model(env, "big", BIG, make_onnx_mlp(8, (8,), 1, seed=2))
    return env


def _release(env: harness.Env, gateway: Any) -> tuple[grpc.Channel, Any]:
    creds = channel_credentials(env.certs / "ca.pem", env.certs / "client.pem", env.certs / "client.key")
    chan = grpc.secure_channel(f"127.0.0.1:{gateway.grpc_port}", creds)
    return chan, release_pb2_grpc.ReleaseStub(chan)


def test_bad_versions_on_requests_are_invalid_argument(env: harness.Env) -> None:
    with GatewayThread(env.config) as gw:
        _grpc.wait_serving(gw)
        md = _grpc.auth(env)
        with _grpc.channel(env, gw) as chan:
            stub = _grpc.stub(chan)
            for text in BAD_TEXT:
                for call, request in (
                    (stub.ModelInfer, _grpc.good_request(version=text)),
                    (stub.ModelReady, pb.ModelReadyRequest(name=_grpc.MODEL, version=text)),
                    (stub.ModelMetadata, pb.ModelMetadataRequest(name=_grpc.MODEL, version=text)),
                ):
                    with pytest.raises(grpc.RpcError) as refused:
                        call(request, metadata=md, timeout=30)
                    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (text, refused.value.details())
                    assert "model_version" in (refused.value.details() or "")
            # '' is the default version
            assert stub.ModelInfer(_grpc.good_request(version=""), metadata=md, timeout=30).model_version == "1"
            assert stub.ModelReady(pb.ModelReadyRequest(name=_grpc.MODEL, version=""), metadata=md, timeout=30).ready
        lines = _grpc.records(env, gw, "grpc:ModelReady", "INVALID_ARGUMENT")
        assert len(lines) == len(BAD_TEXT) and not _grpc.records(env, gw, "grpc:ModelReady", "INTERNAL")
        _grpc.assert_serves(env, gw)


def _check_big_serves(env: harness.Env, gateway: Any) -> None:
    """`big` answers at its 18-digit version, by default and by number, and List says so."""
    _grpc.wait_serving(gateway, "big")
    md = _grpc.auth(env, "infer:* fetch:* release:*")
    request = _grpc.raw_request("big", "FP32", [1, 8], b"\0" * 32, version=str(BIG))
    with _grpc.channel(env, gateway) as chan:
        assert _grpc.stub(chan).ModelInfer(request, metadata=md, timeout=30).model_version == str(BIG)
    chan, release = _release(env, gateway)
    with chan:
        listed = release.List(release_pb2.ListRequest(name="big"), metadata=md, timeout=30)
    (model,) = listed.models
    assert model.serving_version == BIG and model.highest_version_seen == BIG
    assert [(v.version, release_pb2.VersionStatus.State.Name(v.state)) for v in model.versions] == [(BIG, "SERVING")]


def test_an_18_digit_version_survives_a_restart(env: harness.Env) -> None:
    with GatewayThread(env.config) as gw:
        _check_big_serves(env, gw)
    with GatewayThread(env.config) as gw:  # a restart re-reads the repository and its state file
        _check_big_serves(env, gw)
        _grpc.assert_serves(env, gw)
