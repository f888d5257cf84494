"""Empirical privacy audit of a candidate model: membership inference on known members vs held-out non-members.

Two attacks score each audit example (higher = "was in the training set"): the loss-threshold attack (Yeom et al.
2018) and offline LiRA (Carlini et al. 2022), which compares the candidate's logit-scaled confidence on an example
with the confidences of shadow models trained on public data that never held it. Each attack reports its ROC AUC,
its TPR at low FPR, and the lower bound on ε that its (TPR, FPR) pairs imply for an (ε, δ)-DP training algorithm
(Jagielski et al. 2020, Nasr et al. 2021), with Clopper–Pearson intervals made simultaneous over every threshold
tried (Bonferroni). An audit can refute a claimed ε, never prove it: few samples give a weak (small) bound.

numpy/scipy only at import; scikit-learn (shadow models) is imported when LiRA runs.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import onnxruntime as ort

from gateway.errors import ConfigError, InvalidInput
from gateway.release import onnx_mlp, runtime

AUDIT_ARRAYS = ("x_members", "y_members", "x_nonmembers", "y_nonmembers")
PUBLIC_ARRAYS = ("x_public", "y_public")
LOW_FPRS = (0.01, 0.001)


@dataclass(frozen=True)
class AuditData:
    """Known training members, held-out non-members from the same distribution, and optional public data.

    The public rows (disjoint from both audit sets) train the LiRA shadow models; without them only the
    loss-threshold attack runs.
    """

    x_members: np.ndarray
    y_members: np.ndarray
    x_nonmembers: np.ndarray
    y_nonmembers: np.ndarray
    x_public: np.ndarray | None = None
    y_public: np.ndarray | None = None

    def __post_init__(self) -> None:
        """Check shapes and labels once, so that every attack can trust them."""
        pairs = [("members", self.x_members, self.y_members), ("nonmembers", self.x_nonmembers, self.y_nonmembers)]
        if (self.x_public is None) != (self.y_public is None):
            raise ConfigError("audit data: x_public and y_public go together")
        if self.x_public is not None and self.y_public is not None:
            pairs.append(("public", self.x_public, self.y_public))
        width = None
        for name, x, y in pairs:
            if x.ndim < 2 or len(x) == 0 or len(x) != len(y):
                raise ConfigError(
                    f"audit data: {name} must be a non-empty batch with one label each ({x.shape}, {y.shape})"
                )
            if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
                raise ConfigError(f"audit data: {name} labels must be non-negative integer classes, got {y.dtype}")
            if width is not None and x.shape[1:] != width:
                raise ConfigError(f"audit data: {name} rows have shape {x.shape[1:]}, the members {width}")
            width = x.shape[1:]

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> AuditData:
        """From named arrays (an .npz): the four audit arrays are required, the public pair optional."""
        missing = [name for name in AUDIT_ARRAYS if name not in arrays]
        if missing:
            raise ConfigError(f"audit data lacks {', '.join(missing)} (needs {', '.join(AUDIT_ARRAYS)})")
        xs = {
            k: np.asarray(arrays[k], dtype=np.float32) for k in ("x_members", "x_nonmembers", "x_public") if k in arrays
        }
        ys = {k: np.asarray(arrays[k]) for k in ("y_members", "y_nonmembers", "y_public") if k in arrays}
        return cls(
            xs["x_members"],
            ys["y_members"],
            xs["x_nonmembers"],
            ys["y_nonmembers"],
            xs.get("x_public"),
            ys.get("y_public"),
        )


@dataclass(frozen=True)
class AuditOptions:
    """How the audit runs: shadow models for LiRA, the confidence level and threshold grid of the ε bound."""

    shadow_models: int = 8
    shadow_hidden: tuple[int, ...] | None = None  # None: the candidate's hidden widths when it is a plain MLP
    shadow_epochs: int = 200
    shadow_rows: int | None = (
        None  # rows per shadow model; None: half the public rows (as many as it trained on, ideally)
    )
    alpha: float = 0.05  # the ε bound holds with probability 1 - alpha
    thresholds: int = 64  # score quantiles tried; the Bonferroni correction divides alpha among them
    seed: int = 0


@dataclass(frozen=True)
class EpsilonBound:
    """The best (largest) ε lower bound over thresholds, with the counts and intervals that give it."""

    epsilon: float
    threshold: float | None
    tpr: float
    fpr: float
    tpr_low: float
    fpr_high: float
    direction: str  # "tpr/fpr" or "tnr/fnr": which inequality of (ε, δ)-DP gave the bound


@dataclass(frozen=True)
class AttackResult:
    """One attack's figures on the audit sets."""

    attack: str
    auc: float
    tpr_at_fpr: dict[str, float]
    epsilon_lb: EpsilonBound


