"""Crash safety of the repository: the gateway (a real `sealgate serve` process) is killed with SIGKILL at a
random moment during a push, 20 times. After each restart the repository holds only complete, verified
artifacts, the last good version serves, and the interrupted push succeeds when repeated.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from gateway.artifact.keys import load_identity, load_trusted
from gateway.artifact.sealed import TrustStore, open_artifact
from gateway.release.client import ReleaseClient
from gateway.server.ports import free_loopback_port
from tests import harness
from tests.models import make_onnx_mlp

ROUNDS = 20
IN, HIDDEN = 128, (1024, 1024)  # ~5 MB sealed: a push long enough to be cut in the middle


def _start(env: harness.Env) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(env.root / "sealgate.toml")],
        cwd=env.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    return proc


def _serving_version(env: harness.Env, port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> str:
    headers = {"authorization": "Bearer " + harness.token(env, "infer:big")}
    x = np.zeros((1, IN), np.float32)
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "gateway exited"
        try:
            with harness.triton(env, port) as c:
                inp = grpcclient.InferInput("input", [1, IN], "FP32")
                inp.set_data_from_numpy(x)
                return c.infer("big", [inp], headers=headers).get_response().model_version
        except Exception:
            time.sleep(0.1)
    raise TimeoutError("gateway did not serve in time")


def _check_repository(env: harness.Env) -> list[int]:
    """Every file is a complete artifact that opens and verifies; no temporary file survives."""
    files = [p for p in env.models.rglob("*") if p.is_file() and not p.name.startswith(".sealgate-state")]
    assert not [p for p in files if p.name.endswith(".tmp")], files
    trust = TrustStore.of([load_trusted(env.certs / "signing.pub")])
    ident = [load_identity(env.certs / "gateway.key")]
    versions = []
    for p in files:
        opened = open_artifact(p, ident, trust)
        assert p == env.models / opened.header.name / f"{opened.header.version}.sealed"
        versions.append(opened.header.version)
    return sorted(versions)


def test_sigkill_during_push_twenty_times(tmp_path: Path) -> None:
    gport, rport = free_loopback_port(), free_loopback_port()
    env = harness.make_env(tmp_path, gport, rport)
    harness.seal_model(env, "big", 1, make_onnx_mlp(IN, HIDDEN, 1, seed=1))
    sealed = {
        v: harness.seal_model(env, "big", v, make_onnx_mlp(IN, HIDDEN, 1, seed=v), out=tmp_path / f"{v}.sealed")
        for v in range(2, ROUNDS + 2)
    }
    target = harness.release_target(env, gport, "release:big", ttl=3600)
    rng = random.Random(1234)
    proc = _start(env)
    try:
        assert _serving_version(env, gport, proc) == "1"
        t0 = time.time()
        with ReleaseClient(target) as c:  # measure one push to place the kills inside the transfer
            c.push(sealed[2], "big", 2)
        push_s = time.time() - t0
        kills_mid_push = 0
        for version in range(3, ROUNDS + 2):
            outcome: list[object] = []

            def push(v: int = version, box: list[object] = outcome) -> None:
                try:
                    with ReleaseClient(target, timeout_s=30) as c:
                        box.append(c.push(sealed[v], "big", v))
                except Exception as exc:
                    box.append(exc)

            th = threading.Thread(target=push)
            th.start()
            time.sleep(rng.uniform(0.0, push_s * 1.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            th.join(30)
            kills_mid_push += isinstance(outcome[0], Exception)
            proc = _start(env)
            served = _serving_version(env, gport, proc)
            stored = _check_repository(env)
            assert served == str(max(stored)), (served, stored)
            with ReleaseClient(target) as c:
                c.push(sealed[version], "big", version)  # repeating the interrupted push succeeds
            assert _serving_version(env, gport, proc) == str(version)
        assert kills_mid_push >= ROUNDS // 4, f"only {kills_mid_push} kills landed during a push"
    finally:
        proc.kill()
        proc.wait(10)
