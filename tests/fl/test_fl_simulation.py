"""End to end on Flower's Simulation Engine: 3 DP clients, digits; accuracy rises, ε is the whole run's and
matches an independent min(RDP, PRV) computation; the outputs (ONNX, safetensors, summary) agree with each
other; the engine's scratch (Ray session files, Flower's home) is gone afterwards."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from fl import accounting
from fl.data import client_partitions, heldout_data
from fl.runner import run_federated
from fl.tasks import DigitsMLP, load_weights

CLIENTS, ROUNDS, EPS, DELTA, BATCH = 3, 2, 3.0, 1e-5, 32


def _ray_sessions() -> set[str]:
    """Ray session folders this process started in Ray's default place (Ray names them after the driver's pid)."""
    return {p.name for p in Path("/tmp/ray").glob(f"session_*_{os.getpid()}")}


def test_simulation_accuracy_rises_and_epsilon_is_cumulative(tmp_path: Path) -> None:
    before, home = _ray_sessions(), os.environ.get("FLWR_HOME")
    result = run_federated(
        "digits", clients=CLIENTS, rounds=ROUNDS, epsilon=EPS, delta=DELTA, out_dir=tmp_path, batch_size=BATCH
    )
    # nothing of the engine left behind: its own Ray temp folder and FLWR_HOME are gone, none in Ray's default place
    assert len(result.scratch) == 2 and not any(p.exists() for p in result.scratch)
    assert _ray_sessions() == before and os.environ.get("FLWR_HOME") == home
    rows = result.rows
    assert [r.round for r in rows] == [1, 2] and not result.summary.stopped_early
    assert all(r.clients == CLIENTS and r.dropped == 0 and r.failed == 0 for r in rows)
    # accuracy above chance (10 classes) and rising
    assert result.summary.initial_accuracy < rows[0].accuracy < rows[1].accuracy
    assert rows[1].accuracy > 0.3
    # ε rises across rounds and stays within the target
    assert 0 < rows[0].epsilon < rows[1].epsilon <= EPS

    # independent computation: sizes from the partition, σ/q/steps from the plan's definition
    sizes = sorted(len(p) for p in client_partitions("digits", 0, CLIENTS, None))
    clients = result.privacy["per_client"].values()
    assert sorted(c["num_examples"] for c in clients) == sizes
    for r, row in enumerate(rows, start=1):
        expected = []
        for c in clients:
            batches = math.ceil(c["num_examples"] / BATCH)
            assert c["sample_rate"] == 1 / batches and c["steps_per_round"] == batches
            sigma = accounting.noise_for_target(EPS, DELTA, 1 / batches, ROUNDS * batches)
            assert math.isclose(c["noise_multiplier"], sigma, rel_tol=1e-12)
            expected.append(accounting.tight_epsilon(sigma, 1 / batches, r * batches, DELTA))
        assert math.isclose(row.epsilon, max(expected), rel_tol=1e-6), (row.epsilon, expected)
        assert row.epsilon == row.epsilon_prv < row.epsilon_rdp
    for c in clients:
        assert c["steps"] == ROUNDS * c["steps_per_round"]
        rdp = accounting.epsilon(c["noise_multiplier"], c["sample_rate"], c["steps"], DELTA)
        prv = accounting.prv_epsilon_from_history([(c["noise_multiplier"], c["sample_rate"], c["steps"])], DELTA)
        assert math.isclose(c["epsilon"], min(rdp, prv), rel_tol=1e-6) and prv < rdp
        assert math.isclose(c["epsilon_rdp"], rdp) and math.isclose(c["epsilon_prv"], prv)

    # provenance record and files
    p = result.privacy
    assert p["rounds"] == ROUNDS and p["clients"] == CLIENTS and p["accountant"] == "min(rdp, prv)"
    assert p["dp"] is True and p["warnings"] == [] and p["epsilon_prv"] <= EPS < p["epsilon_rdp"]
    assert p["delta"] == DELTA and p["max_grad_norm"] == 1.0 and math.isclose(p["epsilon"], rows[-1].epsilon)
    assert json.loads((tmp_path / "summary.json").read_text())["privacy"]["client_sizes"]
    weights = load_weights((tmp_path / "weights.safetensors").read_bytes())
    model = DigitsMLP()
    model.load_state_dict(weights)
    x_te, _ = heldout_data("digits", 0)
    sess = ort.InferenceSession((tmp_path / "model.onnx").read_bytes(), providers=["CPUExecutionProvider"])
    onnx_out = sess.run(None, {"input": x_te[:50]})[0]
    assert np.allclose(onnx_out, model(torch.from_numpy(x_te[:50])).detach().numpy(), atol=1e-5)