@dataclass(frozen=True)
class AuditResult:
    """Every attack that ran, the sizes, and what was assumed."""

    attacks: list[AttackResult]
    members: int
    nonmembers: int
    delta: float
    alpha: float
    notes: list[str] = field(default_factory=list)

    @property
    def max_auc(self) -> float:
        """The strongest attack's AUC."""
        return max(a.auc for a in self.attacks)

    @property
    def epsilon_lb(self) -> float:
        """The largest ε lower bound over the attacks (each already holds at 1 - alpha; see `audit`)."""
        return max(a.epsilon_lb.epsilon for a in self.attacks)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the gate report and provenance."""
        return {
            "attacks": {a.attack: {k: v for k, v in asdict(a).items() if k != "attack"} for a in self.attacks},
            "members": self.members,
            "nonmembers": self.nonmembers,
            "delta": self.delta,
            "confidence": 1.0 - self.alpha,
            "max_auc": self.max_auc,
            "epsilon_lb": self.epsilon_lb,
            "notes": self.notes,
        }


# --- scores -------------------------------------------------------------------------------------------------------
def log_probabilities(outputs: np.ndarray) -> np.ndarray:
    """[N, C] log-probabilities from model outputs: logits (any real rows), probabilities (rows ≥ 0 summing to 1),
    or one logit per row ([N] or [N, 1], binary: class 1 when positive)."""
    out = np.asarray(outputs, dtype=np.float64)
    if out.ndim == 1 or (out.ndim == 2 and out.shape[1] == 1):
        logit = out.reshape(-1, 1)
        out = np.concatenate([np.zeros_like(logit), logit], axis=1)
    elif out.ndim != 2:
        raise InvalidInput(f"the audit needs class scores [N, C], the model gives shape {out.shape}")
    if np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-4):
        logp: np.ndarray = np.log(np.clip(out, 1e-300, None))
        return logp
    shifted = out - out.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return logp


def _check_labels(logp: np.ndarray, y: np.ndarray) -> None:
    if len(logp) != len(y) or (len(y) and int(y.max()) >= logp.shape[1]):
        raise InvalidInput(f"audit labels go up to {int(y.max())}, the model scores {logp.shape[1]} classes")


def loss_scores(logp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Loss-threshold attack score: minus the cross-entropy loss, log p(y | x). Members tend to have lower loss."""
    _check_labels(logp, y)
    scores: np.ndarray = logp[np.arange(len(y)), y]
    return scores


def logit_confidence(logp: np.ndarray, y: np.ndarray) -> np.ndarray:
    """LiRA's statistic φ = log(p_y / (1 - p_y)), computed from log-probabilities so that p_y ≈ 1 stays finite."""
    _check_labels(logp, y)
    rows = np.arange(len(y))
    true = logp[rows, y]
    others = logp.copy()
    others[rows, y] = -np.inf
    top = others.max(axis=1, keepdims=True)
    rest = top[:, 0] + np.log(np.exp(others - top).sum(axis=1))
    phi: np.ndarray = true - rest
    return phi


# --- metrics ------------------------------------------------------------------------------------------------------
def roc_auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P(score of a random member > score of a random non-member), ties counted half (Mann–Whitney U)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([members, nonmembers]))
    n_in, n_out = len(members), len(nonmembers)
    return float((ranks[:n_in].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out))


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float) -> float:
    """The largest share of members flagged by a threshold that flags at most `fpr` of the non-members."""
    allowed = math.floor(fpr * len(nonmembers) + 1e-9)
    ordered = np.sort(nonmembers)[::-1]
    # flag scores strictly above the (allowed+1)-th largest non-member score: at most `allowed` false positives
    cut = ordered[allowed] if allowed < len(ordered) else -np.inf
    return float(np.mean(members > cut))


