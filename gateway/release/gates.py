"""Verification gates between a candidate model and the current release; a failing gate stops the release.

Gates: output parity (against the source model, or the baseline when the architecture is the same), accuracy drop
on held-out data, p50 latency ratio at batch 1, no NaN/inf on a fuzzed input set, the privacy budget recorded in
provenance, an empirical privacy audit (membership inference, given members and non-members), and size. Each gate
reports what it measured, its limit, and the margin in words.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from gateway.errors import InvalidInput
from gateway.release import onnx_graph, parity, runtime
from gateway.release.privacy_audit import AuditData, AuditOptions, audit
from gateway.release.report import GateReport, GateResult, Status

LOW_FPR_SHOWN = 0.01  # the TPR-at-FPR figure the audit gate's margin quotes


@dataclass(frozen=True)
class GateConfig:
    """Limits of the gates. Accuracy is in percentage points; None switches a limit off (the gate is skipped)."""

    max_accuracy_drop: float = 1.0
    min_accuracy: float | None = None
    max_latency_ratio: float = 1.2
    max_epsilon: float | None = 8.0
    require_privacy: bool = False
    max_size_bytes: int | None = None
    check_parity: bool = True
    parity_tolerance: float = 1e-4
    fuzz_rows: int = 64
    fuzz_extreme: float = 1e4
    fuzz_seed: int = 0
    latency_calls: int = 2000
    max_audit_auc: float | None = 0.6
    allow_no_dp: bool = False
    require_audit: bool = False
    audit: AuditOptions = field(default_factory=AuditOptions)


def same_architecture(a: bytes, b: bytes, sess_a: ort.InferenceSession, sess_b: ort.InferenceSession) -> bool:
    """Same input/output specs and the same initializer shapes (names aside): the same function is expected."""
    if runtime.io_specs(sess_a) != runtime.io_specs(sess_b):
        return False
    return onnx_graph.initializer_signature(onnx_graph.parse(a)) == onnx_graph.initializer_signature(
        onnx_graph.parse(b)
    )


def predicted_labels(outputs: np.ndarray) -> np.ndarray:
    """Class per row: argmax over class scores [N, C]; for one score per row ([N] or [N, 1]) a logit above 0."""
    if outputs.ndim == 2 and outputs.shape[1] >= 2:
        labels: np.ndarray = outputs.argmax(axis=1)
        return labels
    return (outputs.reshape(len(outputs)) > 0).astype(np.int64)


def accuracy_percent(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose predicted class equals the label, in percent."""
    return float(np.mean(predicted_labels(outputs) == labels) * 100.0)


def fuzz_inputs(x_eval: np.ndarray, rows: int, extreme: float, seed: int) -> np.ndarray:
    """Seeded inputs no test set holds: normal at unit and at 10x the data's scale, uniform over the data's range,
    zeros, ±`extreme` constants and random-sign ±`extreme` entries."""
    rng = np.random.default_rng(seed)
    inner = x_eval.shape[1:]
    scale = max(1.0, float(np.max(np.abs(x_eval)))) if x_eval.size else 1.0
    low, high = (float(x_eval.min()), float(x_eval.max())) if x_eval.size else (-1.0, 1.0)
    parts = [
        rng.standard_normal((rows, *inner)),
        rng.standard_normal((rows, *inner)) * 10.0 * scale,
        rng.uniform(low, high, (rows, *inner)),
        np.zeros((1, *inner)),
        np.full((1, *inner), extreme),
        np.full((1, *inner), -extreme),
        rng.choice([-extreme, extreme], size=(rows, *inner)),
    ]
    return np.concatenate(parts).astype(np.float32)


