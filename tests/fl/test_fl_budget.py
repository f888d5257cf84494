"""The privacy budget on Flower's Simulation Engine, through `sealgate fl run`: a round that would exceed the
budget does not start, the run ends with what it has, and the output says so."""

from __future__ import annotations

import json
import math
from pathlib import Path

from typer.testing import CliRunner

from fl import accounting
from fl.commands import fl_app
from fl.data import client_partitions

DELTA, BATCH = 1e-5, 32


def test_small_budget_stops_the_run_early_and_the_cli_says_so(tmp_path: Path) -> None:
    # 3 IID clients of 479 rows, batch 32: q = 1/15, 15 steps a round; budget between ε after 1 and 2 rounds
    batches = math.ceil(sorted(len(p) for p in client_partitions("digits", 0, 3, None))[-1] / BATCH)
    eps1 = accounting.tight_epsilon(1.0, 1 / batches, batches, DELTA)  # the budget counts min(RDP, PRV)
    eps2 = accounting.tight_epsilon(1.0, 1 / batches, 2 * batches, DELTA)
    budget = (eps1 + eps2) / 2
    args = [
        "run",
        "--clients",
        "3",
        "--rounds",
        "3",
        "--noise-multiplier",
        "1.0",
        "--budget",
        f"{budget:.6f}",
        "--out",
        str(tmp_path),
    ]
    res = CliRunner().invoke(fl_app, args)
    assert res.exit_code == 0, res.output
    assert "stopped early" in res.output and "privacy budget" in res.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_early"] and len(summary["rows"]) == 1
    assert "round 2" in summary["stop_reason"]
    assert math.isclose(summary["rows"][0]["epsilon"], eps1, rel_tol=1e-6)
    assert summary["privacy"]["rounds"] == 1 and summary["privacy"]["epsilon"] <= budget
    p = summary["privacy"]
    assert math.isclose(p["epsilon"], min(p["epsilon_rdp"], p["epsilon_prv"]), rel_tol=1e-6)
    assert (tmp_path / "model.onnx").exists()
