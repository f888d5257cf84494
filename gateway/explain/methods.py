"""Attribution methods over any batch function `fn: [n, M] float64 -> [n]` (the explained output column).

KernelSHAP (Lundberg & Lee 2017) through `shap.KernelExplainer`: Shapley values estimated by a weighted
linear regression over `nsamples` feature coalitions, each evaluated against every background row, so the
model runs on about nsamples x background rows. Local accuracy holds exactly (base + sum = output); for a
linear model the values are exactly w_i (x_i - E[x_i]). Occlusion: each feature in turn replaced by its
background mean, M + 2 rows in all: cheap, and exact for a linear model, but it does not add up in general.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

BatchFn = Callable[[np.ndarray], np.ndarray]
SEED = 0  # KernelSHAP samples coalitions with numpy's global generator: seeded, so an answer is reproducible
_SHAP_LOCK = threading.Lock()  # that global state is saved, seeded and restored under this lock


@dataclass(frozen=True)
class Attribution:
    """One instance's explanation: base value, one value per feature (flat), the output, the column explained."""

    base_value: float
    values: np.ndarray
    output: float
    target: int


def kernel_shap(fn: BatchFn, x: np.ndarray, background: np.ndarray, nsamples: int) -> tuple[float, np.ndarray]:
    """KernelSHAP values of one flat instance `x` [M] against `background` [n, M]: (base value, values [M])."""
    import shap  # type: ignore[import-untyped]  # imported on first use (~1.5 s): only explanations need it

    with _SHAP_LOCK:
        state = np.random.get_state()
        np.random.seed(SEED)
        try:
            explainer = shap.KernelExplainer(fn, background, link="identity")
            values = explainer.shap_values(x[None, :], nsamples=nsamples, l1_reg=False, silent=True)
        finally:
            np.random.set_state(state)
    base = float(np.asarray(explainer.expected_value).reshape(-1)[0])
    return base, np.asarray(values, dtype=np.float64).reshape(-1)


def occlusion(fn: BatchFn, x: np.ndarray, background: np.ndarray) -> tuple[float, np.ndarray]:
    """Occlusion of one flat instance `x` [M]: (output at the background mean, output minus the output with
    feature i set to its background mean, for each i)."""
    mean = background.mean(axis=0)
    rows = np.repeat(x[None, :], len(x) + 1, axis=0)
    rows[np.arange(len(x)), np.arange(len(x))] = mean  # row i: feature i occluded; the last row: x itself
    scores = fn(np.vstack([rows, mean[None, :]]))
    output = scores[len(x)]
    return float(scores[-1]), output - scores[: len(x)]
