"""`sealgate release`: gates passed → seal → push; a failed gate refuses before anything is sealed or pushed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.server.app import GatewayThread
from tests import harness
from tests.models import make_onnx_mlp

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[harness.Env, Any, Path]]:
    env = harness.make_env(tmp_path_factory.mktemp("publish"))
    base = make_onnx_mlp(8, (16,), 3, seed=0)
    harness.seal_model(env, "cls", 1, base)
    # held-out data labelled by the baseline itself: the baseline scores 100%, another model much less
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    y = ort.InferenceSession(base["model.onnx"], providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.savez(env.root / "eval.npz", x=x, y=y.argmax(1))
    (env.root / "base.onnx").write_bytes(base["model.onnx"])
    with GatewayThread(env.config) as gw:
        yield env, gw, env.root


def _release(env: harness.Env, gw: Any, root: Path, candidate: Path, version: int) -> subprocess.CompletedProcess[str]:
    token = harness.token(env, "release:cls")
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "release", str(candidate), "--name", "cls", "--version", str(version),
         "--data", str(root / "eval.npz"), "--baseline", str(root / "base.onnx"),
         "--key", str(env.certs / "signing.key"), "--recipient", str(env.certs / "gateway.pub"),
         "--max-latency-ratio", "5", "--out", str(root / f"cls-{version}.sealed"),
         "--address", f"127.0.0.1:{gw.grpc_port}", "--dir", str(env.certs), "--token", token],
        capture_output=True, text=True, timeout=120, cwd=root, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def test_failed_gate_refuses_and_pushes_nothing(world: tuple[harness.Env, Any, Path]) -> None:
    env, gw, root = world
    worse = root / "worse.onnx"
    worse.write_bytes(make_onnx_mlp(8, (16,), 3, seed=99)["model.onnx"])
    before = sorted(p.name for p in (env.models / "cls").iterdir())
    result = _release(env, gw, root, worse, 2)
    assert result.returncode == 1
    assert "accuracy" in result.stderr and "gate(s) failed" in result.stderr and "Traceback" not in result.stderr
    assert not (root / "cls-2.sealed").exists()
    assert sorted(p.name for p in (env.models / "cls").iterdir()) == before
    assert gw.manager.default_version("cls") == 1


def test_passing_candidate_is_sealed_pushed_and_served(world: tuple[harness.Env, Any, Path]) -> None:
    env, gw, root = world
    same = root / "same"
    same.mkdir()
    (same / "model.onnx").write_bytes((root / "base.onnx").read_bytes())
    result = _release(env, gw, root, same, 3)
    assert result.returncode == 0, result.stderr
    assert (root / "cls-3.sealed").exists()
    assert gw.manager.default_version("cls") == 3
    gates = gw.manager.get("cls").provenance["gates"]
    assert gates["passed"] is True and {g["name"] for g in gates["gates"]} >= {"accuracy", "latency", "no_nan"}
