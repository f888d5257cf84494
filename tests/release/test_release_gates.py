"""Verification gates: a candidate that loses accuracy beyond the limit is refused and the report names the gate
and the amount; a faithful candidate passes; NaN/inf (also only on fuzzed inputs) fails; ε over budget fails, and
so does a model trained without DP unless allowed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from gateway.errors import GateFailed
from gateway.release import prune, runtime
from gateway.release.commands import register
from gateway.release.gates import GateConfig, check
from gateway.release.onnx_mlp import read_mlp, write_mlp
from tests.models import make_onnx_mlp, mlp_reference

IN, HIDDEN, OUT = 16, (64,), 5
LENIENT_LATENCY = GateConfig(max_latency_ratio=3.0)  # two equal models on a busy 2-core box: ratio noise only


@pytest.fixture(scope="module")
def baseline() -> bytes:
    return make_onnx_mlp(IN, HIDDEN, OUT, seed=11)["model.onnx"]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(12).standard_normal((400, IN)).astype(np.float32)
    y = mlp_reference(IN, HIDDEN, OUT, seed=11)(x).argmax(1)
    y[:20] = (y[:20] + 1) % OUT  # the baseline gets 95%, not a perfect score
    return x, y


@pytest.fixture(scope="module")
def worse(baseline: bytes) -> bytes:
    """The baseline with 90% of its weights pruned: same architecture, much lower accuracy."""
    mlp = read_mlp(baseline)
    return write_mlp(mlp.with_tensors(prune.prune_global(mlp.tensors(), 0.9).tensors))


def _accuracy(model: bytes, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(runtime.predict(runtime.session(model), x).argmax(1) == y) * 100)


def test_accuracy_drop_beyond_the_limit_fails_and_names_gate_and_amount(
    baseline: bytes, worse: bytes, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data
    report = check(worse, baseline, x, y, LENIENT_LATENCY)
    drop = _accuracy(baseline, x, y) - _accuracy(worse, x, y)
    assert drop > 1.0
    gate = report.gate("accuracy")
    assert gate.status == "failed" and gate.measured == pytest.approx(drop, abs=1e-3) and gate.limit == 1.0
    assert f"accuracy dropped {drop:.2f} points" in gate.margin and "limit 1" in gate.margin
    assert report.gate("parity").status == "failed"  # same architecture, different function
    assert not report.passed
    with pytest.raises(GateFailed, match=rf"accuracy: accuracy dropped {drop:.2f} points"):
        report.raise_for_failure()
    as_json = json.loads(report.to_json())
    assert as_json["passed"] is False and "accuracy" in as_json["failed"]


def test_a_faithful_candidate_passes_every_gate(baseline: bytes, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    candidate = write_mlp(read_mlp(baseline))  # rebuilt graph, same function
    config = GateConfig(max_latency_ratio=3.0, max_size_bytes=len(candidate) + 1)
    report = check(candidate, baseline, x, y, config, {"privacy": {"epsilon": 3.0, "delta": 1e-5}})
    assert report.passed, report.failure_summary()
    assert {g.name: g.status for g in report.gates} == {
        "parity": "passed",
        "accuracy": "passed",
        "latency": "passed",
        "no_nan": "passed",
        "privacy": "passed",
        "privacy_audit": "skipped",  # no members / non-members given: tests/release/test_privacy_audit.py runs it
        "size": "passed",
    }
    assert report.gate("parity").measured < 1e-5
    assert report.facts["accuracy_percent"] == pytest.approx(95.0)


def test_nan_weights_fail_the_finite_gate(baseline: bytes, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    mlp = read_mlp(baseline)
    weights = [w.copy() for w in mlp.weights]
    weights[0][0, 0] = np.nan
    report = check(write_mlp(mlp.with_layers(weights, mlp.biases)), baseline, x, y, LENIENT_LATENCY)
    gate = report.gate("no_nan")
    assert gate.status == "failed" and gate.measured == gate.details["inputs"]  # every row is NaN
    assert "no_nan" in report.failure_summary()


def test_fuzzing_finds_nan_that_held_out_data_never_shows() -> None:
    """log(x) → dense: finite on the (positive) evaluation data, NaN for negative inputs only the fuzz set has."""
    w = np.random.default_rng(0).standard_normal((IN, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Log", ["x"], ["l"]), helper.make_node("MatMul", ["l", "w"], ["y"])],
        "log",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    x = np.random.default_rng(1).uniform(0.1, 1.0, (100, IN)).astype(np.float32)
    assert np.isfinite(runtime.predict(runtime.session(model), x)).all()
    report = check(model, None, x, np.zeros(100, np.int64), GateConfig())
    assert report.gate("no_nan").status == "failed" and report.gate("no_nan").measured > 0


def test_epsilon_over_budget_fails_and_says_by_how_much(baseline: bytes, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    over = check(baseline, baseline, x, y, LENIENT_LATENCY, {"privacy": {"epsilon": 9.5, "delta": 1e-5}})
    assert [g.name for g in over.failed] == ["privacy"]
    assert "ε 9.5 (1.5 over the budget), limit 8" in over.gate("privacy").margin
    missing = check(baseline, baseline, x, y, LENIENT_LATENCY, {"name": "m"})
    assert missing.gate("privacy").status == "skipped"
    required = check(baseline, None, x, y, GateConfig(require_privacy=True), {"name": "m"})
    assert required.gate("privacy").status == "failed"
    no_dp = {"privacy": {"dp": False, "no_dp": True, "epsilon": None}}  # what `sealgate fl run --no-dp` records
    refused = check(baseline, None, x, y, LENIENT_LATENCY, no_dp)
    assert [g.name for g in refused.failed] == ["privacy"] and "without DP" in refused.gate("privacy").margin
    allowed = check(baseline, None, x, y, GateConfig(max_latency_ratio=3.0, allow_no_dp=True), no_dp)
    assert allowed.gate("privacy").status == "skipped" and allowed.passed


def test_size_limit_and_unloadable_candidates_fail(baseline: bytes, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    big = check(baseline, None, x, y, GateConfig(max_size_bytes=len(baseline) - 100))
    assert big.gate("size").status == "failed" and "100 bytes over" in big.gate("size").margin
    garbage = check(b"not a model", baseline, x, y)
    assert [g.name for g in garbage.failed] == ["load"]


def test_cli_check_exits_non_zero_naming_failed_gates_and_writes_the_report(
    tmp_path: Path, baseline: bytes, worse: bytes, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, y = data
    app = typer.Typer()
    register(app)
    np.savez(tmp_path / "eval.npz", x=x, y=y)
    (tmp_path / "base.onnx").write_bytes(baseline)
    (tmp_path / "worse.onnx").write_bytes(worse)
    (tmp_path / "prov.json").write_text(json.dumps({"privacy": {"epsilon": 12.0}}))
    args = [
        "check",
        str(tmp_path / "worse.onnx"),
        "--baseline",
        str(tmp_path / "base.onnx"),
        "--data",
        str(tmp_path / "eval.npz"),
        "--max-latency-ratio",
        "3",
        "--provenance",
        str(tmp_path / "prov.json"),
        "--report",
        str(tmp_path / "report.json"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert isinstance(result.exception, GateFailed)
    message = str(result.exception)
    assert "accuracy: accuracy dropped" in message and "privacy: ε 12 (4 over the budget)" in message
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["failed"]) == {"parity", "accuracy", "privacy"}
    assert "FAILED" in result.output and "release gates" in result.output
    ok = CliRunner().invoke(
        app, ["check", str(tmp_path / "base.onnx"), "--data", str(tmp_path / "eval.npz"), "--min-accuracy", "90"]
    )
    assert ok.exit_code == 0, ok.output
    assert "all gates passed" in ok.output
