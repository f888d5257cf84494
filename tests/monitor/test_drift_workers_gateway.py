"""Drift with `[server] workers = 2`, end to end: a real `sealgate serve` supervisor whose two front-end workers
each get a share of the held-out digits (fresh mTLS connections, spread by the kernel), and the real `sealgate
monitor --workers 2` merging their metrics listeners (port and port + 1). Its figures equal those of one
gateway process fed the same rows, while each worker alone has too few rows for any PSI."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from gateway.monitor.report import WAITING, report
from gateway.release.drift_reference import with_drift_reference
from gateway.server.app import GatewayThread
from tests import harness
from tests.models import make_onnx_mlp
from tests.monitor.test_drift_gateway import _digits
from tests.server.test_workers import Served

SEALGATE = Path(sys.executable).with_name("sealgate")
MODEL = "digits"
MONITOR = {"sample_rate": 1.0, "min_samples": 300, "psi_threshold": 0.2}


def _two_free_ports() -> int:
    """A port p with p + 1 free too (worker i listens on the metrics port + i)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise AssertionError("no two consecutive free ports")


def _send(env: harness.Env, port: int, x: np.ndarray, batch: int = 8) -> None:
    """Infer `x` in batches, each call on a fresh connection (so the kernel spreads them over the workers)."""
    headers = {"authorization": f"Bearer {harness.token(env)}"}
    for start in range(0, len(x), batch):
        rows = x[start : start + batch]
        inp = grpcclient.InferInput("input", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows)
        with harness.triton(env, port) as client:
            client.infer(MODEL, [inp], headers=headers)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def _samples(text: str) -> int:
    found = re.search(rf'sealgate_drift_samples{{model="{MODEL}",version="1"}} (\S+)', text)
    return int(float(found.group(1))) if found else 0


def test_sealgate_monitor_merges_two_workers_into_the_single_process_figure(tmp_path: Path) -> None:
    train, test = _digits()
    env = harness.make_env(tmp_path)
    files = make_onnx_mlp(64, (32,), 10, seed=3)
    prov = with_drift_reference({}, train, files["model.onnx"], source="digits training split")
    harness.seal_model(env, MODEL, 1, files, provenance=prov)
    metrics = _two_free_ports()
    toml = env.root / "sealgate.toml"
    text = toml.read_text().replace('metrics_address = "127.0.0.1:0"', f'metrics_address = "127.0.0.1:{metrics}"')
    toml.write_text(text + "\n[monitor]\n" + "".join(f"{k} = {v}\n" for k, v in MONITOR.items()))
    rows = np.concatenate([test, 1.0 - test[:40]])  # mostly in distribution, a few inverted rows

    served = Served(env, 2)
    try:
        served.wait_serving(2)
        _send(env, served.grpc_port, rows)
        shares = [_samples(_scrape(metrics + i)) for i in range(2)]
        first = f"http://127.0.0.1:{metrics}/metrics"  # worker 0's; --workers 2 adds port + 1
        merged_run = subprocess.run(
            [str(SEALGATE), "monitor", MODEL, "--metrics-url", first, "--workers", "2", "--json", "--top", "64"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "120"},
        )
        repeated = subprocess.run(
            [str(SEALGATE), "monitor", MODEL]
            + [a for i in range(2) for a in ("--metrics-url", f"http://127.0.0.1:{metrics + i}/metrics")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        alone = [report(_scrape(metrics + i), MODEL) for i in range(2)]
    finally:
        served.stop()
    assert served.proc.returncode == 0
    assert sum(shares) == len(rows) and min(shares) > 0, shares  # both workers got a share, every row sampled
    assert [a["verdict"] for a in alone] == [WAITING, WAITING]  # each below min_samples: no PSI of its own
    assert merged_run.returncode == 0, merged_run.stderr
    merged = json.loads(merged_run.stdout)
    assert repeated.returncode == 0 and "max PSI" in repeated.stdout, repeated.stderr

    single_env = env.with_config(monitor=MONITOR)
    with GatewayThread(single_env.config) as gw:
        deadline = time.time() + 60
        while gw.dataplane.model_ready(MODEL) is None:
            assert time.time() < deadline, "the model never served"
            time.sleep(0.05)
        _send(single_env, gw.grpc_port, rows)
        one: dict[str, Any] = report(_scrape(gw.metrics_port), MODEL, top=64)
    (m,), (o,) = merged["versions"], one["versions"]
    assert m["samples"] == o["samples"] == len(rows)
    assert o["psi_max"] is not None and m["psi_max"] == o["psi_max"], (m["psi_max"], o["psi_max"])
    assert m["features"] == o["features"] and merged["verdict"] == one["verdict"]
    assert f"max PSI {o['psi_max']:.4f}" in repeated.stdout
