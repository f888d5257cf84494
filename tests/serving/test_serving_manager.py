"""The model manager with real sealed ONNX models: pick-up and swap, refusals that keep the old version
serving, in-flight requests, pushes with anti-rollback, rollback pins that survive a restart, smoke tests,
version policies and the errors `get` raises."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from onnx import TensorProto, helper
from prometheus_client import CollectorRegistry, Gauge

from gateway.artifact.keys import Identity, generate_identity
from gateway.artifact.sealed import TrustStore, open_artifact, seal_to_file
from gateway.errors import (
    ConfigError,
    GateFailed,
    InvalidInput,
    MetadataMismatch,
    NotARecipient,
    NotFound,
    NotServable,
    RollbackRefused,
    TamperedArtifact,
    Unavailable,
    UntrustedSigner,
)
from gateway.serving import ModelManager, ModelState, Repository, ServedModel, VersionPolicy
from gateway.serving.ledger import STATE_NAME, LedgerFile
from gateway.serving.routes import STANDBY_REASON
from tests.models import ONNX_OPSET, make_onnx_mlp, mlp_reference

NAME = "mlp"
X = np.random.default_rng(7).standard_normal((8, 64)).astype(np.float32)


@dataclass
class Keys:
    """The signers and recipients of these tests."""

    signer: ec.EllipticCurvePrivateKey
    stranger: ec.EllipticCurvePrivateKey
    gateway: Identity
    device: Identity

    @property
    def trust(self) -> TrustStore:
        return TrustStore.of([self.signer.public_key()])


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
        generate_identity(),
        generate_identity(),
    )


def seal(keys: Keys, out: Path, version: int, files: dict[str, bytes] | None = None, **kw: Any) -> Path:
    """Seal `files` (default: the MLP with seed = version) as NAME/version into `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    provenance = {"seed": version, **kw.pop("provenance", {})}
    seal_to_file(
        files if files is not None else make_onnx_mlp(seed=version),
        out,
        name=kw.pop("name", NAME),
        version=version,
        signer=kw.pop("signer", keys.signer),
        recipients=kw.pop("recipients", [keys.gateway.public]),
        provenance=provenance,
    )
    return out


@pytest.fixture(scope="module")
def artifacts(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Good sealed versions 1..5 of NAME (seeds 1..5), outside any repository."""
    folder = tmp_path_factory.mktemp("artifacts")
    return {v: seal(keys, folder / f"{v}.sealed", v) for v in range(1, 6)}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def manager(root: Path, keys: Keys) -> Iterator[ModelManager]:
    mgr = new_manager(root, keys)
    yield mgr
    mgr.close()


def new_manager(root: Path, keys: Keys, **kw: Any) -> ModelManager:
    return ModelManager(Repository(root), [keys.gateway], keys.trust, **kw)


def place(root: Path, version: int, src: Path, name: str = NAME) -> Path:
    """Copy a sealed file into the repository as an operator would."""
    target = root / name / f"{version}.sealed"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)
    return target


def push(mgr: ModelManager, version: int, src: Path, name: str = NAME, store_only: bool = False) -> Any:
    """What the Release service does: receive the stream whole into a repository temp file, then hand it over."""
    received = mgr.repo.new_temp()
    shutil.copyfile(src, received)
    try:
        return mgr.accept_push(name, version, received, store_only=store_only)
    finally:
        assert not received.exists(), "the received temp file never outlives accept_push"


def expected(seed: int) -> np.ndarray:
    return mlp_reference(seed=seed)(X)


def run(served: ServedModel) -> np.ndarray:
    return served.model.infer({"input": X})["output"]


def states(mgr: ModelManager, name: str = NAME) -> dict[int, tuple[str, str]]:
    return {s.version: (s.state.name, s.reason) for s in mgr.status() if s.name == name}


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def onnx_files(node_type: str, sample_shape: int = 64) -> dict[str, bytes]:
    """A one-op ONNX model input [-1, 64] -> output [-1, 64]: 'nan' computes (x-x)/(x-x), 'sqrt' sqrt(x)."""
    if node_type == "nan":
        nodes = [
            helper.make_node("Sub", ["input", "input"], ["zero"]),
            helper.make_node("Div", ["zero", "zero"], ["output"]),
        ]
    else:
        nodes = [helper.make_node("Sqrt", ["input"], ["output"])]
    graph = helper.make_graph(
        nodes,
        node_type,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", sample_shape])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", sample_shape])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    return {"model.onnx": model.SerializeToString()}


def tampered(src: Path, out: Path) -> Path:
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0x01
    out.write_bytes(bytes(data))
    return out


# --- pick-up and swap -------------------------------------------------------------------------------
def test_a_new_version_is_served_within_two_seconds(root: Path, keys: Keys, artifacts: dict[int, Path]) -> None:
    place(root, 1, artifacts[1])
    mgr = new_manager(root, keys, poll_interval=0.1)
    try:
        started = time.monotonic()
        mgr.start()
        while not mgr.ready() or mgr.default_version(NAME) != 1:
            assert time.monotonic() - started < 2.0, "version 1 was not served within 2 s"
            time.sleep(0.02)
        served = mgr.get(NAME)
        np.testing.assert_allclose(run(served), expected(1), rtol=1e-5, atol=1e-5)
        assert served.provenance["seed"] == 1
        copied = time.monotonic()
        place(root, 2, artifacts[2])
        while mgr.default_version(NAME) != 2:
            assert time.monotonic() - copied < 2.0, "version 2 was not served within 2 s"
            time.sleep(0.02)
        np.testing.assert_allclose(run(mgr.get(NAME)), expected(2), rtol=1e-5, atol=1e-5)
        assert mgr.get(NAME).provenance["seed"] == 2
        # v1 stays loaded as the warm standby of runtime failover ([rollout] warm_standby), but is not routed
        assert states(mgr) == {1: ("AVAILABLE", STANDBY_REASON), 2: ("SERVING", "")}
        assert mgr.versions(NAME) == [2]
    finally:
        mgr.close()


def test_tampered_and_untrusted_versions_are_refused_while_the_old_keeps_serving(
    manager: ModelManager,
    root: Path,
    keys: Keys,
    artifacts: dict[int, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="sealgate.serving")
    place(root, 1, artifacts[1])
    manager.poll()
    before = run(manager.get(NAME))
    np.testing.assert_allclose(before, expected(1), rtol=1e-5, atol=1e-5)

    place(root, 2, tampered(artifacts[2], tmp_path / "t.sealed"))
    place(root, 3, seal(keys, tmp_path / "u.sealed", 3, signer=keys.stranger))
    manager.poll()
    st = states(manager)
    assert st[1] == ("SERVING", "")
    assert st[2][0] == "REFUSED" and "signature does not match" in st[2][1]
    assert st[3][0] == "REFUSED" and "not in the trust store" in st[3][1]
    served = manager.get(NAME)
    assert served.version == 1
    np.testing.assert_array_equal(run(served), before)
    with pytest.raises(Unavailable, match=r"version 3 is not serving \(REFUSED"):
        manager.get(NAME, 3)
    assert manager.highest_seen(NAME) == 1, "refused versions never raise the anti-rollback floor"
    manager.poll()
    manager.poll()
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 2, "an unchanged refused file is not verified (and logged) again on every poll"

    place(root, 2, artifacts[2])  # the operator replaces the bad file: it is looked at again
    manager.poll()
    assert manager.get(NAME).version == 2


def test_a_file_in_the_wrong_place_is_refused(manager: ModelManager, root: Path, artifacts: dict[int, Path]) -> None:
    place(root, 1, artifacts[1])
    place(root, 9, artifacts[2])  # a signed version 2 renamed to 9 must not pass as version 9
    manager.poll()
    state, reason = states(manager)[9]
    assert state == "REFUSED" and "header says 'mlp' version 2" in reason
    assert manager.get(NAME).version == 1


def test_in_flight_requests_finish_on_the_version_they_started_on(
    manager: ModelManager, root: Path, artifacts: dict[int, Path]
) -> None:
    place(root, 1, artifacts[1])
    manager.poll()
    held = manager.get(NAME)
    references = {v: expected(v) for v in (1, 2, 3)}
    stop = threading.Event()
    mismatches: list[str] = []
    counts = {"calls": 0}

    def client() -> None:
        while not stop.is_set():
            served = manager.get(NAME)
            out = run(served)
            counts["calls"] += 1
            if not np.allclose(out, references[served.version], rtol=1e-5, atol=1e-5):
                mismatches.append(f"v{served.version}")

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    for version in (2, 3):
        place(root, version, artifacts[version])
        manager.poll()
        time.sleep(0.05)
    stop.set()
    for thread in clients:
        thread.join()
    assert mismatches == [] and counts["calls"] > 0
    assert manager.get(NAME).version == 3
    assert held.version == 1
    result: dict[str, np.ndarray] = {}
    worker = threading.Thread(target=lambda: result.update(out=run(held)))
    worker.start()
    worker.join()
    np.testing.assert_allclose(result["out"], references[1], rtol=1e-5, atol=1e-5)


# --- pushes -------------------------------------------------------------------------------------------
def test_a_push_is_verified_stored_and_served(manager: ModelManager, root: Path, artifacts: dict[int, Path]) -> None:
    place(root, 1, artifacts[1])
    manager.poll()
    status = push(manager, 2, artifacts[2])
    assert (status.version, status.state, status.default, status.highest_seen) == (2, ModelState.SERVING, True, 2)
    assert status.size == artifacts[2].stat().st_size and len(status.sha256) == 64
    assert (root / NAME / "2.sealed").read_bytes() == artifacts[2].read_bytes()
    np.testing.assert_allclose(run(manager.get(NAME)), expected(2), rtol=1e-5, atol=1e-5)
    assert json.loads((root / STATE_NAME).read_text())["models"][NAME]["highest_seen"] == 2
    manager.poll()  # the poller sees the stored file and leaves it alone
    assert manager.get(NAME).version == 2 and states(manager)[2] == ("SERVING", "")
    assert manager.fetch_path(NAME) == (root / NAME / "2.sealed", 2)
    assert manager.fetch_path(NAME, 1) == (root / NAME / "1.sealed", 1)


def test_a_push_at_or_below_a_floor_another_process_raised_is_refused(
    manager: ModelManager, root: Path, artifacts: dict[int, Path]
) -> None:
    """Gateways sharing a repository: the floor is checked again on the ledger file, under its lock."""
    place(root, 1, artifacts[1])
    manager.poll()
    LedgerFile(root).update(lambda ledger: ledger.change(NAME, lambda r: r.bumped(3)))  # another gateway took 3
    with pytest.raises(RollbackRefused, match=r"highest version seen \(3\)"):
        push(manager, 2, artifacts[2])
    assert not (root / NAME / "2.sealed").exists(), "nothing stored"
    assert LedgerFile(root).load().highest_seen(NAME) == 3, "the floor is not lowered"
    assert manager.get(NAME).version == 1, "the served version is unchanged"
    assert push(manager, 4, artifacts[4]).state is ModelState.SERVING and manager.highest_seen(NAME) == 4


def test_pushing_an_equal_or_lower_version_is_refused_and_stores_nothing(
    manager: ModelManager, root: Path, keys: Keys, artifacts: dict[int, Path], tmp_path: Path
) -> None:
    place(root, 1, artifacts[1])
    manager.poll()
    push(manager, 3, artifacts[3])
    before = listing(root)
    other3 = seal(keys, tmp_path / "other3.sealed", 3)  # the same version, other bytes
    other1 = seal(keys, tmp_path / "other1.sealed", 1)
    for version, src in ((3, other3), (2, artifacts[2]), (1, other1)):
        with pytest.raises(RollbackRefused, match=r"not above the highest version seen \(3\)"):
            push(manager, version, src)
    assert listing(root) == before
    same = push(manager, 3, artifacts[3])
    assert same.already_stored and same.state is ModelState.SERVING, "identical bytes: already stored"
    assert push(manager, 1, artifacts[1]).already_stored, "below the floor too: the bytes are the stored ones"
    assert listing(root) == before
    assert manager.get(NAME).version == 3
    restarted = new_manager(root, keys)
    restarted.poll()
    with pytest.raises(RollbackRefused):
        push(restarted, 2, artifacts[2])
    assert listing(root) == before
    restarted.close()


def test_refused_pushes_leave_no_trace(
    manager: ModelManager, root: Path, keys: Keys, artifacts: dict[int, Path], tmp_path: Path
) -> None:
    place(root, 1, artifacts[1])
    manager.poll()
    before = listing(root)
    with pytest.raises(TamperedArtifact):
        push(manager, 2, tampered(artifacts[2], tmp_path / "t.sealed"))
    with pytest.raises(UntrustedSigner):
        push(manager, 2, seal(keys, tmp_path / "u.sealed", 2, signer=keys.stranger))
    with pytest.raises(MetadataMismatch, match="header says 'mlp' version 3"):
        push(manager, 2, artifacts[3])
    half = tmp_path / "half.sealed"
    half.write_bytes(artifacts[2].read_bytes()[: artifacts[2].stat().st_size // 2])
    with pytest.raises(TamperedArtifact, match="truncated"):
        push(manager, 2, half)
    assert listing(root) == before
    assert manager.get(NAME).version == 1 and manager.highest_seen(NAME) == 1
    state, reason = states(manager)[2]
    assert state == "REFUSED" and reason.startswith("push refused:")
    with pytest.raises(NotFound):
        manager.fetch_path(NAME, 2)
    assert push(manager, 2, artifacts[2]).state is ModelState.SERVING, "a refused push can be repeated"


def test_a_push_for_edge_devices_only_is_refused_unless_store_only(
    manager: ModelManager, root: Path, keys: Keys, artifacts: dict[int, Path], tmp_path: Path
) -> None:
    place(root, 1, artifacts[1])
    manager.poll()
    edge = seal(keys, tmp_path / "edge.sealed", 2, recipients=[keys.device.public])
    with pytest.raises(NotServable, match="sealed for other recipients; push with store_only"):
        push(manager, 2, edge)
    assert not (root / NAME / "2.sealed").exists() and manager.highest_seen(NAME) == 1
    status = push(manager, 2, edge, store_only=True)
    assert status.state is ModelState.AVAILABLE and "not among its recipients" in status.reason
    assert status.highest_seen == 1, "a store-only file does not raise the anti-rollback floor"
    assert manager.get(NAME).version == 1
    path, _ = manager.fetch_path(NAME, 2)
    opened = open_artifact(path, [keys.device], keys.trust)
    assert opened.provenance["seed"] == 2
    with pytest.raises(NotARecipient):
        open_artifact(path, [keys.gateway], keys.trust)
    again = push(manager, 2, edge, store_only=True)
    assert again.already_stored and again.state is ModelState.AVAILABLE
    with pytest.raises(RollbackRefused):
        push(manager, 2, artifacts[2])


def test_a_smoke_test_failure_is_refused_and_the_old_keeps_serving(
    manager: ModelManager, root: Path, keys: Keys, artifacts: dict[int, Path], tmp_path: Path
) -> None:
    place(root, 1, artifacts[1])
    manager.poll()
    nan_model = seal(keys, tmp_path / "nan.sealed", 2, files=onnx_files("nan"))
    before = listing(root)
    with pytest.raises(GateFailed, match="output 'output' is not finite"):
        push(manager, 2, nan_model)
    assert listing(root) == before
    state, reason = states(manager)[2]
    assert state == "REFUSED" and "smoke test failed" in reason
    np.testing.assert_allclose(run(manager.get(NAME)), expected(1), rtol=1e-5, atol=1e-5)

    place(root, 3, seal(keys, tmp_path / "nan3.sealed", 3, files=onnx_files("nan")))
    manager.poll()
    state, reason = states(manager)[3]
    assert state == "REFUSED" and "not finite" in reason
    assert manager.get(NAME).version == 1


def test_the_sample_input_of_the_provenance_drives_the_smoke_test(
    manager: ModelManager, root: Path, keys: Keys, tmp_path: Path
) -> None:
    negative = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [-1.0] * 64}
    bad_shape = {**negative, "shape": [3, 5]}
    for name, extra in (("sq", {}), ("sqneg", {"sample_input": negative}), ("sqbad", {"sample_input": bad_shape})):
        sealed = seal(keys, tmp_path / f"{name}.sealed", 1, files=onnx_files("sqrt"), name=name, provenance=extra)
        place(root, 1, sealed, name=name)
    manager.poll()
    assert manager.get("sq").version == 1, "zeros pass: sqrt(0) is finite"
    assert states(manager, "sqneg")[1][0] == "REFUSED" and "not finite" in states(manager, "sqneg")[1][1]
    assert states(manager, "sqbad")[1][0] == "REFUSED" and "sample_input is malformed" in states(manager, "sqbad")[1][1]
    with pytest.raises(Unavailable, match="not ready"):
        manager.get("sqneg")


# --- rollback -----------------------------------------------------------------------------------------
def test_rollback_pins_an_earlier_version_and_survives_a_restart(
    root: Path, keys: Keys, artifacts: dict[int, Path]
) -> None:
    for version in (1, 2, 3):
        place(root, version, artifacts[version])
    mgr = new_manager(root, keys)
    mgr.poll()
    assert mgr.get(NAME).version == 3
    assert mgr.rollback(NAME, 1, "accuracy regression") == (1, 3)
    np.testing.assert_allclose(run(mgr.get(NAME)), expected(1), rtol=1e-5, atol=1e-5)
    st = states(mgr)
    assert st[1] == ("SERVING", "") and st[3] == ("RETIRED", "rolled back to version 1: accuracy regression")
    assert [s.pinned for s in mgr.status()] == [True, False, False]
    record = json.loads((root / STATE_NAME).read_text())["models"][NAME]
    assert record["pinned"] == 1 and record["highest_seen"] == 3
    assert record["rollbacks"][-1] | {"time": "-"} == {"from": 3, "to": 1, "reason": "accuracy regression", "time": "-"}
    mgr.close()

    again = new_manager(root, keys)
    again.poll()
    assert again.get(NAME).version == 1 and again.pinned(NAME) == 1
    np.testing.assert_allclose(run(again.get(NAME)), expected(1), rtol=1e-5, atol=1e-5)
    assert again.rollback(NAME, 2, "try the middle one") == (2, 1)
    assert again.get(NAME).version == 2
    status = push(again, 4, artifacts[4])
    assert status.default and again.get(NAME).version == 4 and again.pinned(NAME) is None, "a push ends the pin"
    again.close()


def test_rollback_refusals_change_nothing(
    manager: ModelManager, root: Path, keys: Keys, artifacts: dict[int, Path], tmp_path: Path
) -> None:
    place(root, 1, artifacts[1])
    place(root, 2, tampered(artifacts[2], tmp_path / "t.sealed"))
    place(root, 3, artifacts[3])
    manager.poll()
    before = (root / STATE_NAME).read_bytes()
    with pytest.raises(NotFound, match="model 'nope' not found"):
        manager.rollback("nope", 1, "x")
    with pytest.raises(NotFound, match="model 'mlp' has no version 7"):
        manager.rollback(NAME, 7, "x")
    with pytest.raises(RollbackRefused, match="REFUSED"):
        manager.rollback(NAME, 2, "x")
    with pytest.raises(RollbackRefused, match="already the serving version"):
        manager.rollback(NAME, 3, "x")
    with pytest.raises(InvalidInput, match="reason"):
        manager.rollback(NAME, 1, "  ")
    assert (root / STATE_NAME).read_bytes() == before
    assert manager.get(NAME).version == 3


# --- anti-rollback on disk ------------------------------------------------------------------------------
def test_files_below_the_floor_are_not_promoted_and_a_vanished_top_needs_a_rollback(
    manager: ModelManager, root: Path, artifacts: dict[int, Path]
) -> None:
    place(root, 2, artifacts[2])
    place(root, 3, artifacts[3])
    manager.poll()
    place(root, 1, artifacts[1])
    manager.poll()
    state, reason = states(manager)[1]
    assert state == "AVAILABLE" and "below the highest version seen (3)" in reason
    assert manager.get(NAME).version == 3
    (root / NAME / "3.sealed").unlink()
    manager.poll()
    with pytest.raises(Unavailable, match="needs an explicit rollback"):
        manager.get(NAME)
    assert manager.rollback(NAME, 1, "3 was deleted") == (1, None)
    np.testing.assert_allclose(run(manager.get(NAME)), expected(1), rtol=1e-5, atol=1e-5)


# --- policies and errors ----------------------------------------------------------------------------------
def test_version_policies(root: Path, keys: Keys, artifacts: dict[int, Path]) -> None:
    for version in (1, 2, 3):
        place(root, version, artifacts[version])
    latest2 = new_manager(root, keys, policy=VersionPolicy.latest(2))
    latest2.poll()
    assert latest2.versions(NAME) == [2, 3] and latest2.get(NAME).version == 3
    np.testing.assert_allclose(run(latest2.get(NAME, 2)), expected(2), rtol=1e-5, atol=1e-5)
    assert states(latest2)[1] == ("AVAILABLE", "verified; not selected by latest(2)")
    with pytest.raises(Unavailable, match=r"version 1 is not serving \(AVAILABLE"):
        latest2.get(NAME, 1)
    latest2.close()

    specific = new_manager(root, keys, policy=VersionPolicy.specific([1, 2]))
    specific.poll()
    assert specific.versions(NAME) == [1, 2] and specific.get(NAME).version == 2
    assert specific.get(NAME, 1).provenance["seed"] == 1
    assert states(specific)[3][0] == "AVAILABLE"
    specific.close()
    for bad in (lambda: VersionPolicy.latest(0), lambda: VersionPolicy.specific([]), lambda: VersionPolicy("newest")):
        with pytest.raises(ConfigError):
            bad()


def test_get_errors_and_readiness(manager: ModelManager, root: Path, artifacts: dict[int, Path]) -> None:
    assert not manager.ready()
    with pytest.raises(NotFound, match="model 'mlp' not found"):
        manager.get(NAME)
    place(root, 1, artifacts[1])
    manager.poll()
    assert manager.ready()
    with pytest.raises(NotFound, match="model 'mlp' has no version 7"):
        manager.get(NAME, 7)
    with pytest.raises(NotFound, match="model 'other' not found"):
        manager.get("other", 1)
    assert manager.get(NAME, 1) is manager.get(NAME)
    with pytest.raises(NotFound):
        manager.fetch_path(NAME, 7)
    status = manager.status()[0]
    assert (status.name, status.version, status.state, status.default, status.pinned) == (
        NAME,
        1,
        ModelState.SERVING,
        True,
        False,
    )
    assert status.provenance["framework"] == "onnx"


def test_status_summarizes_provenance_and_feeds_the_loaded_gauge(
    manager: ModelManager, root: Path, keys: Keys, artifacts: dict[int, Path], tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    manager.metrics = SimpleNamespace(loaded=Gauge("loaded", "versions", ["model", "state"], registry=registry))
    provenance = {
        "parent_version": 1,
        "metrics": {"accuracy": 0.93, "note": "text is dropped"},
        "privacy": {"epsilon": 3.0, "delta": 1e-5, "accountant": "rdp", "history": [1, 2]},
        "gates": {"parity": True, "nan": {"passed": True}},
        "sample_input": {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64},
    }
    place(root, 1, artifacts[1])
    place(root, 2, seal(keys, tmp_path / "p.sealed", 2, provenance=provenance))
    place(root, 3, tampered(artifacts[3], tmp_path / "t.sealed"))
    manager.poll()
    summary = {s.version: s for s in manager.status()}[2].provenance
    assert summary["parent_version"] == 1 and summary["framework"] == "onnx"
    assert summary["metrics"] == {"accuracy": 0.93}
    assert summary["privacy"] == {"epsilon": 3.0, "delta": 1e-5, "accountant": "rdp"}
    assert summary["gates"] == {"parity": True, "nan": {"passed": True}}
    assert "sample_input" not in summary
    sample = registry.get_sample_value
    assert sample("loaded", {"model": NAME, "state": "SERVING"}) == 1
    assert sample("loaded", {"model": NAME, "state": "AVAILABLE"}) == 1
    assert sample("loaded", {"model": NAME, "state": "REFUSED"}) == 1
