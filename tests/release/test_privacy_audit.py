"""The empirical privacy audit: its statistics give known answers on synthetic scores, a deliberately overfit
non-private model fails the `privacy_audit` gate with a clear membership signal, a model DP-trained with Opacus
passes with attack AUC near 0.5, and `sealgate check` runs the gate from the command line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import typer
from onnx import TensorProto, helper, numpy_helper
from scipy.stats import binomtest, norm
from typer.testing import CliRunner

from gateway.errors import ConfigError, GateFailed
from gateway.release.commands import register
from gateway.release.gates import GateConfig, check, claimed_privacy
from gateway.release.privacy_audit import (
    AuditData,
    AuditOptions,
    clopper_pearson,
    epsilon_lower_bound,
    log_probabilities,
    logit_confidence,
    roc_auc,
    tpr_at_fpr,
)
from gateway.release.report import GateReport

MEMBERS, NONMEMBERS, PUBLIC = 150, 400, 800
DELTA = 1e-5
SEALGATE = Path(sys.executable).with_name("sealgate")


# --- the statistics, on scores whose answer is known --------------------------------------------------------------
def test_epsilon_bound_of_randomized_response_approaches_its_true_epsilon_from_below() -> None:
    """Randomized response with flip probability 1/(1+e^ε) is exactly ε-DP: its best threshold has TPR/FPR = e^ε,
    so with many trials the bound comes close to ε and, being a lower bound, does not exceed it."""
    rng = np.random.default_rng(0)
    for true_eps in (0.5, 1.0, 2.0):
        p = math.exp(true_eps) / (1 + math.exp(true_eps))
        members = (rng.random(200_000) < p).astype(float)
        nonmembers = (rng.random(200_000) < 1 - p).astype(float)
        bound = epsilon_lower_bound(members, nonmembers, delta=0.0, alpha=0.05)
        assert 0.95 * true_eps < bound.epsilon <= true_eps, (true_eps, bound)
        assert bound.tpr == pytest.approx(p, abs=0.005) and bound.fpr == pytest.approx(1 - p, abs=0.005)


def test_epsilon_bound_closed_form_and_no_signal() -> None:
    """Fully separated scores: TP = n, FP = 0, so ε_lb = log((a^(1/n) - δ) / (1 - a^(1/n))) with a = alpha/2
    (one threshold, no Bonferroni split). Identical scores refute nothing: ε_lb = 0."""
    n, alpha, delta = 50, 0.05, 1e-3
    members, nonmembers = np.arange(n) + 100.0, np.arange(n, dtype=float)
    bound = epsilon_lower_bound(members, nonmembers, delta, alpha, thresholds=1)
    root = (alpha / 2) ** (1 / n)
    assert bound.epsilon == pytest.approx(math.log((root - delta) / (1 - root)), rel=1e-9)
    assert (bound.tpr, bound.fpr) == (1.0, 0.0)
    more = epsilon_lower_bound(members, nonmembers, delta, alpha, thresholds=64)
    assert more.epsilon < bound.epsilon, "64 thresholds pay a Bonferroni price when one suffices"
    same = np.random.default_rng(1).standard_normal(500)
    assert epsilon_lower_bound(same, same.copy(), delta).epsilon == 0.0


def test_auc_tpr_at_fpr_and_clopper_pearson_match_theory() -> None:
    """Gaussian scores shifted by μ: AUC = Φ(μ/√2) and TPR at FPR f = 1 - Φ(Φ⁻¹(1 - f) - μ);
    Clopper–Pearson equals scipy's exact binomial interval."""
    rng = np.random.default_rng(2)
    mu = 1.0
    members, nonmembers = rng.normal(mu, 1, 40_000), rng.normal(0, 1, 40_000)
    assert roc_auc(members, nonmembers) == pytest.approx(norm.cdf(mu / math.sqrt(2)), abs=0.006)
    assert roc_auc(nonmembers, members) == pytest.approx(1 - norm.cdf(mu / math.sqrt(2)), abs=0.006)
    for fpr in (0.01, 0.1):
        assert tpr_at_fpr(members, nonmembers, fpr) == pytest.approx(1 - norm.cdf(norm.ppf(1 - fpr) - mu), abs=0.015)
    for k, n in ((0, 30), (7, 30), (30, 30)):
        ci = binomtest(k, n).proportion_ci(0.95, method="exact")
        assert clopper_pearson(k, n, 0.05) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_scores_from_logits_probabilities_and_single_logits() -> None:
    """φ = log(p/(1-p)) whether the model gives logits or probabilities; a confident logit stays finite."""
    logits = np.array([[math.log(9.0), 0.0], [0.0, 50.0]])
    probs = np.exp(log_probabilities(logits))
    assert np.allclose(logit_confidence(log_probabilities(logits), np.array([0, 1])), [math.log(9.0), 50.0])
    assert np.allclose(log_probabilities(probs), log_probabilities(logits))
    single = log_probabilities(np.array([[50.0], [-2.0]]))
    assert np.allclose(logit_confidence(single, np.array([1, 0])), [50.0, 2.0])


