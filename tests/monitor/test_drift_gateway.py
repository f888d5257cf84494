"""Drift monitoring through a real gateway: a digits model sealed with its reference histograms (from the
training split), in-distribution then shifted inputs sent by stock tritonclient over mTLS + JWT, the gauges read
from the real metrics listener, and the real `sealgate monitor` console script (table and --json)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from gateway.monitor.report import DRIFT, OK, WAITING, report
from gateway.release.drift_reference import with_drift_reference
from gateway.server.app import GatewayThread
from tests import harness
from tests.models import make_onnx_mlp

SEALGATE = Path(sys.executable).with_name("sealgate")
MODEL, PLAIN = "digits", "plain"
THRESHOLD = 0.2


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits, pixels scaled to [0, 1], split 80/20 with a fixed seed: (train, test)."""
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    cut = int(len(x) * 0.8)
    return x[order[:cut]], x[order[cut:]]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return _digits()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, data: tuple[np.ndarray, np.ndarray]) -> harness.Env:
    """digits (64 → 10 MLP) with a drift reference of the training split; `plain` without one."""
    env = harness.make_env(tmp_path_factory.mktemp("drift"))
    files = make_onnx_mlp(64, (32,), 10, seed=3)
    prov = with_drift_reference({}, data[0], files["model.onnx"], source="digits training split")
    harness.seal_model(env, MODEL, 1, files, provenance=prov)
    harness.seal_model(env, PLAIN, 1, make_onnx_mlp(64, (8,), 1, seed=4))
    monitor = {"sample_rate": 1.0, "min_samples": 300, "psi_threshold": THRESHOLD}
    return env.with_config(server={"rest": False}, monitor=monitor)


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Any]:
    with GatewayThread(env.config) as gw:
        deadline = time.time() + 60
        while sum(s.state.name == "SERVING" for s in gw.manager.status()) < 2:
            assert time.time() < deadline, "models never served"
            time.sleep(0.05)
        yield gw


def _send(env: harness.Env, gw: Any, model: str, x: np.ndarray, batch: int = 8) -> None:
    """Infer `x` in batches with tritonclient over mTLS + JWT; every call must succeed."""
    client = harness.triton(env, gw.grpc_port)
    headers = {"authorization": f"Bearer {harness.token(env)}"}
    try:
        for start in range(0, len(x), batch):
            rows = x[start : start + batch]
            inp = grpcclient.InferInput("input", list(rows.shape), "FP32")
            inp.set_data_from_numpy(rows)
            client.infer(model, [inp], headers=headers)
    finally:
        client.close()


def _url(gw: Any) -> str:
    return f"http://127.0.0.1:{gw.metrics_port}/metrics"


def _scrape(gw: Any) -> str:
    with urllib.request.urlopen(_url(gw), timeout=10) as answer:
        return str(answer.read().decode())


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    run_env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run([str(SEALGATE), *args], capture_output=True, text=True, timeout=120, env=run_env)


def test_in_distribution_is_ok_then_shifted_inputs_drift(
    env: harness.Env, gateway: Any, data: tuple[np.ndarray, np.ndarray]
) -> None:
    """Held-out digits stay under the threshold (OK); the same rows with inverted pixels cross it (DRIFT),
    and the features that moved most are listed first. A model without a reference exports nothing."""
    _, test = data
    _send(env, gateway, MODEL, test[:200])
    first = report(_scrape(gateway), MODEL)
    assert first["versions"][0]["samples"] == 200 and first["verdict"] == WAITING, "below min_samples: no PSI"
    _send(env, gateway, MODEL, test[200:])
    text = _scrape(gateway)
    calm = report(text, MODEL)
    assert calm["versions"][0]["samples"] == len(test)
    assert calm["verdict"] == OK and calm["versions"][0]["psi_max"] < THRESHOLD, calm
    assert f'sealgate_drift_psi_max{{model="{MODEL}",version="1"}}' in text
    _send(env, gateway, PLAIN, test[:16])
    assert f'model="{PLAIN}"' not in "".join(line for line in _scrape(gateway).splitlines() if "drift" in line)

    _send(env, gateway, MODEL, 1.0 - test)
    drifted = report(_scrape(gateway), MODEL, top=5)
    version = drifted["versions"][0]
    assert drifted["verdict"] == DRIFT and version["psi_max"] > THRESHOLD, drifted
    assert version["samples"] == 2 * len(test) and version["mismatched"] == 0
    psis = [f["psi"] for f in version["features"]]
    assert len(psis) == 5 and psis == sorted(psis, reverse=True) and psis[0] == version["psi_max"]


