"""Fuzz the checker of a `drift_reference` provenance record (gateway/monitor/reference.py: `parse`).

Input: JSON bytes (anything `json.loads` refuses is skipped: provenance is JSON before it gets here), checked
against a fixed model input spec (INPUT_NAMES, one of which could not label a metric). Allowed: InvalidInput.
An accepted record must respect the bounds: 1..MAX_INPUTS distinct inputs of the model whose names can label
a metric, 1..MAX_FEATURES features in all, per feature 1..MAX_BINS + 2 finite strictly increasing edges
(+inf padding after them), one more count than edges, non-negative, not all zero (zeros in padding).
"""

from __future__ import annotations

import json
import sys

from fuzz.common import Harness, fuzz_main, instrumented

with instrumented():
    import numpy as np

    from gateway.errors import InvalidInput
    from gateway.monitor import reference as ref

INPUT_NAMES = ("input", "mask", "x.y:z/w-1", "bad name")  # the last one can never be monitored


def check(data: bytes) -> None:
    """The target: parse the record; an accepted one must respect every bound (AssertionError otherwise)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return
    parsed = ref.parse(doc, INPUT_NAMES)
    if not 1 <= len(parsed.inputs) <= ref.MAX_INPUTS:
        raise AssertionError(f"{len(parsed.inputs)} inputs accepted")
    names = [item.name for item in parsed.inputs]
    if len(set(names)) != len(names) or not all(n in INPUT_NAMES and ref.NAME_PATTERN.fullmatch(n) for n in names):
        raise AssertionError(f"inputs {names!r} accepted")
    if not 1 <= sum(item.features for item in parsed.inputs) <= ref.MAX_FEATURES:
        raise AssertionError("a feature count outside 1..MAX_FEATURES accepted")
    if not isinstance(parsed.rows, int) or len(parsed.source) > 201:
        raise AssertionError("rows or source unbounded")
    for item in parsed.inputs:
        _check_input(item)


def _check_input(item: ref.InputReference) -> None:
    """One input's padded arrays: shapes, then each feature's edges and counts."""
    features, width = item.edges.shape
    if item.counts.shape != (features, width + 1) or item.nedges.shape != (features,):
        raise AssertionError(f"{item.name}: edges {item.edges.shape}, counts {item.counts.shape} do not agree")
    if item.counts.dtype != np.int64 or item.edges.dtype != np.float64 or not 1 <= width <= ref.MAX_BINS + 2:
        raise AssertionError(f"{item.name}: dtypes or width {width} outside the bounds")
    for j in range(features):
        n = int(item.nedges[j])
        edges, counts = item.edges[j], item.counts[j]
        if not 1 <= n <= width:
            raise AssertionError(f"{item.name}[{j}]: {n} edges")
        if not np.isfinite(edges[:n]).all() or np.any(np.diff(edges[:n]) <= 0) or np.any(edges[n:] != np.inf):
            raise AssertionError(f"{item.name}[{j}]: edges not finite and strictly increasing: {edges[:n]}")
        if np.any(counts < 0) or counts[: n + 1].sum() <= 0 or np.any(counts[n + 1 :] != 0):
            raise AssertionError(f"{item.name}[{j}]: counts {counts}")


def seeds() -> dict[str, bytes]:
    """Records the release path writes, and attacks on each bound the checker enforces."""
    valid = ref.build(
        {"input": np.arange(40, dtype=np.float32).reshape(10, 4), "mask": np.array([0, 1, 1, 0, 1])},
        source="public split",
        bins=4,
    )
    one = {"name": "input", "edges": [[0.0, 1.0]], "counts": [[1, 2, 3]]}

    def record(*inputs: object, **extra: object) -> bytes:
        return json.dumps({"format": 1, "rows": 6, "source": "s", "inputs": list(inputs), **extra}).encode()

    return {
        "seed-valid-built": json.dumps(valid).encode(),
        "seed-valid-one-feature": record(one),
        "seed-valid-ragged-widths": record({**one, "edges": [[0.0], [0, 1, 2]], "counts": [[1, 0], [0, 1, 0, 2]]}),
        "seed-valid-odd-name": record({**one, "name": "x.y:z/w-1"}),
        "seed-unknown-input": record({**one, "name": "other"}),
        "seed-unmonitorable-name": record({**one, "name": "bad name"}),
        "seed-duplicate-input": record(one, one),
        "seed-too-many-inputs": record(*[one] * (ref.MAX_INPUTS + 1)),
        "seed-too-many-features": record({**one, "edges": [[0.0]] * 1025, "counts": [[1, 1]] * 1025}),
        "seed-too-many-bins": record({**one, "edges": [list(range(35))], "counts": [[1] * 36]}),
        "seed-decreasing-edges": record({**one, "edges": [[1.0, 0.0]]}),
        "seed-equal-edges": record({**one, "edges": [[1.0, 1.0]]}),
        "seed-edges-2-53-collide": record({**one, "edges": [[2**53, 2**53 + 1]]}),
        "seed-nan-edge": b'{"format": 1, "inputs": [{"name": "input", "edges": [[NaN, 1]], "counts": [[1, 1, 1]]}]}',
        "seed-infinite-edge": b'{"format":1,"inputs":[{"name":"input","edges":[[-Infinity,1]],"counts":[[1,1,1]]}]}',
        "seed-bool-edge": record({**one, "edges": [[False, True]]}),
        "seed-negative-count": record({**one, "counts": [[1, -1, 1]]}),
        "seed-count-2-53": record({**one, "counts": [[2**53, 0, 0]]}),
        "seed-zero-counts": record({**one, "counts": [[0, 0, 0]]}),
        "seed-count-mismatch": record({**one, "counts": [[1, 2]]}),
        "seed-wrong-format": json.dumps({"format": 2, "inputs": [one]}).encode(),
        "seed-not-object": b"[1, 2]",
        "seed-nested-1000": b"[" * 1000 + b"]" * 1000,
        # found by this harness: an integer edge beyond float range (10**400) makes math.isfinite raise
        # OverflowError, not InvalidInput (the drift monitor catches only InvalidInput)
        "seed-finding-drift_reference-edge-10e400": record({**one, "edges": [[0, 10**400]]}),
    }


TestOneInput = Harness("drift_reference", check, (InvalidInput,))

if __name__ == "__main__":
    fuzz_main(TestOneInput)
    sys.exit(0)
