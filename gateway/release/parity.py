"""Output parity: how far a converted model's outputs are from its source's on the same inputs.

A conversion that changes what the model computes (a dropped attribute, state outside the weights, a wrong
opset translation) is caught here, before anything is optimized or released.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from gateway.errors import GateFailed
from gateway.release import runtime

DEFAULT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ParityReport:
    """Largest absolute and relative difference over all outputs; passed when max_abs ≤ tolerance.

    max_rel is max|a − b| / max|b| (relative to the reference's scale, not elementwise, which explodes near 0).
    """

    max_abs: float
    max_rel: float
    passed: bool
    tolerance: float
    message: str

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form for reports and provenance."""
        return asdict(self)

    def raise_for_failure(self) -> None:
        """GateFailed naming the parity gap when the check did not pass."""
        if not self.passed:
            raise GateFailed(self.message)


def compare(
    reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], tolerance: float = DEFAULT_TOLERANCE
) -> ParityReport:
    """Compare two {output name: array} mappings; missing outputs, shape changes and NaN mismatches fail."""
    if set(reference) != set(candidate):
        missing = sorted(set(reference) ^ set(candidate))
        return ParityReport(float("inf"), float("inf"), False, tolerance, f"parity failed: outputs differ ({missing})")
    max_abs = 0.0
    scale = 0.0
    for name, ref in reference.items():
        ref = np.asarray(ref, dtype=np.float64)
        got = np.asarray(candidate[name], dtype=np.float64)
        if ref.shape != got.shape:
            msg = f"parity failed: output {name!r} has shape {got.shape}, expected {ref.shape}"
            return ParityReport(float("inf"), float("inf"), False, tolerance, msg)
        if not np.array_equal(np.isnan(ref), np.isnan(got)):
            return ParityReport(float("inf"), float("inf"), False, tolerance, f"parity failed: NaN in output {name!r}")
        both = ~np.isnan(ref)
        if both.any():
            max_abs = max(max_abs, float(np.max(np.abs(ref[both] - got[both]))))
            scale = max(scale, float(np.max(np.abs(ref[both]))))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    passed = max_abs <= tolerance
    verdict = "within" if passed else "exceeds"
    message = f"parity {'passed' if passed else 'failed'}: max |Δ| {max_abs:.3g} {verdict} tolerance {tolerance:g}"
    return ParityReport(max_abs, max_rel, passed, tolerance, message + f" (relative {max_rel:.3g})")


def check_onnx(
    onnx_model: bytes,
    reference: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
    samples: Mapping[str, np.ndarray],
    tolerance: float = DEFAULT_TOLERANCE,
) -> ParityReport:
    """Run `onnx_model` and `reference` on the same named `samples` and compare every output by name."""
    sess = runtime.session(onnx_model)
    names = [o.name for o in sess.get_outputs()]
    try:
        got = dict(zip(names, sess.run(None, dict(samples)), strict=True))
    except Exception as exc:  # onnxruntime's own error types
        raise GateFailed(f"parity failed: the converted model does not run: {str(exc).splitlines()[0][:200]}") from None
    return compare(reference(dict(samples)), got, tolerance)
