"""The release path over the wire: push, infer, anti-rollback, rollback, audit; refusals that store nothing;
edge fetch and offline open; zero-downtime swaps under load.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from gateway.artifact.keys import generate_identity_files, load_identity, load_trusted
from gateway.artifact.sealed import TrustStore, open_artifact
from gateway.errors import NotARecipient
from gateway.protos.sealgate.v1 import release_pb2 as pb
from gateway.release.client import ReleaseClient, RemoteError
from gateway.server.app import GatewayThread
from tests import harness
from tests.models import make_onnx_mlp, mlp_reference

IN = 16
HIDDEN = (32,)


def _model(seed: int) -> dict[str, bytes]:
    return make_onnx_mlp(IN, HIDDEN, 1, seed=seed)


def _expected(seed: int, x: np.ndarray) -> np.ndarray:
    return mlp_reference(IN, HIDDEN, 1, seed=seed)(x)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    env = harness.make_env(tmp_path_factory.mktemp("release"))
    generate_identity_files(env.certs / "edge.key", env.certs / "edge.pub", "X25519")
    harness.seal_model(env, "ctr", 1, _model(1), provenance={"seed": 1})
    return env


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Any]:
    with GatewayThread(env.config) as gw:
        yield gw


def _client(env: harness.Env, gateway: Any, scopes: str) -> ReleaseClient:
    target = harness.release_target(env, gateway.grpc_port, scopes)
    return ReleaseClient(target, timeout_s=60)


def _sealed(env: harness.Env, tmp: Path, version: int, **kw: Any) -> Path:
    return harness.seal_model(
        env, "ctr", version, _model(version), provenance={"seed": version}, out=tmp / f"ctr-{version}.sealed", **kw
    )


def _infer(env: harness.Env, gateway: Any, x: np.ndarray) -> tuple[str, np.ndarray]:
    headers = {"authorization": "Bearer " + harness.token(env, "infer:ctr")}
    with harness.triton(env, gateway.grpc_port) as c:
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        r = c.infer("ctr", [inp], headers=headers)
    return r.get_response().model_version, r.as_numpy("output")


def _listing(env: harness.Env) -> list[str]:
    return sorted(p.relative_to(env.models).as_posix() for p in env.models.rglob("*") if p.is_file())


def test_push_infer_refuse_older_rollback_audited(env: harness.Env, gateway: Any, tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((3, IN)).astype(np.float32)
    client = _client(env, gateway, "release:ctr fetch:ctr")
    with client:
        t0 = time.time()
        resp = client.push(_sealed(env, tmp_path, 2), "ctr", 2)
        assert pb.VersionStatus.State.Name(resp.state) == "SERVING"
        version, y = _infer(env, gateway, x)
        assert time.time() - t0 < 2.0
        assert version == "2"
        np.testing.assert_allclose(y, _expected(2, x), rtol=1e-5, atol=1e-5)
        for old in (2, 1):
            before = _listing(env)
            with pytest.raises(RemoteError) as e:
                client.push(
                    harness.seal_model(env, "ctr", old, _model(old + 10), out=tmp_path / f"o{old}.sealed"), "ctr", old
                )
            assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert _listing(env) == before
        back = client.rollback("ctr", 1, "bad metrics on v2")
        assert (back.version, back.previous_version) == (1, 2)
        version, y = _infer(env, gateway, x)
        assert version == "1"
        np.testing.assert_allclose(y, _expected(1, x), rtol=1e-5, atol=1e-5)
        listing = client.list("ctr").models[0]
        assert listing.serving_version == 1 and listing.highest_version_seen == 2
        assert any(v.version == 1 and v.pinned for v in listing.versions)
        assert next(v for v in listing.versions if v.version == 1).provenance.framework == "onnx"
    methods = [(r["method"], r["status"], r.get("version")) for r in env.audit_lines(gateway)]
    assert ("grpc:Push", "OK", "2") in methods
    assert ("grpc:Push", "FAILED_PRECONDITION", "1") in methods
    assert ("grpc:Rollback", "OK", "1") in methods
    assert ("grpc:ModelInfer", "OK", "1") in methods
    # a new push clears the pin
    with _client(env, gateway, "release:ctr") as client:
        assert pb.VersionStatus.State.Name(client.push(_sealed(env, tmp_path, 3), "ctr", 3).state) == "SERVING"
    assert _infer(env, gateway, x)[0] == "3"


def test_refused_pushes_store_nothing(env: harness.Env, gateway: Any, tmp_path: Path) -> None:
    from gateway.auth import pki

    good = _sealed(env, tmp_path, 50)
    rogue = tmp_path / "rogue"
    pki.write_signing_keys(rogue)
    untrusted = _sealed(env, tmp_path, 51, signer_key=rogue / "signing.key")
    tampered = tmp_path / "tampered.sealed"
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    before = _listing(env)
    with _client(env, gateway, "fetch:ctr infer:ctr") as client, pytest.raises(RemoteError) as e:
        client.push(good, "ctr", 50)
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    with _client(env, gateway, "release:ctr") as client:
        with pytest.raises(RemoteError) as e:
            client.push(tampered, "ctr", 50)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "signature" in str(e.value)
        with pytest.raises(RemoteError) as e:
            client.push(untrusted, "ctr", 51)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "trust" in str(e.value)
        # a push that stops half way: the stream ends early
        stub = client.stub
        meta = pb.ArtifactMetadata(name="ctr", version=50, size=good.stat().st_size, sha256="0" * 64)
        half = good.read_bytes()[: good.stat().st_size // 2]
        with pytest.raises(grpc.RpcError) as err:
            stub.Push(
                iter([pb.PushRequest(metadata=meta), pb.PushRequest(chunk=half)]), metadata=client.metadata, timeout=30
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _listing(env) == before
    assert not [p for p in env.models.rglob("*") if p.name.endswith(".tmp")]


def test_edge_fetch_and_offline_open(env: harness.Env, gateway: Any, tmp_path: Path) -> None:
    edge_sealed = _sealed(env, tmp_path, 60, recipients=[env.certs / "gateway.pub", env.certs / "edge.pub"])
    with _client(env, gateway, "release:ctr fetch:ctr") as client:
        client.push(edge_sealed, "ctr", 60)
        out = tmp_path / "fetched.sealed"
        meta = client.fetch("ctr", out, version=60)
    assert meta.version == 60 and out.read_bytes() == edge_sealed.read_bytes()
    trust = TrustStore.of([load_trusted(env.certs / "signing.pub")])
    opened = open_artifact(out, [load_identity(env.certs / "edge.key")], trust)  # no gateway involved
    assert opened.provenance["seed"] == 60
    # a device allowed to fetch but not a recipient gets ciphertext it cannot open
    other = tmp_path / "not-a-recipient"
    generate_identity_files(other.with_suffix(".key"), other.with_suffix(".pub"), "X25519")
    with pytest.raises(NotARecipient):
        open_artifact(out, [load_identity(other.with_suffix(".key"))], trust)


def test_zero_downtime_under_load(env: harness.Env, gateway: Any, tmp_path: Path) -> None:
    """While 16 clients send >= 5,000 requests, three versions are pushed; nothing fails, every answer
    comes from a version that was valid when it was served."""
    headers = {"authorization": "Bearer " + harness.token(env, "infer:ctr")}
    x = np.random.default_rng(7).standard_normal((1, IN)).astype(np.float32)
    base = max(v.version for v in gateway.manager.status("ctr")) + 1
    versions = [base, base + 1, base + 2]
    sealed = {v: _sealed(env, tmp_path, v) for v in versions}
    valid = {s.version: s for s in gateway.manager.status("ctr")}
    expected = {v: _expected(v, x) for v in [*versions, *valid]}
    results: list[tuple[str, np.ndarray]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker() -> None:
        with harness.triton(env, gateway.grpc_port) as c:
            inp = grpcclient.InferInput("input", [1, IN], "FP32")
            inp.set_data_from_numpy(x)
            while not stop.is_set():
                try:
                    r = c.infer("ctr", [inp], headers=headers)
                    item = (r.get_response().model_version, r.as_numpy("output"))
                except BaseException as exc:
                    with lock:
                        errors.append(exc)
                    return
                with lock:
                    results.append(item)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    with _client(env, gateway, "release:ctr") as client:
        for v in versions:
            time.sleep(0.5)
            client.push(sealed[v], "ctr", v)
    deadline = time.time() + 120
    while len(results) < 5000 and time.time() < deadline and not errors:
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    assert len(results) >= 5000
    seen = {v for v, _ in results}
    assert str(versions[-1]) in seen
    for version, y in results:
        np.testing.assert_allclose(y, expected[int(version)], rtol=1e-5, atol=1e-5)
