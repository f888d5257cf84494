"""TensorFlow SavedModels in isolated workers (issue 12): served through a real gateway with the same outputs
as in-process TF, from a worker that holds no key; the op policy refuses in the gateway before any worker
starts (and again in the worker); kill -9 of a TF worker is restarted; TF's own threads are sandboxed.

Each TF worker is a fresh interpreter importing TensorFlow (seconds): the gateway's workers are shared by
the module's tests, in file order (the kill test comes last); those tests are `slow` (about 20-30 s together
here), the ones without a gateway run by default (about 12 s).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from gateway.backends import BackendConfig, load_model, tf_policy
from gateway.backends.isolated import IsolatedModel, events, landlock, process, tf_worker
from gateway.errors import UnsafeModel, UnsupportedFormat
from gateway.server.app import GatewayThread
from tests import harness
from tests.backends.test_isolation import _wait, needs_landlock
from tests.backends.test_isolation_gateway import _worker_pids
from tests.models import make_tf_lookup_savedmodel, make_tf_savedmodel
from tests.security.test_model_policy import _tf_file_op_model

SECRET_ENV = "SEALGATE_TEST_TF_SECRET"
ISOLATED = BackendConfig(isolation="process", max_message_bytes=1 << 20)
MLP_X = np.random.default_rng(4).standard_normal((5, 8)).astype(np.float32)
WORDS = np.array([b"banana", b"", "é".encode(), b"apple", b"cherry" * 100], dtype=object)


class World:
    """The module's gateway: two TF models serving in workers, one refused by the op policy."""

    def __init__(self, env: harness.Env, gateway: Any, files: dict[str, dict[str, bytes]], seen: list[Any]) -> None:
        self.env, self.gateway, self.files, self.seen = env, gateway, files, seen

    def model(self, name: str) -> IsolatedModel:
        model = self.gateway.manager.get(name).model
        assert isinstance(model, IsolatedModel)
        return model

    def infer(self, name: str) -> dict[str, np.ndarray]:
        """One call through tritonclient over mTLS with a JWT: the model's outputs by name."""
        headers = {"authorization": "Bearer " + harness.token(self.env, "infer:*")}
        if name == "words":
            inp = grpcclient.InferInput("words", [len(WORDS)], "BYTES")
            inp.set_data_from_numpy(WORDS)
            outputs = ["ids"]
        else:
            inp = grpcclient.InferInput("input", list(MLP_X.shape), "FP32")
            inp.set_data_from_numpy(MLP_X)
            outputs = ["output"]
        with harness.triton(self.env, self.gateway.grpc_port) as client:
            result = client.infer(name, [inp], headers=headers)
            return {out: result.as_numpy(out) for out in outputs}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("tfiso")
    env = harness.make_env(root).with_config(backend={"isolation": "process"})
    files = {
        "mlp": make_tf_savedmodel(root / "src", 8, 3, seed=2),
        "words": make_tf_lookup_savedmodel(root / "src"),
        "tfevil": _tf_file_op_model(root / "src", "read", env.certs / "gateway.key"),
    }
    for name, model in files.items():
        harness.seal_model(env, name, 1, model)
    seen: list[Any] = []
    unsubscribe = events.subscribe(seen.append)
    os.environ[SECRET_ENV] = "must-not-reach-a-worker"
    try:
        with GatewayThread(env.config) as gw:
            deadline = time.time() + 120
            while True:
                states = {s.name: s.state.name for s in gw.manager.status()}
                if states == {"mlp": "SERVING", "words": "SERVING", "tfevil": "REFUSED"}:
                    break
                assert time.time() < deadline, f"states: {states}"
                time.sleep(0.1)
            yield World(env, gw, files, seen)
        gw.manager.close()  # closing the models stops their workers
        assert not _worker_pids(), "workers outlived the gateway"
    finally:
        unsubscribe()
        del os.environ[SECRET_ENV]


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Same names, dtypes, shapes and bytes (element lists for BYTES)."""
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        assert got[name].tobytes() == want[name].tobytes(), name


@pytest.mark.slow
def test_tf_models_serve_from_workers_with_in_process_outputs(world: World) -> None:
    """Through the gateway (gRPC, mTLS, JWT), a Keras MLP and a string-lookup model with an asset answer
    byte-for-byte like the same SavedModels loaded in-process by tf_backend; each runs in its own worker."""
    for name, inputs in (("mlp", {"input": MLP_X}), ("words", {"words": WORDS})):
        model = world.model(name)
        local = load_model(world.files[name])
        try:
            assert model.platform == local.platform == "tensorflow_savedmodel"
            assert model.inputs == local.inputs and model.outputs == local.outputs
            _same(world.infer(name), local.infer(inputs))
        finally:
            local.close()
    assert world.infer("words")["ids"].tolist() == [1, -1, -1, 0, -1]
    assert world.model("mlp").pid != world.model("words").pid


@pytest.mark.slow
def test_tf_worker_holds_nothing_of_the_gateways(world: World) -> None:
    """The TF worker is another process (the worker module in a fresh interpreter), holds no descriptor of a
    file (certs/ least of all), has none of the gateway's environment, and sandboxed itself where the kernel
    can: Landlock ABI reported, and no_new_privs (set with the ruleset) on every thread, TF's pools included,
    so no thread of TensorFlow's predates the ruleset (a ruleset binds only threads started after it)."""
    model = world.model("mlp")
    pid = model.pid
    assert pid not in (0, os.getpid())
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[:5] == [sys.executable.encode(), b"-I", b"-B", b"-m", b"gateway.backends.isolated.worker"]
    cwd = os.readlink(f"/proc/{pid}/cwd")
    targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    certs = str(world.env.certs)
    assert not [t for t in targets if t.startswith(certs)], targets
    for target in targets:
        ok = target == "/dev/null" or target.startswith(("socket:", "/memfd:sealgate-tensors", cwd + "/"))
        assert ok, f"the TF worker holds {target}"
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert SECRET_ENV.encode() not in environ and b"PYTHONPATH" not in environ
    assert model.landlock == landlock.abi_version()
    if landlock.abi_version() > 0:  # every thread, TF's pools included, began after the ruleset (set with it)
        tasks = os.listdir(f"/proc/{pid}/task")
        assert len(tasks) > 1
        for task in tasks:
            assert "NoNewPrivs:\t1" in Path(f"/proc/{pid}/task/{task}/status").read_text(), task


