"""Reference histograms and the population stability index (PSI): the format the release path writes into
provenance and the gateway reads back, and the binning rule both sides share.

Per input feature (column j of an input tensor flattened to rows), the bins are fixed by the reference: the
distinct quantiles q_0 < ... < q_m of the reference column plus one edge just above its maximum, so
`searchsorted(edges, x, side="right")` puts x in bin 0 (underflow, x < q_0), bin i (edges[i-1] <= x < edges[i])
or the last bin (overflow, x above the reference maximum). A constant column thus keeps a bin of its own
value. Only aggregates are recorded: edges and counts, never a row.

PSI = sum_i (p_live,i - p_ref,i) * ln(p_live,i / p_ref,i) with each proportion floored at `EPSILON`, so an
empty bin on either side contributes a finite amount. This module is numpy only: the release path imports it
without the server.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.errors import InvalidInput, clip

KEY = "drift_reference"  # the provenance field
FORMAT = 1
DEFAULT_BINS = 10  # quantile bins per feature (fewer when the column has fewer distinct quantiles)
MAX_BINS = 32  # per feature, underflow and overflow excluded
MAX_FEATURES = 1024  # per model, all inputs together: bounds memory, work per sample and metric series
MAX_INPUTS = 16
EPSILON = 1e-4  # floor of a bin's proportion in PSI
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:/\-]{1,128}")  # an input name that may become part of a metric label


@dataclass(frozen=True)
class InputReference:
    """One input tensor's reference: per feature, its edges and counts, padded to one width.

    `edges` is (features, width) with +inf padding; `counts` is (features, width + 1), zeros in padding;
    `nedges[j]` is feature j's real number of edges, so its last real bin (overflow) is index nedges[j].
    """

    name: str
    edges: np.ndarray
    counts: np.ndarray
    nedges: np.ndarray

    @property
    def features(self) -> int:
        """How many features (columns) this input has."""
        return int(self.edges.shape[0])

    def feature_names(self) -> list[str]:
        """Metric label of each feature: `input[j]`, from the model's own input name."""
        return [f"{self.name}[{j}]" for j in range(self.features)]


@dataclass(frozen=True)
class Reference:
    """A model version's reference histograms, one entry per monitored input."""

    inputs: tuple[InputReference, ...]
    rows: int
    source: str


def rows_of(array: np.ndarray) -> np.ndarray:
    """An input tensor as (rows, features) float64: the first axis is the batch, the rest is flattened."""
    values = np.asarray(array)
    if values.ndim == 0:
        values = values.reshape(1, 1)
    elif values.ndim == 1:
        values = values.reshape(-1, 1)
    return values.reshape(values.shape[0], -1).astype(np.float64, copy=False)


def feature_edges(column: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """The fixed edges of one reference column: distinct quantiles plus one edge just above the maximum."""
    finite = column[np.isfinite(column)]
    if finite.size == 0:
        raise InvalidInput("a reference feature has no finite value")
    quantiles = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)))
    return np.append(quantiles, np.nextafter(quantiles[-1], np.inf))


