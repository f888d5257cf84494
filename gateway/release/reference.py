"""Reference data for a release: a small sample of PUBLIC rows sealed beside the model as `reference.npz`.

Explanations (gateway/explain) measure every answer against it: KernelSHAP's background set, occlusion's
means. It must be public data (the model owner's public split or public evaluation data), never client
data: it travels inside the artifact to everyone the model is sealed for, and provenance says so. The
sample is seeded, so a release is reproducible. Drift histograms are recorded separately
(gateway/release/drift_reference.py), possibly from the same rows.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gateway.errors import ConfigError
from gateway.explain.reference import REFERENCE_FILE
from gateway.fsutil import atomic_write

DEFAULT_ROWS = 50
NOTE = "public reference data (never client data): the background set of explanations"


def sample(x: np.ndarray, rows: int = DEFAULT_ROWS, seed: int = 0) -> np.ndarray:
    """`rows` rows of `x` (all of them if it has fewer), drawn without replacement by a seeded generator."""
    if x.ndim < 2 or len(x) < 1 or not np.issubdtype(x.dtype, np.number):
        raise ConfigError("reference data must be numbers of shape [rows, features...]")
    if not np.isfinite(x).all():
        raise ConfigError("reference data holds NaN or infinite values")
    picked = np.sort(np.random.default_rng(seed).choice(len(x), size=min(rows, len(x)), replace=False))
    return np.ascontiguousarray(x[picked], dtype=np.float32)


def encode(rows: np.ndarray) -> bytes:
    """The bytes of reference.npz holding `rows` as its array `x`."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=rows)  # ARRAY: the name gateway/explain/reference.py reads
    return buffer.getvalue()


def record(data: bytes, rows: np.ndarray, source: str) -> dict[str, Any]:
    """The provenance entry of a reference file: what it is, where it came from, its digest."""
    return {
        "file": REFERENCE_FILE,
        "rows": int(rows.shape[0]),
        "feature_shape": [int(d) for d in rows.shape[1:]],
        "source": source,
        "public": True,
        "note": NOTE,
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def pack(
    model: Mapping[str, bytes] | Path,
    x: np.ndarray,
    *,
    rows: int = DEFAULT_ROWS,
    seed: int = 0,
    source: str = "public evaluation data",
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The model's files (a mapping, a model file or a folder) with reference.npz added, and its provenance
    entry; a model that already has one is refused rather than silently changed."""
    files = dict(model) if isinstance(model, Mapping) else read_model(Path(model))
    if REFERENCE_FILE in files:
        raise ConfigError(f"the model already holds {REFERENCE_FILE}: release it without --reference-rows")
    chosen = sample(x, rows, seed)
    data = encode(chosen)
    files[REFERENCE_FILE] = data
    return files, record(data, chosen, source)


def write(folder: Path, x: np.ndarray, *, rows: int = DEFAULT_ROWS, seed: int = 0, source: str) -> dict[str, Any]:
    """Write reference.npz into a model folder about to be sealed; returns its provenance entry."""
    chosen = sample(x, rows, seed)
    data = encode(chosen)
    atomic_write(folder / REFERENCE_FILE, data)
    return record(data, chosen, source)


def read_model(path: Path) -> dict[str, bytes]:
    """A model file, or every regular file under a model folder, as relative POSIX path -> bytes (no links)."""
    if path.is_file() and not path.is_symlink():
        return {path.name: path.read_bytes()}
    if not path.is_dir():
        raise ConfigError(f"{path} is neither a model file nor a folder")
    files: dict[str, bytes] = {}
    for root, dirs, names in os.walk(path, followlinks=False):
        for name in sorted(names) + [d for d in dirs if Path(root, d).is_symlink()]:
            item = Path(root, name)
            if item.is_symlink() or not item.is_file():
                raise ConfigError(f"{item} is a link or not a regular file: a model folder holds plain files only")
            files[item.relative_to(path).as_posix()] = item.read_bytes()
    return files