def _check_data(x_eval: np.ndarray, y_eval: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x_eval, dtype=np.float32)
    y = np.asarray(y_eval)
    if x.ndim < 2 or len(x) == 0 or len(x) != len(y):
        raise InvalidInput(
            f"evaluation data must be a non-empty batch with one label per row (x {x.shape}, y {y.shape})"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise InvalidInput(f"labels must be integer classes, got {y.dtype}")
    return x, y


# --- gates --------------------------------------------------------------------------------------------------------
def _parity_gate(cand_out: np.ndarray, reference: np.ndarray | None, against: str, tol: float) -> GateResult:
    """`against` names the reference ("source", "baseline (same architecture)") or, when skipped, why."""
    if reference is None:
        return GateResult("parity", "skipped", None, tol, against)
    result = parity.compare({"output": reference}, {"output": cand_out}, tol)
    status: Status = "passed" if result.passed else "failed"
    margin = f"max |Δ| {result.max_abs:.3g} vs {against} (relative {result.max_rel:.3g}), limit {tol:g}"
    if not result.passed and against.startswith("baseline"):
        margin += "; a retrained candidate is expected to differ: pass its source, or switch parity off"
    return GateResult("parity", status, result.max_abs, tol, margin, {"max_rel": result.max_rel, "against": against})


def _accuracy_gate(acc: float, base_acc: float | None, config: GateConfig) -> GateResult:
    if base_acc is not None:
        drop = base_acc - acc
        change = "unchanged" if drop == 0 else f"{'dropped' if drop > 0 else 'rose'} {abs(drop):.2f} points"
        status: Status = "passed" if drop <= config.max_accuracy_drop else "failed"
        margin = f"accuracy {change} ({base_acc:.2f}% → {acc:.2f}%), limit {config.max_accuracy_drop:g}"
        return GateResult(
            "accuracy",
            status,
            round(drop, 4),
            config.max_accuracy_drop,
            margin,
            {"candidate": acc, "baseline": base_acc},
        )
    if config.min_accuracy is not None:
        status = "passed" if acc >= config.min_accuracy else "failed"
        margin = f"accuracy {acc:.2f}%, at least {config.min_accuracy:g}% required"
        return GateResult("accuracy", status, acc, config.min_accuracy, margin, {"candidate": acc})
    return GateResult(
        "accuracy", "skipped", acc, None, f"accuracy {acc:.2f}%, no baseline to compare", {"candidate": acc}
    )


def _latency_gate(candidate: bytes, baseline: bytes | None, row: np.ndarray, config: GateConfig) -> GateResult:
    models = {"candidate": candidate} if baseline is None else {"candidate": candidate, "baseline": baseline}
    p50 = runtime.p50_latencies(models, row, calls=config.latency_calls)
    if baseline is None:
        return GateResult(
            "latency",
            "skipped",
            None,
            None,
            f"p50 {p50['candidate']:.1f} µs, no baseline to compare",
            {"candidate_p50_us": p50["candidate"]},
        )
    ratio = p50["candidate"] / p50["baseline"]
    status: Status = "passed" if ratio <= config.max_latency_ratio else "failed"
    margin = (
        f"p50 {p50['candidate']:.1f} µs vs {p50['baseline']:.1f} µs = {ratio:.2f}x, limit {config.max_latency_ratio:g}x"
    )
    return GateResult(
        "latency",
        status,
        round(ratio, 4),
        config.max_latency_ratio,
        margin,
        {"candidate_p50_us": p50["candidate"], "baseline_p50_us": p50["baseline"]},
    )


def _finite_gate(sess: ort.InferenceSession, x: np.ndarray, config: GateConfig) -> GateResult:
    fuzz = np.concatenate([fuzz_inputs(x, config.fuzz_rows, config.fuzz_extreme, config.fuzz_seed), x])
    out = runtime.predict(sess, fuzz)
    bad_rows = int(np.sum(~np.isfinite(out.reshape(len(out), -1)).all(axis=1)))
    status: Status = "passed" if bad_rows == 0 else "failed"
    margin = f"{bad_rows} of {len(fuzz)} fuzzed and held-out inputs gave NaN/inf, limit 0"
    return GateResult("no_nan", status, float(bad_rows), 0.0, margin, {"inputs": len(fuzz)})


def _privacy_gate(provenance: dict[str, Any] | None, config: GateConfig) -> GateResult:
    """The recorded ε against the budget; a run recorded as trained without DP (privacy.dp false) fails unless
    `allow_no_dp`; no privacy record at all is skipped unless `require_privacy`."""
    privacy = (provenance or {}).get("privacy")
    if isinstance(privacy, dict) and privacy.get("dp") is False:
        if config.allow_no_dp:
            return GateResult("privacy", "skipped", None, config.max_epsilon, "trained without DP (allowed)")
        return GateResult(
            "privacy", "failed", None, config.max_epsilon, "trained without DP (--no-dp): refused unless allowed"
        )
    epsilon = privacy.get("epsilon") if isinstance(privacy, dict) else None
    if epsilon is None:
        status: Status = "failed" if config.require_privacy else "skipped"
        return GateResult("privacy", status, None, config.max_epsilon, "no privacy budget (ε) recorded in provenance")
    try:
        eps = float(epsilon)
    except (TypeError, ValueError):
        return GateResult("privacy", "failed", None, config.max_epsilon, f"ε {epsilon!r} is not a number")
    if not math.isfinite(eps) or eps < 0:
        return GateResult("privacy", "failed", eps, config.max_epsilon, f"ε {eps} is not a valid privacy budget")
    if config.max_epsilon is None:
        return GateResult("privacy", "skipped", eps, None, f"ε {eps:.3g} recorded, no limit configured")
    status = "passed" if eps <= config.max_epsilon else "failed"
    over = eps - config.max_epsilon
    words = f"{over:.3g} over" if over > 0 else f"{-over:.3g} under"
    delta = privacy.get("delta") if isinstance(privacy, dict) else None
    margin = f"ε {eps:.3g} ({words} the budget), limit {config.max_epsilon:g}"
    return GateResult("privacy", status, eps, config.max_epsilon, margin, {"delta": delta})


def claimed_privacy(provenance: dict[str, Any] | None) -> tuple[float, float, str]:
    """(ε, δ, words) that provenance claims; ε = ∞ when it claims no DP (privacy.dp false, or no ε recorded).

    δ defaults to 0 when not recorded (the claim is then read as pure ε-DP, the strictest reading).
    InvalidInput when ε or δ is recorded but is not a valid number.
    """
    privacy = (provenance or {}).get("privacy")
    if not isinstance(privacy, dict) or privacy.get("dp") is False or privacy.get("epsilon") is None:
        return math.inf, 0.0, "no DP claimed (ε = ∞)"
    try:
        eps = float(privacy["epsilon"])
        delta = float(privacy.get("delta") or 0.0)
    except (TypeError, ValueError):
        raise InvalidInput(
            f"provenance privacy ε/δ are not numbers: {privacy.get('epsilon')!r}, {privacy.get('delta')!r}"
        ) from None
    if math.isnan(eps) or eps < 0 or not 0 <= delta < 1:
        raise InvalidInput(f"provenance claims an invalid privacy budget: ε {eps}, δ {delta}")
    words = f"claimed ε {eps:.3g}, δ {delta:g}" if math.isfinite(eps) else "no DP claimed (ε = ∞)"
    return eps, delta, words


def _privacy_audit_gate(
    candidate: bytes,
    sess: ort.InferenceSession,
    data: AuditData | None,
    provenance: dict[str, Any] | None,
    config: GateConfig,
) -> GateResult:
    """Membership inference on members vs non-members: fails when the empirical ε lower bound exceeds the claimed
    ε, when the strongest attack's AUC exceeds `max_audit_auc`, or when no DP is claimed and that is not allowed."""
    if data is None:
        status: Status = "failed" if config.require_audit else "skipped"
        return GateResult("privacy_audit", status, None, None, "no audit data (members and non-members) given")
    try:
        eps, delta, claim = claimed_privacy(provenance)
    except InvalidInput as exc:
        return GateResult("privacy_audit", "failed", None, None, str(exc))
    result = audit(candidate, data, delta, config.audit, sess=sess)
    strongest = max(result.attacks, key=lambda a: a.auc)
    bound = max(result.attacks, key=lambda a: a.epsilon_lb.epsilon)
    low_fpr = f"{LOW_FPR_SHOWN:g}"
    refuted = f"ε ≥ {result.epsilon_lb:.3g} from {bound.attack}" if result.epsilon_lb > 0 else "no ε > 0 refuted"
    figures = (
        f"AUC {strongest.auc:.3f} ({strongest.attack}), TPR {strongest.tpr_at_fpr[low_fpr] * 100:.1f}% at "
        f"{float(low_fpr) * 100:g}% FPR, {refuted} ({1 - result.alpha:.0%} confidence, {result.members} members / "
        f"{result.nonmembers} non-members); {claim}"
    )
    problems = []
    if not math.isfinite(eps) and not config.allow_no_dp:
        problems.append("a model without DP is refused unless allowed (--allow-no-dp)")
    if result.epsilon_lb > eps:
        problems.append(f"the empirical bound refutes the claimed ε by {result.epsilon_lb - eps:.3g}")
    if config.max_audit_auc is not None and result.max_auc > config.max_audit_auc:
        problems.append(f"AUC over the limit {config.max_audit_auc:g}")
    status = "failed" if problems else "passed"
    details = {**result.to_dict(), "claimed_epsilon": eps, "max_auc_limit": config.max_audit_auc}
    margin = figures + (": " + "; ".join(problems) if problems else "")
    return GateResult(
        "privacy_audit", status, round(result.epsilon_lb, 4), eps if math.isfinite(eps) else None, margin, details
    )


def _size_gate(size: int, config: GateConfig) -> GateResult:
    if config.max_size_bytes is None:
        return GateResult("size", "skipped", float(size), None, f"{size} bytes, no limit configured")
    status: Status = "passed" if size <= config.max_size_bytes else "failed"
    over = size - config.max_size_bytes
    words = f"{over} bytes over" if over > 0 else f"{-over} bytes under"
    return GateResult(
        "size",
        status,
        float(size),
        float(config.max_size_bytes),
        f"{size} bytes ({words}), limit {config.max_size_bytes}",
    )


def check(
    candidate_onnx: bytes,
    baseline_onnx: bytes | None,
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    config: GateConfig | None = None,
    provenance: dict[str, Any] | None = None,
    *,
    source_onnx: bytes | None = None,
    audit_data: AuditData | None = None,
) -> GateReport:
    """Run every gate on `candidate_onnx` against `baseline_onnx` (the current release, if any).

    Parity compares with `source_onnx` (the model the candidate was made from, e.g. before re-export) when given,
    else with the baseline when both have the same architecture; a model that does not load fails the "load" gate.
    The privacy audit runs when `audit_data` (known members, non-members, optional public rows) is given.
    """
    config = config or GateConfig()
    x, y = _check_data(x_eval, y_eval)
    try:
        sess = runtime.session(candidate_onnx)
        cand_out = runtime.predict(sess, x)
    except InvalidInput as exc:
        return GateReport([GateResult("load", "failed", None, None, str(exc))], {"size_bytes": len(candidate_onnx)})
    base_sess = runtime.session(baseline_onnx) if baseline_onnx is not None else None
    base_out = runtime.predict(base_sess, x) if base_sess is not None else None

    reference, why = None, "no source or baseline model"
    if not config.check_parity:
        why = "switched off"
    elif source_onnx is not None:
        reference, why = runtime.predict(runtime.session(source_onnx), x), "source"
    elif baseline_onnx is not None and base_sess is not None:
        if same_architecture(candidate_onnx, baseline_onnx, sess, base_sess):
            reference, why = base_out, "baseline (same architecture)"
        else:
            why = "architecture differs from the baseline (pruned/quantized): parity not expected"

    acc = accuracy_percent(cand_out, y)
    base_acc = accuracy_percent(base_out, y) if base_out is not None else None
    gates = [
        _parity_gate(cand_out, reference, why, config.parity_tolerance),
        _accuracy_gate(acc, base_acc, config),
        _latency_gate(candidate_onnx, baseline_onnx, x[0], config),
        _finite_gate(sess, x, config),
        _privacy_gate(provenance, config),
        _privacy_audit_gate(candidate_onnx, sess, audit_data, provenance, config),
        _size_gate(len(candidate_onnx), config),
    ]
    facts = {
        "size_bytes": len(candidate_onnx),
        "sha256": hashlib.sha256(candidate_onnx).hexdigest(),
        "accuracy_percent": acc,
        "baseline_accuracy_percent": base_acc,
        "eval_rows": len(x),
    }
    return GateReport(gates, facts)