def bin_counts(column: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of one column's finite values in the len(edges) + 1 bins the edges define (NaN skipped)."""
    kept = column[~np.isnan(column)]
    return np.bincount(np.searchsorted(edges, kept, side="right"), minlength=len(edges) + 1)


def build(inputs: Mapping[str, np.ndarray], *, source: str, bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """The provenance record of reference histograms over `inputs` (input name -> rows of reference data).

    `source` says which data it came from (e.g. "public split"); only edges and counts are kept, never rows.
    InvalidInput for names or sizes the gateway would refuse to monitor.
    """
    if not 1 <= bins <= MAX_BINS:
        raise InvalidInput(f"reference bins must be within 1..{MAX_BINS}, not {bins}")
    if not 1 <= len(inputs) <= MAX_INPUTS:
        raise InvalidInput(f"a reference covers 1..{MAX_INPUTS} inputs, not {len(inputs)}")
    records, total, rows = [], 0, 0
    for name, array in inputs.items():
        if not NAME_PATTERN.fullmatch(name):
            raise InvalidInput(f"input name {clip(name, 64)!r} cannot label a metric (letters, digits, _.:/-)")
        data = rows_of(array)
        if data.shape[0] == 0:
            raise InvalidInput(f"reference data for input {name!r} has no rows")
        total += data.shape[1]
        if total > MAX_FEATURES:
            raise InvalidInput(f"reference data has more than {MAX_FEATURES} features: too many to monitor")
        rows = max(rows, int(data.shape[0]))
        edges = [feature_edges(data[:, j], bins) for j in range(data.shape[1])]
        records.append(
            {
                "name": name,
                "edges": [[float(e) for e in col] for col in edges],
                "counts": [bin_counts(data[:, j], col).tolist() for j, col in enumerate(edges)],
            }
        )
    return {"format": FORMAT, "source": clip(source, 200), "rows": rows, "bins": bins, "inputs": records}


def parse(doc: object, input_names: Sequence[str]) -> Reference:
    """Check a provenance record (signed, but still untrusted input) and pad it for vectorized binning.

    Every input must be one of the model's `input_names`; sizes are bounded; edges finite and strictly
    increasing; counts non-negative integers, one per bin. InvalidInput otherwise.
    """
    if not isinstance(doc, Mapping) or doc.get("format") != FORMAT:
        raise InvalidInput(f"{KEY}: not a format-{FORMAT} record")
    given = doc.get("inputs")
    if not isinstance(given, list) or not 1 <= len(given) <= MAX_INPUTS:
        raise InvalidInput(f"{KEY}: 'inputs' must list 1..{MAX_INPUTS} inputs")
    parsed, total, seen = [], 0, set()
    for item in given:
        if not isinstance(item, Mapping):
            raise InvalidInput(f"{KEY}: an input entry is not an object")
        name = item.get("name")
        if not isinstance(name, str) or name not in input_names or name in seen or not NAME_PATTERN.fullmatch(name):
            raise InvalidInput(f"{KEY}: input {clip(name, 64)!r} is not a (distinct) input of the model")
        seen.add(name)
        edges, counts = item.get("edges"), item.get("counts")
        if not isinstance(edges, list) or not isinstance(counts, list) or len(edges) != len(counts) or not edges:
            raise InvalidInput(f"{KEY}: input {name!r} needs as many 'edges' as 'counts' lists (at least one)")
        total += len(edges)
        if total > MAX_FEATURES:
            raise InvalidInput(f"{KEY}: more than {MAX_FEATURES} features")
        parsed.append(_padded(name, edges, counts))
    rows = doc.get("rows")
    source = doc.get("source")
    return Reference(
        tuple(parsed),
        rows if isinstance(rows, int) and not isinstance(rows, bool) else 0,
        clip(source, 200) if isinstance(source, str) else "",
    )


def _padded(name: str, edges: list[Any], counts: list[Any]) -> InputReference:
    """One input's edges and counts as padded arrays, each feature checked."""
    width = 0
    for col_edges, col_counts in zip(edges, counts, strict=True):
        if not isinstance(col_edges, list) or not isinstance(col_counts, list):
            raise InvalidInput(f"{KEY}: input {name!r}: edges and counts must be lists")
        if not 1 <= len(col_edges) <= MAX_BINS + 2 or len(col_counts) != len(col_edges) + 1:
            raise InvalidInput(f"{KEY}: input {name!r}: 1..{MAX_BINS + 2} edges and one more count per feature")
        width = max(width, len(col_edges))
    features = len(edges)
    padded_edges = np.full((features, width), np.inf)
    padded_counts = np.zeros((features, width + 1), dtype=np.int64)
    nedges = np.zeros(features, dtype=np.int64)
    for j, (col_edges, col_counts) in enumerate(zip(edges, counts, strict=True)):
        if not all(_finite(e) for e in col_edges):
            raise InvalidInput(f"{KEY}: input {name!r} feature {j}: edges must be finite numbers")
        if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 1 << 53 for c in col_counts):
            raise InvalidInput(f"{KEY}: input {name!r} feature {j}: counts must be non-negative integers")
        values = np.asarray(col_edges, dtype=np.float64)
        if np.any(np.diff(values) <= 0):
            raise InvalidInput(f"{KEY}: input {name!r} feature {j}: edges must increase strictly")
        if sum(col_counts) == 0:
            raise InvalidInput(f"{KEY}: input {name!r} feature {j}: the reference counts nothing")
        padded_edges[j, : len(values)] = values
        padded_counts[j, : len(col_counts)] = col_counts
        nedges[j] = len(values)
    return InputReference(name, padded_edges, padded_counts, nedges)


def psi(reference: np.ndarray, live: np.ndarray, epsilon: float = EPSILON) -> np.ndarray:
    """PSI of each row of `live` counts against the same row of `reference` counts (NaN where live is empty).

    Both are (features, bins); proportions are floored at `epsilon`, so padding bins (zero on both sides)
    contribute nothing and an empty bin on one side a bounded amount.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(live, dtype=np.float64)
    ref_total = ref.sum(axis=1, keepdims=True)
    cur_total = cur.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_ref = np.maximum(ref / np.where(ref_total > 0, ref_total, 1.0), epsilon)
        p_cur = np.maximum(cur / np.where(cur_total > 0, cur_total, 1.0), epsilon)
        value = ((p_cur - p_ref) * np.log(p_cur / p_ref)).sum(axis=1)
    result: np.ndarray = np.where(cur_total[:, 0] > 0, value, np.nan)
    return result


def _finite(value: object) -> bool:
    """A finite JSON number (an int too large for a float is not: comparing it never overflows)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and abs(value) <= sys.float_info.max
