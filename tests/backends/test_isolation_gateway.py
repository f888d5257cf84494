"""Isolated workers behind the real gateway (issue 12): the V1 exploit of the hardening issue with the model
policy switched off, and kill -9 of a worker under load (tritonclient, mTLS, JWT, audit on).

Each test runs a real gateway on loopback with `[backend] isolation = "process"` and real dev PKI.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from onnx import ModelProto, TensorProto, helper
from tritonclient.utils import InferenceServerException

from gateway.backends import BackendConfig, load_model, onnx_policy
from gateway.backends.isolated import landlock, process
from gateway.server.app import GatewayThread
from tests import harness
from tests.models import ONNX_OPSET, make_onnx_mlp, mlp_reference

IN, HIDDEN = 16, (32,)
ISOLATED = {"isolation": "process"}
needs_landlock = pytest.mark.skipif(landlock.abi_version() <= 0, reason="this kernel has no Landlock")


def _leak_model(location: str, n: int) -> ModelProto:
    """Finding 1 of the hardening issue: a local function whose Constant is EXTERNAL data at `location`."""
    tensor = TensorProto(name="v", data_type=TensorProto.UINT8, dims=[n], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", str(n))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    const = helper.make_node("Constant", [], ["c"], value=tensor)
    function = helper.make_function(
        "evil",
        "Leak",
        ["x"],
        ["y"],
        [const, helper.make_node("Identity", ["c"], ["y"])],
        [helper.make_opsetid("", ONNX_OPSET)],
    )
    graph = helper.make_graph(
        [helper.make_node("Leak", ["x"], ["out"], domain="evil")],
        "attack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("out", TensorProto.UINT8, [n])],
    )
    imports = [helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid("evil", 1)]
    return helper.make_model(graph, opset_imports=imports, functions=[function])


@pytest.fixture
def policy_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ONNX model policy switched off in the gateway's process (where it is enforced), for this test only."""
    monkeypatch.setattr(onnx_policy, "check_onnx_model", lambda model: None)


@pytest.fixture
def sandbox_with_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Workers start in a folder holding a copy of the gateway's key at certs/gateway.key (not empty, as it
    should be), so only the Landlock ruleset stands between the model and the key."""
    made: list[Path] = []

    def folder() -> str:
        path = tmp_path / f"sandbox{len(made)}"
        (path / "certs").mkdir(parents=True)
        made.append(path)
        return str(path)

    monkeypatch.setattr(process, "sandbox_folder", folder)
    return tmp_path


def _secret_parts(key: Path) -> list[bytes]:
    """Pieces of the key that a leak would show: the whole file and each base64 line of the PEM body."""
    data = key.read_bytes()
    return [data] + [line for line in data.splitlines() if len(line) >= 16 and not line.startswith(b"-----")]


def test_exploit_reads_the_key_when_nothing_stops_it(
    policy_off: None, sandbox_with_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: policy off, Landlock off, the key in the worker's folder: the model's output IS the key.
    (So the refusals below are the sandbox's doing, not a broken exploit.)"""
    env = harness.make_env(sandbox_with_key / "world")
    key = env.certs / "gateway.key"
    original = process.sandbox_folder

    def with_key() -> str:
        folder = original()
        shutil.copy(key, Path(folder) / "certs" / "gateway.key")
        return folder

    monkeypatch.setattr(process, "sandbox_folder", with_key)
    files = {"model.onnx": _leak_model("certs/gateway.key", key.stat().st_size).SerializeToString()}
    model = load_model(files, BackendConfig(isolation="process", landlock=False), "evil:1")
    try:
        assert model.infer({"x": np.zeros(1, np.float32)})["out"].tobytes() == key.read_bytes()
    finally:
        model.close()


