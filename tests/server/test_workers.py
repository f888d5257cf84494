"""`[server] workers = N`: `sealgate serve` runs a supervisor of N front-end processes sharing the ports.

Racing pushes through the release client to 3 workers never lower a version or corrupt the ledger and every
worker serves the result within 2 s; kill -9 of one of 2 workers under load fails at most the calls in
flight on it, serving goes on, and the supervisor starts a fresh worker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from gateway.release.client import ReleaseClient, RemoteError
from gateway.serving.ledger import LedgerFile
from tests import harness
from tests.models import make_onnx_mlp

SEALGATE = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "sealgate"
IN = 8
START_S = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """A `sealgate serve` supervisor process, with its stderr read in the background."""

    def __init__(self, env: harness.Env, workers: int) -> None:
        self.env = env
        self.grpc_port, self.rest_port = _free_port(), _free_port()
        toml = env.root / f"workers-{workers}.toml"
        text = (env.root / "sealgate.toml").read_text()
        text = re.sub(r'grpc_address = "127.0.0.1:\d+"', f'grpc_address = "127.0.0.1:{self.grpc_port}"', text)
        text = re.sub(r'rest_address = "127.0.0.1:\d+"', f'rest_address = "127.0.0.1:{self.rest_port}"', text)
        text = text.replace("[server]\n", f"[server]\nworkers = {workers}\n", 1)
        if "\n[backend]\n" in text:  # the harness wrote one (SEALGATE_TEST_ISOLATION)
            text = text.replace("\n[backend]\n", "\n[backend]\nintra_op_threads = 1\n", 1)
        else:
            text += "\n[backend]\nintra_op_threads = 1\n"
        toml.write_text(text)
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [str(SEALGATE), "serve", "--config", str(toml)], stderr=subprocess.PIPE, text=True, cwd=env.root
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())

    def serving(self) -> dict[int, int]:
        """worker index -> pid of its latest "serving" line."""
        found: dict[int, int] = {}
        for line in list(self.lines):
            m = re.search(r"sealgate worker (\d+) serving \(pid (\d+)\)", line)
            if m:
                found[int(m.group(1))] = int(m.group(2))
        return found

    def wait_serving(self, count: int, timeout: float = START_S, exclude: set[int] | None = None) -> dict[int, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.serving()
            if len(pids) >= count and not (exclude and exclude & set(pids.values())):
                return pids
            assert self.proc.poll() is None, "\n".join(self.lines[-20:])
            time.sleep(0.1)
        raise AssertionError("workers did not come up:\n" + "\n".join(self.lines[-20:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    env = harness.make_env(tmp_path_factory.mktemp("workers"))
    harness.seal_model(env, "mlp", 1, make_onnx_mlp(IN, (8,), 1, seed=1))
    return env


def _version(env: harness.Env, port: int) -> str:
    """The version a fresh connection (so any worker) serves by default."""
    headers = {"authorization": "Bearer " + harness.token(env, "infer:mlp")}
    x = np.ones((1, IN), dtype=np.float32)
    inp = grpcclient.InferInput("input", [1, IN], "FP32")
    inp.set_data_from_numpy(x)
    with harness.triton(env, port) as client:
        return str(client.infer("mlp", [inp], headers=headers).get_response().model_version)


@pytest.fixture
def three(env: harness.Env) -> Iterator[Served]:
    served = Served(env, 3)
    try:
        served.wait_serving(3)
        yield served
    finally:
        served.stop()
    assert served.proc.returncode == 0


def test_racing_pushes_to_three_workers_never_lower_a_version(env: harness.Env, three: Served, tmp_path: Path) -> None:
    assert len(set(three.serving().values())) == 3
    target = harness.release_target(env, three.grpc_port, "release:mlp")
    files = {
        v: harness.seal_model(env, "mlp", v, make_onnx_mlp(IN, (8,), 1, seed=v), out=tmp_path / f"{v}.sealed")
        for v in range(2, 9)
    }

    def push(version: int, path: Path | None = None) -> str:
        with ReleaseClient(target, timeout_s=60) as client:  # one connection each: spread over the workers
            try:
                client.push(path or files[version], "mlp", version)
            except RemoteError as exc:
                return exc.code.name
        return "OK"

    racing = [3, 5, 2, 7, 4, 6]
    with ThreadPoolExecutor(len(racing)) as pool:
        outcomes = dict(zip(racing, pool.map(push, racing), strict=True))
    accepted = sorted(v for v, o in outcomes.items() if o == "OK")
    assert 7 in accepted and all(o in ("OK", "FAILED_PRECONDITION") for o in outcomes.values()), outcomes
    # an accepted version is above every version accepted before it: the accepted ones, in ledger order, rise
    lower = harness.seal_model(env, "mlp", 3, make_onnx_mlp(IN, (8,), 1, seed=99), out=tmp_path / "3b.sealed")
    assert push(3, lower) == "FAILED_PRECONDITION"  # other bytes for a version below the floor: refused
    pushed_at = time.monotonic()
    assert push(8) == "OK"
    while {_version(env, three.grpc_port) for _ in range(9)} != {"8"}:  # fresh connections reach every worker
        assert time.monotonic() - pushed_at < 2.0
        time.sleep(0.05)
    ledger = LedgerFile(env.models).load()
    assert ledger.highest_seen("mlp") == 8
    stored = sorted(int(p.stem) for p in (env.models / "mlp").glob("*.sealed"))
    assert stored == sorted({1, *accepted, 8})  # nothing refused was left behind
    json.loads((env.models / ".sealgate-state.json").read_text())  # still one valid document


def test_kill_9_of_a_front_end_worker_under_load(env: harness.Env, tmp_path: Path) -> None:
    served = Served(env, 2)
    try:
        pids = served.wait_serving(2)
        headers = {"authorization": "Bearer " + harness.token(env, "infer:mlp")}
        x = np.ones((2, IN), dtype=np.float32)
        stop = threading.Event()
        counts = {"ok": 0, "failed": 0}
        lock = threading.Lock()
        concurrency = 8

        def load() -> None:
            client = harness.triton(env, served.grpc_port)
            inp = grpcclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            calls = 0
            while not stop.is_set() and calls < 400:
                calls += 1
                try:
                    client.infer("mlp", [inp], headers=headers, client_timeout=10)
                    key = "ok"
                except InferenceServerException:
                    key = "failed"
                    client.close()
                    client = harness.triton(env, served.grpc_port)  # a new connection, as a client retries
                with lock:
                    counts[key] += 1
            client.close()

        threads = [threading.Thread(target=load) for _ in range(concurrency)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        victim = pids[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        with lock:
            failed_before = counts["failed"]
        ok_after = None
        while ok_after is None and time.monotonic() - killed_at < 2.0:
            try:
                _version(env, served.grpc_port)
                ok_after = time.monotonic() - killed_at
            except InferenceServerException:
                time.sleep(0.05)
        assert ok_after is not None and ok_after < 2.0
        restarted = served.wait_serving(2, timeout=60, exclude={victim})
        stop.set()
        for t in threads:
            t.join(30)
        assert failed_before == 0
        assert counts["failed"] <= concurrency, counts  # at most the calls in flight on the killed worker
        assert counts["ok"] > 0
        assert restarted[0] != victim and restarted[1] == pids[1]
        assert any("worker 0 exited" in line for line in served.lines)
    finally:
        served.stop()
    assert served.proc.returncode == 0


def test_workers_knob_is_validated(env: harness.Env) -> None:
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError, match="workers"):
        env.with_config(server={"workers": 0})
    assert grpc is not None