@pytest.mark.slow
def test_tf_model_outside_the_policy_is_refused_in_the_gateway(world: World) -> None:
    """A SavedModel reading certs/gateway.key with ReadFile: REFUSED at load by the gateway's op policy with
    the op named, not served, and no worker was ever started for it."""
    reason = next(s.reason for s in world.gateway.manager.status() if s.name == "tfevil")
    assert "unsafe TensorFlow model: op 'ReadFile' is not allowed" in reason
    assert not [e for e in world.seen if e.label.startswith("tfevil")]
    with pytest.raises(InferenceServerException) as caught:
        world.infer("tfevil")
    assert caught.value.status() in ("StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE")


@pytest.mark.slow
def test_kill_9_of_a_tf_worker_restarts_it(world: World) -> None:
    """kill -9 of the MLP's worker: the crash is reported and audited, a new worker (new pid) starts and
    serves the same outputs; the other TF model's worker never noticed."""
    model, other = world.model("mlp"), world.model("words")
    victim, other_pid = model.pid, other.pid
    want = world.infer("mlp")
    os.kill(victim, signal.SIGKILL)
    _wait(lambda: model.pid not in (0, victim), 120.0)
    _same(world.infer("mlp"), want)
    assert other.pid == other_pid
    _wait(lambda: [e.kind for e in world.seen if e.label == "mlp:1"][-2:] == [events.CRASHED, events.RESTARTED])
    crash = next(e for e in world.seen if e.kind == events.CRASHED)
    assert crash.pid == victim and "SIGKILL" in crash.detail
    audited = [r for r in world.env.audit_lines(world.gateway) if r.get("method") == "worker:crashed"]
    assert audited and audited[0]["model"] == "mlp" and f"pid {victim}" in audited[0]["reason"]


# --- without a gateway --------------------------------------------------------------------------------
def test_policy_refusal_starts_no_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load_model with isolation: UnsafeModel raised in this process, and no process was started at all."""
    evil = _tf_file_op_model(tmp_path, "read", tmp_path / "secret")
    started: list[Any] = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a))
    with pytest.raises(UnsafeModel, match="'ReadFile' is not allowed"):
        load_model(evil, ISOLATED, "evil:1")
    assert not started


def test_the_worker_checks_the_policy_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth: with the gateway's op policy switched off, the worker's own check (in tf_backend's
    loader) still refuses the model before TensorFlow loads it; nothing is served."""
    monkeypatch.setattr(tf_policy, "check_saved_model", lambda files: None)
    evil = _tf_file_op_model(tmp_path, "read", tmp_path / "secret")
    before = set(_worker_pids())  # the module's gateway may hold workers of its own
    with pytest.raises(UnsupportedFormat, match=r"the model worker refused the model: .*'ReadFile' is not allowed"):
        load_model(evil, ISOLATED, "evil:2")
    assert set(_worker_pids()) <= before


@needs_landlock
def test_tensorflow_threads_are_inside_the_sandbox(tmp_path: Path) -> None:
    """The TF worker's sandbox in a fresh interpreter, made as the worker makes it (tf_worker.prepare, then
    Landlock with tf_worker's read-only rules): a ReadFile op, eager and inside a tf.function (TF's own
    thread pools, created after the ruleset), cannot read a key file it could read before; the granted files
    are the only ones readable."""
    key = tmp_path / "gateway.key"
    key.write_bytes(b"not for models")
    script = textwrap.dedent(
        f"""
        import sys
        from gateway.backends.isolated import landlock, tf_worker
        tf_worker.prepare()
        import tensorflow as tf
        key = {str(key)!r}
        assert open(key, "rb").read()
        print("abi", landlock.restrict(tf_worker.readable()))
        graph = tf.function(lambda: tf.io.read_file(key))
        for attempt in (lambda: tf.io.read_file(key), graph, lambda: open("/proc/self/environ", "rb").read()):
            try:
                attempt()
                print("ALLOWED")
            except (tf.errors.PermissionDeniedError, PermissionError):
                print("denied")
        print("urandom", len(open("/dev/urandom", "rb").read(8)), "ok", float(tf.reduce_sum(tf.ones([3]))))
        """
    )
    env = process.worker_env(str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-I", "-B", "-c", script],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=Path(__file__).resolve().parents[2],
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["abi", str(landlock.abi_version()), *["denied"] * 3, "urandom", "8", "ok", "3.0"]
    assert tf_worker.readable() == [p for p in tf_worker.TF_READABLE if os.path.exists(p)]
