"""The demo end to end (small: 3 clients, 2 rounds), and its final table checked against a fresh gateway:
the accuracy it prints is the accuracy the gateway's answers give on the held-out data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from gateway.artifact.keys import load_identity, load_trusted
from gateway.artifact.sealed import TrustStore, open_artifact
from gateway.config import load_config
from gateway.demo import MODEL, SEED, TASK, gateway_accuracy, prepare_workdir, run_demo
from gateway.errors import ConfigError
from gateway.server.app import GatewayThread
from tests import harness


def test_demo_table_is_what_the_gateway_answers(tmp_path: Path) -> None:
    from fl.data import heldout_data

    workdir = tmp_path / "demo"
    result = run_demo(workdir, clients=3, rounds=2, epsilon=3.0)
    summary = json.loads((workdir / "demo-summary.json").read_text())
    assert [r["version"] for r in summary["rows"]] == [1, 2]
    x, y = heldout_data(TASK, SEED)
    assert summary["heldout_rows"] == len(y)
    # v2 through a fresh gateway over the demo's own repository and keys
    env = harness.Env(workdir, workdir / "certs", workdir / "models", load_config(workdir / "sealgate.toml"))
    with GatewayThread(env.config) as gw, harness.triton(env, gw.grpc_port) as client:
        headers = {"authorization": "Bearer " + harness.token(env, f"infer:{MODEL}")}
        acc, version = gateway_accuracy(client, headers, x, y)
    assert version == "2"
    assert acc == pytest.approx(summary["rows"][1]["accuracy"], abs=1e-12)
    assert acc > 0.8
    # v1: open its sealed file and run it directly
    opened = open_artifact(
        workdir / "models" / MODEL / "1.sealed",
        [load_identity(workdir / "certs" / "gateway.key")],
        TrustStore.of([load_trusted(workdir / "certs" / "signing.pub")]),
    )
    sess = ort.InferenceSession(opened.files["model.onnx"], providers=["CPUExecutionProvider"])
    acc1 = float((sess.run(None, {"input": x.astype(np.float32)})[0].argmax(1) == y).mean())
    assert acc1 == pytest.approx(summary["rows"][0]["accuracy"], abs=1e-12)
    # the privacy the table reports is the one sealed into v2's provenance
    v2 = open_artifact(
        workdir / "models" / MODEL / "2.sealed",
        [load_identity(workdir / "certs" / "gateway.key")],
        TrustStore.of([load_trusted(workdir / "certs" / "signing.pub")]),
    )
    assert v2.provenance["privacy"]["epsilon"] == pytest.approx(summary["rows"][1]["epsilon"])
    assert v2.provenance["privacy"]["epsilon"] <= 3.0 + 1e-6
    assert v2.provenance["gates"]["passed"] is True
    assert v2.provenance["parent_version"] == 1
    assert result.rows[1].size_bytes < result.rows[0].size_bytes


def test_demo_refuses_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a sealgate demo folder"):
        prepare_workdir(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