# --- two real models on digits ------------------------------------------------------------------------------------
def _onnx_mlp(layers: list[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """An ONNX MLP (Gemm + ReLU) from [in, out] weights and biases: how either trained model is released."""
    nodes, inits, current = [], [], "input"
    for i, (w, b) in enumerate(layers):
        inits += [
            numpy_helper.from_array(w.astype(np.float32), f"W{i}"),
            numpy_helper.from_array(b.astype(np.float32), f"b{i}"),
        ]
        out = "output" if i == len(layers) - 1 else f"dense{i}"
        nodes.append(helper.make_node("Gemm", [current, f"W{i}", f"b{i}"], [out]))
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"]))
            current = f"relu{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", layers[0][0].shape[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", layers[-1][0].shape[1]])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    """Disjoint seeded splits of scikit-learn digits: members, non-members, public (shadow pool), evaluation."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    x, y = (raw.data / 16.0).astype(np.float32), raw.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    cuts = np.cumsum([MEMBERS, NONMEMBERS, PUBLIC])
    parts = dict(zip(("members", "nonmembers", "public", "eval"), np.split(order, cuts), strict=True))
    return {f"{axis}_{name}": arr[idx] for name, idx in parts.items() for axis, arr in (("x", x), ("y", y))}


@pytest.fixture(scope="module")
def audit_data(digits: dict[str, np.ndarray]) -> AuditData:
    return AuditData.from_arrays({k: v for k, v in digits.items() if not k.endswith("_eval")})


@pytest.fixture(scope="module")
def overfit(digits: dict[str, np.ndarray]) -> bytes:
    """A 64-64-10 MLP without DP or regularization, trained to 100% accuracy on the 150 members."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier((64,), alpha=1e-6, max_iter=500, random_state=0).fit(
            digits["x_members"], digits["y_members"]
        )
    assert clf.score(digits["x_members"], digits["y_members"]) == 1.0
    return _onnx_mlp(list(zip(clf.coefs_, clf.intercepts_, strict=True)))


@pytest.fixture(scope="module")
def dp_model(digits: dict[str, np.ndarray]) -> tuple[bytes, dict[str, object]]:
    """The same MLP pre-trained on 200 public rows, then fine-tuned on the members with Opacus DP-SGD at ε = 2
    (sealgate's setting: DP fine-tuning of a released model); with its provenance."""
    import torch
    from opacus import PrivacyEngine
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    pre_opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5)
    xp, yp = torch.from_numpy(digits["x_public"][:200]), torch.from_numpy(digits["y_public"][:200])
    for _ in range(100):
        pre_opt.zero_grad()
        nn.functional.cross_entropy(model(xp), yp).backward()
        pre_opt.step()
    members = torch.utils.data.TensorDataset(
        torch.from_numpy(digits["x_members"]), torch.from_numpy(digits["y_members"])
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns that secure_mode is off (a test needs its seeded noise)
        engine = PrivacyEngine(accountant="rdp")
        private, optimizer, loader = engine.make_private_with_epsilon(
            module=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5),
            data_loader=torch.utils.data.DataLoader(members, batch_size=32),
            target_epsilon=2.0,
            target_delta=DELTA,
            epochs=10,
            max_grad_norm=1.0,
        )
        for _ in range(10):
            for xb, yb in loader:
                if len(xb):
                    optimizer.zero_grad()
                    nn.functional.cross_entropy(private(xb), yb).backward()
                    optimizer.step()
    state = {k: v.detach().numpy() for k, v in private._module.state_dict().items()}
    layers = [(state["0.weight"].T, state["0.bias"]), (state["2.weight"].T, state["2.bias"])]
    epsilon = engine.get_epsilon(DELTA)
    assert 1.5 < epsilon <= 2.0
    return _onnx_mlp(layers), {"privacy": {"epsilon": epsilon, "delta": DELTA, "accountant": "rdp"}}


def _accuracy(report: GateReport) -> float:
    return float(report.facts["accuracy_percent"])


def test_overfit_non_private_model_fails_the_audit_gate(
    overfit: bytes, digits: dict[str, np.ndarray], audit_data: AuditData
) -> None:
    no_dp = {"privacy": {"dp": False}}
    allowed = GateConfig(allow_no_dp=True)
    report = check(overfit, None, digits["x_eval"], digits["y_eval"], allowed, no_dp, audit_data=audit_data)
    gate = report.gate("privacy_audit")
    attacks = gate.details["attacks"]
    print("overfit:", gate.margin, json.dumps(attacks, default=str))
    assert gate.status == "failed" and not report.passed
    assert max(a["auc"] for a in attacks.values()) > 0.6, "a clear membership signal"
    assert attacks["lira_offline"]["auc"] > attacks["loss"]["auc"], "per-example calibration helps"
    assert gate.measured is not None and gate.measured > 0.5 and gate.limit is None
    assert "AUC over the limit 0.6" in gate.margin and "without DP" not in gate.margin
    assert _accuracy(report) > 80, "overfit, yet a useful model: only the audit catches it"

    loss_only = AuditOptions(shadow_models=0)  # the loss attack alone suffices below (and is faster)
    strict = GateConfig(audit=loss_only)
    refused = check(overfit, None, digits["x_eval"], digits["y_eval"], strict, {}, audit_data=audit_data)
    assert "a model without DP is refused unless allowed" in refused.gate("privacy_audit").margin

    # the same model released with a false claim of ε = 0.5: the audit refutes it even with the AUC limit off
    lie = {"privacy": {"epsilon": 0.5, "delta": DELTA}}
    lenient = GateConfig(max_audit_auc=None, audit=loss_only)
    refuted = check(overfit, None, digits["x_eval"], digits["y_eval"], lenient, lie, audit_data=audit_data)
    lied = refuted.gate("privacy_audit")
    assert lied.status == "failed" and "refutes the claimed ε" in lied.margin and lied.limit == 0.5
    assert set(lied.details["attacks"]) == {"loss"}
    with pytest.raises(GateFailed, match="privacy_audit: AUC"):
        refuted.raise_for_failure()


def test_dp_model_passes_the_audit_gate_near_chance(
    dp_model: tuple[bytes, dict[str, object]], digits: dict[str, np.ndarray], audit_data: AuditData
) -> None:
    onnx, provenance = dp_model
    report = check(onnx, None, digits["x_eval"], digits["y_eval"], GateConfig(), provenance, audit_data=audit_data)
    gate = report.gate("privacy_audit")
    attacks = gate.details["attacks"]
    print("dp:", gate.margin, json.dumps(attacks, default=str))
    assert gate.status == "passed", gate.margin
    assert set(attacks) == {"loss", "lira_offline"}
    for attack in attacks.values():
        assert abs(attack["auc"] - 0.5) < 0.08, attack
        assert attack["epsilon_lb"]["epsilon"] <= provenance["privacy"]["epsilon"]  # type: ignore[index]
    assert _accuracy(report) > 75, "DP fine-tuning kept the model useful"
    # what goes into provenance: the gate report's JSON carries the audit's figures
    recorded = json.loads(report.to_json())
    audit = next(g for g in recorded["gates"] if g["name"] == "privacy_audit")
    assert audit["details"]["members"] == MEMBERS and audit["details"]["nonmembers"] == NONMEMBERS
    assert set(audit["details"]["attacks"]["loss"]["tpr_at_fpr"]) == {"0.01", "0.001"}


def test_audit_gate_without_data_and_claims_it_cannot_read(
    dp_model: tuple[bytes, dict[str, object]], digits: dict[str, np.ndarray], audit_data: AuditData
) -> None:
    onnx, _ = dp_model
    x, y = digits["x_eval"], digits["y_eval"]
    assert check(onnx, None, x, y, GateConfig()).gate("privacy_audit").status == "skipped"
    assert check(onnx, None, x, y, GateConfig(require_audit=True)).gate("privacy_audit").status == "failed"
    bad = check(onnx, None, x, y, GateConfig(), {"privacy": {"epsilon": "lots"}}, audit_data=audit_data)
    assert bad.gate("privacy_audit").status == "failed" and "not numbers" in bad.gate("privacy_audit").margin
    assert claimed_privacy({"privacy": {"dp": False, "epsilon": 3.0}})[0] == math.inf
    assert claimed_privacy({"privacy": {"epsilon": 3.0}})[:2] == (3.0, 0.0)
    with pytest.raises(ConfigError, match="lacks y_nonmembers"):
        AuditData.from_arrays({k: v for k, v in digits.items() if k in ("x_members", "y_members", "x_nonmembers")})


# --- the command line ---------------------------------------------------------------------------------------------
def _write_inputs(tmp_path: Path, digits: dict[str, np.ndarray]) -> tuple[Path, Path]:
    np.savez(tmp_path / "eval.npz", x=digits["x_eval"], y=digits["y_eval"])
    np.savez(tmp_path / "audit.npz", **{k: v for k, v in digits.items() if not k.endswith("_eval")})
    return tmp_path / "eval.npz", tmp_path / "audit.npz"


def test_sealgate_check_runs_the_audit_gate(
    tmp_path: Path, overfit: bytes, dp_model: tuple[bytes, dict[str, object]], digits: dict[str, np.ndarray]
) -> None:
    """The real console script refuses the overfit model in one line naming the gate; the DP model passes."""
    eval_npz, audit_npz = _write_inputs(tmp_path, digits)
    (tmp_path / "overfit.onnx").write_bytes(overfit)
    (tmp_path / "no-dp.json").write_text(json.dumps({"privacy": {"dp": False}}))
    env = {**os.environ, "COLUMNS": "200"}
    args = ["check", "overfit.onnx", "--data", eval_npz, "--audit-data", audit_npz, "--provenance", "no-dp.json"]
    failed = subprocess.run(
        [str(SEALGATE), *map(str, [*args, "--allow-no-dp", "--report", "report.json"])],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert failed.stderr.count("\n") == 1 and "privacy_audit: AUC" in failed.stderr, failed.stderr
    assert "privacy_audit" in failed.stdout and "FAILED" in failed.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["failed"] == ["privacy_audit"]

    app = typer.Typer()
    register(app)
    onnx, provenance = dp_model
    (tmp_path / "dp.onnx").write_bytes(onnx)
    (tmp_path / "dp.json").write_text(json.dumps(provenance))
    dp = [tmp_path / "dp.onnx", "--data", eval_npz, "--audit-data", audit_npz, "--provenance", tmp_path / "dp.json"]
    ok = CliRunner().invoke(
        app, ["check", *map(str, dp), "--min-accuracy", "75", "--require-audit", "--shadow-models", "4"]
    )
    assert ok.exit_code == 0, ok.output
    assert "all gates passed" in ok.output
    broken = tmp_path / "broken.npz"
    np.savez(broken, x_members=digits["x_members"])
    bad = CliRunner().invoke(
        app, ["check", str(tmp_path / "dp.onnx"), "--data", str(eval_npz), "--audit-data", str(broken)]
    )
    assert isinstance(bad.exception, ConfigError) and "audit data lacks" in str(bad.exception)