def clopper_pearson(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """Exact two-sided (1 - alpha) interval of a binomial proportion: each side holds with 1 - alpha/2."""
    from scipy.stats import beta

    low = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return low, high


def epsilon_lower_bound(
    members: np.ndarray, nonmembers: np.ndarray, delta: float, alpha: float = 0.05, thresholds: int = 64
) -> EpsilonBound:
    """The largest ε that (ε, δ)-DP must have, given this attack's counts, with confidence 1 - alpha.

    (ε, δ)-DP implies TPR ≤ e^ε·FPR + δ and TNR ≤ e^ε·FNR + δ for every threshold, so
    ε ≥ log((TPR - δ) / FPR) and ε ≥ log((1 - FPR - δ) / (1 - TPR)). TPR and FPR are replaced by Clopper–Pearson
    bounds (TPR low, FPR high) at level alpha / thresholds each (Bonferroni), so the maximum over the
    `thresholds` pooled-score quantiles tried is itself a 1 - alpha bound. Returns ε = 0 when nothing is refuted.
    """
    scores = np.concatenate([members, nonmembers])
    grid = np.unique(np.quantile(scores, np.linspace(0.0, 1.0, thresholds + 2)[1:-1], method="lower"))
    level = alpha / max(1, len(grid))
    n_in, n_out = len(members), len(nonmembers)
    best = EpsilonBound(0.0, None, math.nan, math.nan, math.nan, math.nan, "none")
    for t in grid:
        tp, fp = int(np.sum(members > t)), int(np.sum(nonmembers > t))
        tpr_low = clopper_pearson(tp, n_in, level)[0]
        fpr_high = clopper_pearson(fp, n_out, level)[1]
        candidates = []
        if tpr_low - delta > 0 and fpr_high > 0:
            candidates.append((math.log((tpr_low - delta) / fpr_high), "tpr/fpr"))
        if 1 - fpr_high - delta > 0 and 1 - tpr_low > 0:
            candidates.append((math.log((1 - fpr_high - delta) / (1 - tpr_low)), "tnr/fnr"))
        for eps, direction in candidates:
            if eps > best.epsilon:
                best = EpsilonBound(eps, float(t), tp / n_in, fp / n_out, tpr_low, fpr_high, direction)
    return best


def attack_result(
    name: str, members: np.ndarray, nonmembers: np.ndarray, delta: float, options: AuditOptions
) -> AttackResult:
    """AUC, TPR at each of LOW_FPRS, and the ε lower bound of one attack's scores."""
    return AttackResult(
        name,
        roc_auc(members, nonmembers),
        {f"{fpr:g}": tpr_at_fpr(members, nonmembers, fpr) for fpr in LOW_FPRS},
        epsilon_lower_bound(members, nonmembers, delta, options.alpha, options.thresholds),
    )


# --- LiRA shadow models -------------------------------------------------------------------------------------------
def _sklearn_logp(model: Any, x: np.ndarray, num_classes: int) -> np.ndarray:
    """Log-probabilities over all `num_classes` of an sklearn MLPClassifier, from its logits (not predict_proba, which
    rounds confident rows to 1); classes missing from its training half get -inf logits."""
    h = x.reshape(len(x), -1).astype(np.float64)
    for weight, bias in zip(model.coefs_[:-1], model.intercepts_[:-1], strict=True):
        h = np.maximum(h @ weight + bias, 0.0)
    z = h @ model.coefs_[-1] + model.intercepts_[-1]
    if z.shape[1] == 1:  # sklearn's binary MLP: one logit for classes_[1]
        z = np.concatenate([np.zeros_like(z), z], axis=1)
    logits = np.full((len(x), num_classes), -1e4)
    logits[:, model.classes_.astype(int)] = z
    return log_probabilities(logits)


def shadow_confidences(
    x_public: np.ndarray,
    y_public: np.ndarray,
    x_audit: np.ndarray,
    y_audit: np.ndarray,
    num_classes: int,
    hidden: tuple[int, ...],
    options: AuditOptions,
) -> np.ndarray:
    """[K, N] logit-scaled confidences on the audit rows of K shadow MLPs, each trained on a random subset of the
    public rows (half, or `shadow_rows`); no public row is an audit row, so every shadow is an OUT model."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(options.seed)
    flat = x_public.reshape(len(x_public), -1)
    conf = []
    rows = min(len(flat), options.shadow_rows or max(2, len(flat) // 2))
    for k in range(options.shadow_models):
        half = rng.permutation(len(flat))[:rows]
        model = MLPClassifier(hidden_layer_sizes=hidden, max_iter=options.shadow_epochs, random_state=options.seed + k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(flat[half], y_public[half])
        conf.append(logit_confidence(_sklearn_logp(model, x_audit, num_classes), y_audit))
    return np.stack(conf)


def lira_offline_scores(target_conf: np.ndarray, shadow_conf: np.ndarray) -> np.ndarray:
    """Offline LiRA: how far above its OUT distribution the candidate's confidence lies, (φ - μ_out) / σ_out.

    μ_out is per example (the shadows' mean); σ_out is global (pooled over examples), as Carlini et al. advise for
    fewer than ~64 shadow models. Monotone in the one-sided likelihood-ratio test, so the ROC is the same.
    """
    mu = shadow_conf.mean(axis=0)
    sigma = float(np.std(shadow_conf - mu)) if shadow_conf.shape[0] > 1 else float(np.std(shadow_conf))
    scores: np.ndarray = (target_conf - mu) / max(sigma, 1e-6)
    return scores


def _shadow_hidden(candidate_onnx: bytes, options: AuditOptions) -> tuple[int, ...]:
    if options.shadow_hidden is not None:
        return options.shadow_hidden
    try:
        hidden = tuple(onnx_mlp.read_mlp(candidate_onnx).hidden)
    except InvalidInput:  # not a plain MLP (quantized, convolutional): a generic shadow
        return (64,)
    return hidden or (64,)


# --- the audit ----------------------------------------------------------------------------------------------------
def audit(
    candidate_onnx: bytes,
    data: AuditData,
    delta: float,
    options: AuditOptions | None = None,
    sess: ort.InferenceSession | None = None,
) -> AuditResult:
    """Run the loss-threshold attack and (with public data and shadow_models > 1) offline LiRA on the candidate.

    alpha is split evenly between the attacks that run, so the largest ε bound over them holds with 1 - alpha.
    """
    options = options or AuditOptions()
    if not 0 < options.alpha < 1 or options.thresholds < 1 or options.shadow_models < 0:
        raise ConfigError("audit options: alpha in (0, 1), thresholds ≥ 1, shadow_models ≥ 0")
    if not 0 <= delta < 1:
        raise ConfigError(f"audit δ must be in [0, 1), got {delta}")
    sess = sess or runtime.session(candidate_onnx)
    logp_in = log_probabilities(runtime.predict(sess, data.x_members))
    logp_out = log_probabilities(runtime.predict(sess, data.x_nonmembers))
    public = (
        (data.x_public, data.y_public)
        if data.x_public is not None and data.y_public is not None and options.shadow_models > 1
        else None
    )
    each = replace(options, alpha=options.alpha / (2 if public is not None else 1))
    attacks = [
        attack_result(
            "loss", loss_scores(logp_in, data.y_members), loss_scores(logp_out, data.y_nonmembers), delta, each
        )
    ]
    notes = []
    if public is not None:
        x_public, y_public = public
        num_classes = logp_in.shape[1]
        if int(y_public.max()) >= num_classes:
            raise ConfigError(
                f"audit data: public labels go up to {int(y_public.max())}, the model has {num_classes} classes"
            )
        x_audit = np.concatenate([data.x_members, data.x_nonmembers])
        y_audit = np.concatenate([data.y_members, data.y_nonmembers])
        shadows = shadow_confidences(
            x_public,
            y_public,
            x_audit,
            y_audit,
            num_classes,
            _shadow_hidden(candidate_onnx, options),
            options,
        )
        target = np.concatenate(
            [logit_confidence(logp_in, data.y_members), logit_confidence(logp_out, data.y_nonmembers)]
        )
        scores = lira_offline_scores(target, shadows)
        n = len(data.x_members)
        attacks.append(attack_result("lira_offline", scores[:n], scores[n:], delta, each))
        rows = min(len(x_public), options.shadow_rows or max(2, len(x_public) // 2))
        notes.append(f"LiRA: {options.shadow_models} shadow models, each on {rows} of {len(x_public)} public rows")
    else:
        notes.append("LiRA skipped: no public data (x_public, y_public) or fewer than 2 shadow models")
    if len(attacks) > 1:
        notes.append(
            f"alpha split between {len(attacks)} attacks: the largest ε bound holds with 1 - {options.alpha:g}"
        )
    notes.append("a lower bound: it can refute a claimed ε, never prove it; few audit rows give a weak bound")
    return AuditResult(attacks, len(data.x_members), len(data.x_nonmembers), delta, options.alpha, notes)