@needs_landlock
def test_v1_exploit_in_an_isolated_worker_reads_nothing(
    policy_off: None,
    sandbox_with_key: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The hardening issue's V1 exploit with the model policy off, against an isolated gateway: relative to
    the server's cwd (where certs/ is), absolute, and relative inside a worker folder that holds a copy of
    the key. Every version is REFUSED at load, the inference fails, and the key is in no response or log."""
    caplog.set_level(logging.DEBUG)
    env = harness.make_env(sandbox_with_key / "world").with_config(backend=ISOLATED)
    key = env.certs / "gateway.key"
    size = key.stat().st_size
    original = process.sandbox_folder

    def with_key() -> str:
        folder = original()
        shutil.copy(key, Path(folder) / "certs" / "gateway.key")
        return folder

    monkeypatch.setattr(process, "sandbox_folder", with_key)
    monkeypatch.chdir(env.root)  # the finding: the path resolved against the server's working directory
    harness.seal_model(env, "good", 1, make_onnx_mlp(IN, HIDDEN, 1, seed=1))
    locations = ["certs/gateway.key", str(key), "./certs/gateway.key"]
    for version, location in enumerate(locations, start=1):
        harness.seal_model(env, "evil", version, {"model.onnx": _leak_model(location, size).SerializeToString()})
    messages: list[str] = []
    with GatewayThread(env.config.replaced(repository={"version_policy": "specific", "versions": (1, 2, 3)})) as gw:
        deadline = time.time() + 60
        while True:
            states = {(s.name, s.version): s for s in gw.manager.status()}
            evil = [states.get(("evil", v)) for v in (1, 2, 3)]
            good = states.get(("good", 1))
            if good is not None and good.state.name == "SERVING" and all(s and s.state.name == "REFUSED" for s in evil):
                break
            assert time.time() < deadline, f"states: {states}"
            time.sleep(0.05)
        messages += [s.reason for s in evil if s is not None]
        assert all(s is not None and "the model worker refused the model" in s.reason for s in evil)
        # relative paths find the key in the worker's folder, and Landlock refuses the open: EACCES (13)
        assert all(s is not None and s.reason.endswith(": 13") for s in (evil[0], evil[2])), messages
        headers = {"authorization": "Bearer " + harness.token(env, "infer:*")}
        with harness.triton(env, gw.grpc_port) as client:
            for asked in ("", "1", "2", "3"):
                inp = grpcclient.InferInput("x", [1], "FP32")
                inp.set_data_from_numpy(np.zeros(1, np.float32))
                with pytest.raises(InferenceServerException) as caught:
                    client.infer("evil", [inp], model_version=asked, headers=headers)
                assert caught.value.status() in ("StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE")
                messages.append(str(caught.value))
            x = np.random.default_rng(0).standard_normal((2, IN)).astype(np.float32)
            inp = grpcclient.InferInput("input", [2, IN], "FP32")
            inp.set_data_from_numpy(x)
            out = client.infer("good", [inp], headers=headers).as_numpy("output")
            np.testing.assert_allclose(out, mlp_reference(IN, HIDDEN, 1, seed=1)(x), rtol=1e-4, atol=1e-4)
        audit = env.audit.read_bytes()
    gw.manager.close()
    captured = capfd.readouterr()
    logs = [audit, caplog.text.encode(), captured.out.encode(), captured.err.encode(), *(m.encode() for m in messages)]
    for part in _secret_parts(key):
        assert not any(part in text for text in logs), "the key leaked"


def _worker_pids() -> list[int]:
    """Live worker processes started by this process (from /proc: parent pid and command line)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"gateway.backends.isolated.worker" in cmdline:
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def loaded(tmp_path: Path) -> Iterator[tuple[harness.Env, Any]]:
    env = harness.make_env(tmp_path).with_config(backend=ISOLATED)
    harness.seal_model(env, "mlp", 1, make_onnx_mlp(IN, HIDDEN, 1, seed=1))
    harness.seal_model(env, "other", 1, make_onnx_mlp(IN, HIDDEN, 1, seed=2))
    with GatewayThread(env.config) as gw:
        deadline = time.time() + 60
        while sum(s.state.name == "SERVING" for s in gw.manager.status()) < 2:
            assert time.time() < deadline
            time.sleep(0.05)
        yield env, gw
    gw.manager.close()  # Gateway.stop() stops polling only; closing the models stops their workers
    assert not _worker_pids(), "workers outlived the gateway"


def test_kill_9_of_a_worker_under_load(loaded: tuple[harness.Env, Any]) -> None:
    """3,000 requests at concurrency 16 while the model's worker is killed (SIGKILL) after 1,000: failures
    are UNAVAILABLE and no more than the calls in flight then, answers resume within 2 s, the other model
    is untouched, and the crash is in the audit log and the metrics."""
    env, gw = loaded
    total, concurrency, kill_after = 3000, 16, 1000
    headers = {"authorization": "Bearer " + harness.token(env, "infer:*")}
    x = np.random.default_rng(0).standard_normal((4, IN)).astype(np.float32)
    want = mlp_reference(IN, HIDDEN, 1, seed=1)(x)
    lock = threading.Lock()
    issued = [0]
    done: list[tuple[float, float, str]] = []  # (start, end, "OK" or the status)
    wrong: list[int] = []
    victim = gw.manager.get("mlp").model.pid
    other_pid = gw.manager.get("other").model.pid
    killed_at = [0.0]

    def run() -> None:
        with harness.triton(env, gw.grpc_port) as client:
            inp = grpcclient.InferInput("input", [4, IN], "FP32")
            inp.set_data_from_numpy(x)
            while True:
                with lock:
                    if issued[0] >= total:
                        return
                    issued[0] += 1
                    if issued[0] == kill_after:
                        os.kill(victim, signal.SIGKILL)
                        killed_at[0] = time.monotonic()
                began = time.monotonic()
                try:
                    out = client.infer("mlp", [inp], headers=headers).as_numpy("output")
                    status = "OK"
                    if not np.allclose(out, want, rtol=1e-4, atol=1e-4):
                        wrong.append(1)
                except InferenceServerException as exc:
                    status = str(exc.status())
                with lock:
                    done.append((began, time.monotonic(), status))

    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    elapsed = time.monotonic() - started
    kill = killed_at[0]
    assert len(done) == total and not wrong and kill
    failures = [d for d in done if d[2] != "OK"]
    in_flight = sum(1 for b, e, _ in done if b <= kill <= e)
    assert len(failures) <= in_flight <= concurrency, (len(failures), in_flight)
    assert all(status == "StatusCode.UNAVAILABLE" for _, _, status in failures)
    resumed = min(e for b, e, s in done if s == "OK" and e > kill)
    assert resumed - kill < 2.0, f"serving again after {resumed - kill:.2f} s"
    assert gw.manager.get("mlp").model.pid not in (0, victim)
    assert gw.manager.get("other").model.pid == other_pid  # the other model's worker never noticed
    crashed = [
        r
        for r in env.audit_lines(gw)
        if r.get("method") == "worker:crashed" and r.get("model") == "mlp" and r.get("version") == "1"
    ]
    assert crashed and crashed[0]["status"] == "UNAVAILABLE" and f"pid {victim}" in crashed[0]["reason"]
    sample = gw.metrics.registry.get_sample_value
    assert sample("sealgate_model_worker_events_total", {"model": "mlp", "event": "crashed"}) == 1
    assert sample("sealgate_model_worker_events_total", {"model": "mlp", "event": "restarted"}) == 1
    assert sample("sealgate_model_worker_landlock_abi") == landlock.abi_version()
    print(f"{total} requests in {elapsed:.1f} s, {len(failures)} failed, {in_flight} in flight at the kill")


def test_a_crash_looping_model_fails_over_to_the_previous_version(tmp_path: Path) -> None:
    """v2's worker is killed worker_max_crashes times: v2 is marked failed (audited), its calls are UNAVAILABLE,
    and the manager's runtime failover (Unavailable counts as a backend error) pins v1, which then answers."""
    env = harness.make_env(tmp_path).with_config(
        backend={**ISOLATED, "worker_max_crashes": 2, "worker_restart_backoff_s": 0.0}
    )
    harness.seal_model(env, "mlp", 1, make_onnx_mlp(IN, HIDDEN, 1, seed=1))
    harness.seal_model(env, "mlp", 2, make_onnx_mlp(IN, HIDDEN, 1, seed=2))
    x = np.random.default_rng(0).standard_normal((2, IN)).astype(np.float32)
    headers = {"authorization": "Bearer " + harness.token(env, "infer:*")}
    with GatewayThread(env.config) as gw:
        deadline = time.time() + 60
        while not any(s.version == 2 and s.state.name == "SERVING" for s in gw.manager.status()):
            assert time.time() < deadline
            time.sleep(0.05)
        model = gw.manager.get("mlp").model
        first = model.pid
        os.kill(first, signal.SIGKILL)
        while model.pid in (0, first):
            assert time.time() < deadline
            time.sleep(0.02)
        os.kill(model.pid, signal.SIGKILL)
        while not model.failed:
            assert time.time() < deadline
            time.sleep(0.02)
        statuses = []
        with harness.triton(env, gw.grpc_port) as client:
            inp = grpcclient.InferInput("input", [2, IN], "FP32")
            inp.set_data_from_numpy(x)
            for _ in range(60):
                try:
                    out = client.infer("mlp", [inp], headers=headers).as_numpy("output")
                    break
                except InferenceServerException as exc:
                    statuses.append(str(exc.status()))
                    time.sleep(0.02)
        np.testing.assert_allclose(out, mlp_reference(IN, HIDDEN, 1, seed=1)(x), rtol=1e-4, atol=1e-4)
        assert statuses and set(statuses) == {"StatusCode.UNAVAILABLE"} and len(statuses) <= 30
        lines = env.audit_lines(gw)
        gw.manager.close()
    assert any(r["method"] == "worker:failed" and r["model"] == "mlp" and r["version"] == "2" for r in lines)
    assert any(r["method"].endswith("rollout.failover") and r["model"] == "mlp" for r in lines)
