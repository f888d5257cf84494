"""Release path attacks (issue 10, findings 4, 14, 18, 20): a push is authenticated before any message is read
and holds nothing until then; a push the gateway cannot open is refused unless stored explicitly for fetch;
identical bytes are "already stored"; one version limit at seal and at push.

A real gateway on loopback with the dev PKI, raw grpcio Release stubs and the release client.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from gateway.artifact import envelope, sealed
from gateway.artifact.keys import generate_identity_files, load_recipient, load_signer
from gateway.artifact.sealed import inspect, seal_to_file
from gateway.errors import ArtifactError, InvalidInput
from gateway.protos.sealgate.v1 import release_pb2 as pb
from gateway.protos.sealgate.v1 import release_pb2_grpc as pb_grpc
from gateway.release.client import ReleaseClient, RemoteError, push_summary
from gateway.server import release as release_service
from gateway.server.app import GatewayThread
from gateway.server.limits import BACKSTOP_FACTOR
from gateway.versions import MAX_VERSION
from tests import harness
from tests.models import make_onnx_mlp
from tests.security._grpc import channel, raw_request, records, stub

NAME = "rel"
IN_DIM = 8
MAX_CONCURRENT = 8  # gRPC's own backstop is BACKSTOP_FACTOR times this; the idle streams exceed both


def _model(seed: int) -> dict[str, bytes]:
    return make_onnx_mlp(IN_DIM, (8,), 1, seed=seed)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    """A gRPC-only gateway world serving `rel` v1, with a small concurrency limit and an edge device key."""
    env = harness.make_env(tmp_path_factory.mktemp("release-push"))
    generate_identity_files(env.certs / "edge.key", env.certs / "edge.pub", "X25519")
    harness.seal_model(env, NAME, 1, _model(1), provenance={"seed": 1})
    # metrics on an ephemeral port: tests run side by side
    return env.with_config(
        server={"rest": False, "metrics_address": "127.0.0.1:0", "max_concurrent_requests": MAX_CONCURRENT}
    )


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Any]:
    """The gateway, with a short wait for a push's first message so that the idle-stream test is quick."""
    patch = pytest.MonkeyPatch()
    patch.setattr(release_service, "FIRST_MESSAGE_TIMEOUT_S", 1.0)
    try:
        with GatewayThread(env.config) as gw:
            _wait_version(env, gw, "1")
            yield gw
    finally:
        patch.undo()


def _sealed(env: harness.Env, tmp: Path, version: int, recipients: list[Path] | None = None, seed: int = 0) -> Path:
    return harness.seal_model(
        env,
        NAME,
        version,
        _model(seed or version),
        provenance={"seed": seed or version},
        out=tmp / f"{NAME}-{version}-{seed}.sealed",
        recipients=recipients,
    )


def _client(env: harness.Env, gateway: Any, scopes: str = f"release:{NAME} fetch:{NAME}") -> ReleaseClient:
    target = harness.release_target(env, gateway.grpc_port, scopes)
    return ReleaseClient(target, timeout_s=60)


def _served_version(env: harness.Env, gateway: Any) -> str:
    """The version that answers an unversioned ModelInfer for `rel` now."""
    token = (("authorization", "Bearer " + harness.token(env, f"infer:{NAME}")),)
    req = raw_request(NAME, "FP32", [1, IN_DIM], np.ones((1, IN_DIM), np.float32).tobytes())
    with channel(env, gateway) as chan:
        return stub(chan).ModelInfer(req, metadata=token, timeout=30).model_version


def _wait_version(env: harness.Env, gateway: Any, want: str, timeout: float = 60.0) -> None:
    import time

    deadline = time.time() + timeout
    while True:
        try:
            if _served_version(env, gateway) == want:
                return
        except grpc.RpcError:
            pass
        assert time.time() < deadline, f"version {want} never served"
        time.sleep(0.05)


def _files(env: harness.Env) -> dict[str, tuple[int, int]]:
    """Every file of the repository (temp files included) with its inode and mtime: what a push may change."""
    out = {}
    for p in env.models.rglob("*"):
        if p.is_file() and not p.name.startswith(".sealgate-state"):
            st = p.stat()
            out[p.relative_to(env.models).as_posix()] = (st.st_ino, st.st_mtime_ns)
    return out


def _highest_seen(env: harness.Env, gateway: Any) -> int:
    with _client(env, gateway) as c:
        models = c.list(NAME).models
    return models[0].highest_version_seen if models else 0


def _auth_failures(gateway: Any) -> float:
    """sealgate's authentication-failure counter, all reasons together."""
    families = gateway.guard.metrics.auth_failures.collect()
    return sum(s.value for fam in families for s in fam.samples if s.name.endswith("_total"))


