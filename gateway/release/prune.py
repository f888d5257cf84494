"""Pruning on numpy weights: magnitude (unstructured, layer-wise or global) and structured (whole hidden units).

Magnitude pruning keeps the k largest |w|. That is the exact minimizer of ‖W − W′‖²_F subject to ‖W′‖₀ ≤ k:
for a support S the best W′ equals W on S (anything else only adds error), leaving the error Σ_{i∉S} w_i²; that
sum is smallest when the dropped entries are the smallest in magnitude, i.e. S = the k largest |w|. Global pruning
is the same argument over all pruned matrices at once (one Frobenius norm over the concatenation), so it spends the
budget where weights are small rather than a fixed share per layer. It is optimal in weight space, not in loss,
which is why fine-tuning follows (Han et al. 2015).

Unstructured zeros give ONNX Runtime no speed (sparse initializers are densified at load); removing whole hidden
units shrinks the matrices themselves, so structured pruning is what makes a model faster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from gateway.errors import InvalidInput

Scope = Literal["global", "layer"]


@dataclass(frozen=True)
class MagnitudeResult:
    """Pruned tensors and their keep-masks (True = kept), keyed like the input."""

    tensors: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]

    @property
    def sparsity(self) -> float:
        """Fraction of zeros over all masked entries."""
        total = sum(m.size for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / total if total else 0.0


@dataclass(frozen=True)
class StructuredResult:
    """A smaller MLP (torch orientation: W_l is [out, in]) and, per hidden layer, the indices of the units kept."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    kept: list[np.ndarray]


def _check_fraction(value: float, what: str) -> None:
    if not 0.0 <= value < 1.0:
        raise InvalidInput(f"{what} must be in [0, 1), got {value}")


def keep_count(size: int, sparsity: float) -> int:
    """How many of `size` entries survive `sparsity` (the number dropped is rounded to nearest)."""
    _check_fraction(sparsity, "sparsity")
    return size - round(sparsity * size)


def magnitude_mask(weights: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask keeping the k largest |w| (ties go to the earlier flat index, so the result is deterministic)."""
    if not 0 <= k <= weights.size:
        raise InvalidInput(f"k must be in 0..{weights.size}, got {k}")
    order = np.argsort(-np.abs(weights).ravel(), kind="stable")
    mask = np.zeros(weights.size, dtype=bool)
    mask[order[:k]] = True
    return mask.reshape(weights.shape)


def prunable(tensors: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the tensors magnitude pruning touches: matrices (ndim ≥ 2); biases and scalars stay dense."""
    return [name for name, value in tensors.items() if np.ndim(value) >= 2]


def prune_layerwise(tensors: Mapping[str, np.ndarray], sparsity: float) -> MagnitudeResult:
    """Each matrix loses the same fraction, its own smallest |w|; other tensors pass through unchanged."""
    out = {name: np.array(value, copy=True) for name, value in tensors.items()}
    masks = {}
    for name in prunable(tensors):
        mask = magnitude_mask(out[name], keep_count(out[name].size, sparsity))
        out[name] = np.where(mask, out[name], 0).astype(out[name].dtype)
        masks[name] = mask
    return MagnitudeResult(out, masks)


def prune_global(tensors: Mapping[str, np.ndarray], sparsity: float) -> MagnitudeResult:
    """All matrices together lose `sparsity` of their entries, the smallest |w| over the whole model."""
    out = {name: np.array(value, copy=True) for name, value in tensors.items()}
    names = prunable(tensors)
    if not names:
        return MagnitudeResult(out, {})
    flat = np.concatenate([out[name].ravel() for name in names])
    keep = magnitude_mask(flat, keep_count(flat.size, sparsity))
    masks = {}
    offset = 0
    for name in names:
        size = out[name].size
        mask = keep[offset : offset + size].reshape(out[name].shape)
        out[name] = np.where(mask, out[name], 0).astype(out[name].dtype)
        masks[name] = mask
        offset += size
    return MagnitudeResult(out, masks)


def prune_magnitude(tensors: Mapping[str, np.ndarray], sparsity: float, scope: Scope = "global") -> MagnitudeResult:
    """Magnitude pruning, `scope` "global" (one threshold for all matrices) or "layer" (same share per matrix)."""
    if scope == "global":
        return prune_global(tensors, sparsity)
    if scope == "layer":
        return prune_layerwise(tensors, sparsity)
    raise InvalidInput(f"scope must be 'global' or 'layer', got {scope!r}")


def unit_scores(w_in: np.ndarray, b_in: np.ndarray, w_out: np.ndarray) -> np.ndarray:
    """Score of each hidden unit: ‖[incoming row, bias]‖₂ · ‖outgoing column‖₂.

    A unit's effect on the next layer is |act(w·x + b)|·‖w_out‖, bounded (for ReLU-like act) by that product times
    ‖[x, 1]‖; a unit with zero outgoing weights, or zero incoming weights and bias, scores 0 and is removed exactly.
    """
    incoming = np.sqrt(np.sum(np.square(w_in.astype(np.float64)), axis=1) + np.square(b_in.astype(np.float64)))
    outgoing = np.sqrt(np.sum(np.square(w_out.astype(np.float64)), axis=0))
    score: np.ndarray = incoming * outgoing
    return score


def prune_units(weights: list[np.ndarray], biases: list[np.ndarray], fraction: float) -> StructuredResult:
    """Remove `fraction` of each hidden layer's units (rows of W_l, entries of b_l, columns of W_{l+1}) by score.

    `weights[l]` is [out, in] (torch's nn.Linear layout); the input and output widths never change. At least one
    unit per layer survives; the kept units stay in their original order.
    """
    _check_fraction(fraction, "structured fraction")
    if len(weights) != len(biases) or not weights:
        raise InvalidInput("need one bias per weight matrix and at least one layer")
    ws = [np.array(w, copy=True) for w in weights]
    bs = [np.array(b, copy=True) for b in biases]
    for index in range(len(ws) - 1):
        if ws[index + 1].shape[1] != ws[index].shape[0]:
            raise InvalidInput(
                f"layer {index + 1} takes {ws[index + 1].shape[1]} inputs, layer {index} gives {ws[index].shape[0]}"
            )
    kept = []
    for index in range(len(ws) - 1):
        units = ws[index].shape[0]
        n_keep = max(1, units - round(fraction * units))
        scores = unit_scores(ws[index], bs[index], ws[index + 1])
        keep = np.sort(np.argsort(-scores, kind="stable")[:n_keep])
        ws[index], bs[index] = ws[index][keep, :], bs[index][keep]
        ws[index + 1] = ws[index + 1][:, keep]
        kept.append(keep)
    return StructuredResult(ws, bs, kept)