def test_sealgate_monitor_prints_a_table_and_json(env: harness.Env, gateway: Any) -> None:
    """The console script reads the metrics listener: a table with the verdict, or one JSON object; an
    unknown model and an unreachable listener are one-line errors."""
    _send(env, gateway, MODEL, np.ones((4, 64), dtype=np.float32))  # the module's first test may run alone
    table = _cli("monitor", MODEL, "--metrics-url", _url(gateway), "--top", "3")
    assert table.returncode == 0, table.stderr
    assert f"{MODEL} v1" in table.stdout and "input[" in table.stdout and "max PSI" in table.stdout
    assert any(word in table.stdout for word in (DRIFT, OK, WAITING))

    as_json = _cli("monitor", MODEL, "--metrics-url", _url(gateway), "--json", "--threshold", "1000")
    assert as_json.returncode == 0, as_json.stderr
    lines = as_json.stdout.strip().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["model"] == MODEL and doc["threshold"] == 1000 and doc["min_samples"] == 300
    assert {v["version"] for v in doc["versions"]} == {1} and doc["verdict"] in (OK, WAITING)

    for args, needle in (
        (("monitor", PLAIN, "--metrics-url", _url(gateway)), "no drift figures"),
        (("monitor", MODEL, "--metrics-url", "http://127.0.0.1:9/metrics"), "cannot read metrics"),
        (("monitor", MODEL, "--metrics-url", "file:///etc/passwd"), "http://"),
    ):
        failed = _cli(*args)
        errors = failed.stderr.strip().splitlines()
        assert failed.returncode == 1 and len(errors) == 1 and errors[0].startswith("error: "), failed.stderr
        assert needle in errors[0] and "Traceback" not in failed.stderr


def test_sealgate_release_records_the_reference_and_the_gateway_monitors_it(
    env: harness.Env, gateway: Any, data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """`sealgate release --data eval.npz` seals a drift_reference of the evaluation data into provenance (the
    file named as its source, aggregates only); once v2 serves, its requests are monitored under version 2."""
    import onnxruntime as ort

    from gateway.monitor import reference as ref

    _, test = data
    model = make_onnx_mlp(64, (32,), 10, seed=3)["model.onnx"]
    labels = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"input": test})[0].argmax(1)
    np.savez(tmp_path / "eval.npz", x=test, y=labels)
    (tmp_path / "model.onnx").write_bytes(model)
    released = _cli(
        "release", str(tmp_path / "model.onnx"), "--name", MODEL, "--version", "2",
        "--data", str(tmp_path / "eval.npz"), "--baseline", str(tmp_path / "model.onnx"),
        "--key", str(env.certs / "signing.key"), "--recipient", str(env.certs / "gateway.pub"),
        "--max-latency-ratio", "5", "--out", str(tmp_path / "v2.sealed"),
        "--address", f"127.0.0.1:{gateway.grpc_port}", "--dir", str(env.certs),
        "--token", harness.token(env, f"release:{MODEL}"),
    )  # fmt: skip
    assert released.returncode == 0, released.stderr
    deadline = time.time() + 30
    while gateway.manager.default_version(MODEL) != 2:
        assert time.time() < deadline, "v2 never served"
        time.sleep(0.05)
    record = gateway.manager.get(MODEL, 2).provenance[ref.KEY]
    assert "eval.npz" in record["source"] and record["rows"] == len(test)
    assert [item["name"] for item in record["inputs"]] == ["input"] and len(record["inputs"][0]["counts"]) == 64
    _send(env, gateway, MODEL, test[:8])
    state = gateway.dataplane.monitor.state(MODEL, 2)
    assert state is not None and state.figures().samples == 8