def _push_stream(messages: Iterator[pb.PushRequest], env: harness.Env, gateway: Any, token: str | None) -> Any:
    """Push over a raw stub; returns the grpc.RpcError raised (or the response)."""
    md = (("authorization", f"Bearer {token}"),) if token else None
    with channel(env, gateway) as chan:
        try:
            return pb_grpc.ReleaseStub(chan).Push(messages, metadata=md, timeout=30)
        except grpc.RpcError as err:
            return err


# --- authentication before anything is read or held ------------------------------------------------
@pytest.mark.parametrize("token", [None, "not-a-jwt"])
def test_tokenless_push_with_an_empty_first_message_is_unauthenticated(
    env: harness.Env, gateway: Any, token: str | None
) -> None:
    """Finding 20: the stream is authenticated on its metadata before its (invalid) first message is parsed."""
    before = _files(env)
    audited = len(records(env, gateway, "grpc:Push", "UNAUTHENTICATED"))
    counted = _auth_failures(gateway)
    err = _push_stream(iter([pb.PushRequest()]), env, gateway, token)
    assert isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.UNAUTHENTICATED, err
    assert len(records(env, gateway, "grpc:Push", "UNAUTHENTICATED")) == audited + 1
    assert _auth_failures(gateway) == counted + 1, "the refusal is counted"
    assert _files(env) == before, "nothing received, nothing stored"
    md = (("authorization", f"Bearer {token}"),) if token else None
    with channel(env, gateway) as chan:  # the other methods too: invalid arguments are never looked at first
        s = pb_grpc.ReleaseStub(chan)
        calls = {
            "Rollback": lambda: s.Rollback(pb.RollbackRequest(name="x" * 300, version=-1), metadata=md, timeout=30),
            "Fetch": lambda: list(s.Fetch(pb.FetchRequest(name="\x1b[2J", version=-5), metadata=md, timeout=30)),
            "List": lambda: s.List(pb.ListRequest(name="x" * 300), metadata=md, timeout=30),
        }
        for method, call in calls.items():
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
            assert records(env, gateway, f"grpc:{method}", "UNAUTHENTICATED"), method
    err = _push_stream(iter([pb.PushRequest()]), env, gateway, harness.token(env, f"release:{NAME}"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, "with a valid token, the same empty push is invalid"
    assert _files(env) == before
    assert _served_version(env, gateway) == "1"


def test_idle_tokenless_push_streams_do_not_starve_a_legitimate_push(
    env: harness.Env, gateway: Any, tmp_path: Path
) -> None:
    """Finding 4: more idle token-less Push streams than every slot (gRPC's backstop included) hold nothing."""
    count = BACKSTOP_FACTOR * MAX_CONCURRENT + 8
    release = threading.Event()

    def idle() -> Iterator[pb.PushRequest]:
        release.wait(60)  # never sends a message until the test is over
        yield from ()

    revoked_like = harness.token(env, "infer:nothing")  # a valid token without release scope holds nothing either
    chans = [channel(env, gateway) for _ in range(4)]
    try:
        futures = [
            pb_grpc.ReleaseStub(chans[i % 4]).Push.future(
                idle(), metadata=None if i % 2 else (("authorization", f"Bearer {revoked_like}"),), timeout=60
            )
            for i in range(count)
        ]
        tokenless = [f for i, f in enumerate(futures) if i % 2]
        for f in tokenless:
            assert f.exception(30) is not None and f.code() == grpc.StatusCode.UNAUTHENTICATED
        with _client(env, gateway) as c:
            resp = c.push(_sealed(env, tmp_path, 2), NAME, 2)
        assert resp.version == 2 and not resp.already_stored
        _wait_version(env, gateway, "2")
        audited = records(env, gateway, "grpc:Push", "UNAUTHENTICATED")
        assert len(audited) >= len(tokenless), "every token-less stream is audited"
        scoped = [f for i, f in enumerate(futures) if not i % 2]
        for f in scoped:  # authenticated, but no first message: bounded by FIRST_MESSAGE_TIMEOUT_S
            assert f.exception(30) is not None and f.code() == grpc.StatusCode.DEADLINE_EXCEEDED, f.code()
        assert records(env, gateway, "grpc:Push", "DEADLINE_EXCEEDED")
    finally:
        release.set()
        for chan in chans:
            chan.close()
    assert not [p for p in env.models.rglob(".push-*")], "no temp file left"


# --- a push the gateway cannot open ----------------------------------------------------------------
def test_wrong_recipient_push_is_refused_stores_nothing_and_keeps_the_version(
    env: harness.Env, gateway: Any, tmp_path: Path
) -> None:
    """Finding 18: FAILED_PRECONDITION, no file, floor unchanged; the right artifact for that version then serves."""
    top = int(_served_version(env, gateway))
    version = top + 1
    floor = _highest_seen(env, gateway)
    before = _files(env)
    wrong = _sealed(env, tmp_path, version, recipients=[env.certs / "edge.pub"])
    with _client(env, gateway) as c, pytest.raises(RemoteError) as e:
        c.push(wrong, NAME, version)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "sealed for other recipients; push with store_only" in str(e.value)
    assert _files(env) == before and not (env.models / NAME / f"{version}.sealed").exists()
    assert _highest_seen(env, gateway) == floor, "the version number is not consumed"
    refused = records(env, gateway, "grpc:Push", "FAILED_PRECONDITION")
    assert refused and refused[-1]["version"] == str(version)
    right = _sealed(env, tmp_path, version)
    with _client(env, gateway) as c:
        resp = c.push(right, NAME, version)
    assert resp.version == version and not resp.already_stored
    _wait_version(env, gateway, str(version))


def test_store_only_push_is_kept_for_fetch_never_served_and_not_counted(
    env: harness.Env, gateway: Any, tmp_path: Path
) -> None:
    """An explicit store_only push of an artifact for edge devices: stored, AVAILABLE, fetchable, not served."""
    serving = _served_version(env, gateway)
    version = int(serving) + 5
    floor = _highest_seen(env, gateway)
    edge = _sealed(env, tmp_path, version, recipients=[env.certs / "edge.pub"])
    with _client(env, gateway) as c:
        resp = c.push(edge, NAME, version, store_only=True)
        assert resp.state == pb.VersionStatus.AVAILABLE and not resp.already_stored
        listed = {v.version: v for v in c.list(NAME).models[0].versions}
        assert listed[version].state == pb.VersionStatus.AVAILABLE
        assert "fetch only" in listed[version].reason
        out = tmp_path / "fetched.sealed"
        c.fetch(NAME, out, version)
    assert out.read_bytes() == edge.read_bytes()
    assert _served_version(env, gateway) == serving, "never served"
    assert _highest_seen(env, gateway) == floor, "a store-only file does not raise the anti-rollback floor"
    stored = env.models / NAME / f"{version}.sealed"
    stamp = stored.stat().st_ino, stored.stat().st_mtime_ns
    with _client(env, gateway) as c:
        again = c.push(edge, NAME, version, store_only=True)
    assert again.already_stored and push_summary(again).startswith("already stored")
    assert (stored.stat().st_ino, stored.stat().st_mtime_ns) == stamp, "nothing rewritten"


def test_identical_repush_says_already_stored_and_changes_nothing(
    env: harness.Env, gateway: Any, tmp_path: Path
) -> None:
    """Re-pushing the bytes of the serving version: already stored, exit 0, no write, still serving."""
    serving = _served_version(env, gateway)
    path = env.models / NAME / f"{serving}.sealed"
    before = _files(env)
    with _client(env, gateway) as c:
        resp = c.push(path, NAME, int(serving))
    assert resp.already_stored and resp.state == pb.VersionStatus.SERVING
    assert resp.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert push_summary(resp).startswith(f"already stored {NAME} v{serving}")
    assert "pushed" not in push_summary(resp)
    last = records(env, gateway, "grpc:Push", "OK")[-1]
    assert last["version"] == serving and "already stored" in last.get("reason", ""), last
    assert _files(env) == before
    assert _served_version(env, gateway) == serving
    other = _sealed(env, tmp_path, int(serving), seed=99)  # same version, other bytes: still refused
    with _client(env, gateway) as c, pytest.raises(RemoteError) as e:
        c.push(other, NAME, int(serving))
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert _files(env) == before


# --- one version limit ------------------------------------------------------------------------------
def _forge_19_digit(env: harness.Env, out: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An artifact whose signed header says version 10**18 (19 digits), made by switching the seal-side check off."""
    with monkeypatch.context() as m:
        m.setattr(envelope, "check_version", lambda v: v)
        m.setattr(sealed, "check_version", lambda v: v)
        m.setattr(envelope, "MAX_VERSION", 10 * MAX_VERSION + 9)
        seal_to_file(
            _model(7),
            out,
            name=NAME,
            version=MAX_VERSION + 1,
            signer=load_signer(env.certs / "signing.key"),
            recipients=[load_recipient(env.certs / "gateway.pub")],
        )
    return out


def test_19_digit_version_is_refused_at_seal_and_at_push(
    env: harness.Env, gateway: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 14: the repository keeps 18 digits, so seal, the header reader and push all stop at 18."""
    with pytest.raises(InvalidInput, match="18 digits at most"):
        harness.seal_model(env, NAME, MAX_VERSION + 1, _model(7), out=tmp_path / "x.sealed")
    assert not (tmp_path / "x.sealed").exists()
    forged = _forge_19_digit(env, tmp_path / "forged.sealed", monkeypatch)
    with pytest.raises(ArtifactError, match="malformed"):
        inspect(forged)
    before = _files(env)
    with _client(env, gateway) as c, pytest.raises(RemoteError) as e:
        c.push(forged, NAME, MAX_VERSION + 1)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "18 digits at most" in str(e.value)
    assert _files(env) == before
    assert records(env, gateway, "grpc:Push", "INVALID_ARGUMENT")[-1]["version"] == str(MAX_VERSION + 1)
    assert _served_version(env, gateway)  # still serves
