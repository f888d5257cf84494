"""A SuperNode's own training data: a local CSV or NPZ file named in its node config, checked against the task.

The file is read on the node only; nothing from it leaves the node except DP-trained weights (and the row
count, which FedAvg weighs by). The schema check refuses files that would train silently on the wrong thing:
wrong width, non-numeric or non-finite values, labels outside the task's classes, features outside the range
the task's model was trained on (digits are scaled to [0, 1], not 0-16).
"""

from __future__ import annotations

import csv
import io
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from fl.tasks import get_task
from gateway.errors import ConfigError

NODE_CONFIG_KEY = "data-file"
MAX_BYTES = 512 * 1024 * 1024  # a node's file, and each array inside an NPZ once decompressed
LABEL_COLUMN = "label"
FEATURE_RANGE: dict[str, tuple[float, float]] = {"digits": (0.0, 1.0)}


def load_local_data(path: str | Path, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 [n, in_dim], y int64 [n]) from a CSV or NPZ file, after the task's schema check."""
    p = Path(path).expanduser()
    try:
        stat = p.stat()
    except OSError as exc:
        raise ConfigError(f"data file {p}: {exc.strerror or exc}") from None
    if not p.is_file():
        raise ConfigError(f"data file {p} is not a regular file")
    if stat.st_size > MAX_BYTES:
        raise ConfigError(f"data file {p} is {stat.st_size} bytes; the limit is {MAX_BYTES}")
    x, y = _cached(str(p.resolve()), task, stat.st_mtime_ns, stat.st_size)
    return x.copy(), y.copy()


@lru_cache(maxsize=4)
def _cached(path: str, task: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read and check once per (file version, task): every round of a run reads the same rows."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        x, y = _read_npz(Path(path))
    elif suffix == ".csv":
        x, y = _read_csv(Path(path))
    else:
        raise ConfigError(f"data file {path}: use .csv or .npz, not {suffix or 'no extension'!r}")
    return check_schema(x, y, task, path)


def check_schema(x: np.ndarray, y: np.ndarray, task: str, source: str = "data") -> tuple[np.ndarray, np.ndarray]:
    """The rows as the task's model takes them; ConfigError naming the first mismatch otherwise."""
    spec = get_task(task)
    if x.ndim != 2 or x.shape[1] != spec.in_dim:
        raise ConfigError(f"{source}: task {task!r} needs {spec.in_dim} features per row, got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise ConfigError(f"{source}: {len(x)} rows but labels of shape {y.shape}")
    if len(y) == 0:
        raise ConfigError(f"{source}: no rows")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise ConfigError(f"{source}: features must be real numbers, got dtype {x.dtype}")
    xf = x.astype(np.float32)
    if not np.all(np.isfinite(xf)):
        raise ConfigError(f"{source}: features contain NaN or infinite values")
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0))):
        raise ConfigError(f"{source}: labels must be integers, got dtype {y.dtype}")
    yi = y.astype(np.int64)
    if yi.min() < 0 or yi.max() >= spec.num_classes:
        raise ConfigError(f"{source}: labels must be in 0..{spec.num_classes - 1}, found {yi.min()}..{yi.max()}")
    lo_hi = FEATURE_RANGE.get(task)
    if lo_hi is not None and (xf.min() < lo_hi[0] or xf.max() > lo_hi[1]):
        raise ConfigError(
            f"{source}: task {task!r} features must lie in [{lo_hi[0]:g}, {lo_hi[1]:g}], "
            f"found [{xf.min():g}, {xf.max():g}]"
        )
    return np.ascontiguousarray(xf), yi


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays `x` and `y` from an NPZ (no pickles; each array's decompressed size checked before reading)."""
    try:
        with zipfile.ZipFile(path) as zf:
            sizes = {info.filename.removesuffix(".npy"): info.file_size for info in zf.infolist()}
    except (OSError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"data file {path}: not an NPZ archive ({exc})") from None
    missing = [k for k in ("x", "y") if k not in sizes]
    if missing:
        raise ConfigError(f"data file {path}: needs arrays 'x' and 'y', missing {missing}; has {sorted(sizes)}")
    for key in ("x", "y"):
        if sizes[key] > MAX_BYTES:
            raise ConfigError(f"data file {path}: array {key!r} is {sizes[key]} bytes decompressed; limit {MAX_BYTES}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return np.asarray(npz["x"]), np.asarray(npz["y"])
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"data file {path}: cannot read arrays x and y ({exc})") from None


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A CSV with a header row: a `label` column and one numeric column per feature, in the task's order."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"data file {path}: cannot read as UTF-8 text ({exc})") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise ConfigError(f"data file {path}: empty; expected a header row with a {LABEL_COLUMN!r} column")
    names = [h.strip() for h in header]
    if names.count(LABEL_COLUMN) != 1:
        raise ConfigError(f"data file {path}: the header needs exactly one {LABEL_COLUMN!r} column")
    label_at = names.index(LABEL_COLUMN)
    rows: list[list[float]] = []
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(names):
            raise ConfigError(f"data file {path}, line {line_no}: {len(row)} fields, the header has {len(names)}")
        try:
            rows.append([float(c) for c in row])
        except ValueError:
            raise ConfigError(f"data file {path}, line {line_no}: a field is not a number") from None
    data = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(names))
    return np.delete(data, label_at, axis=1), data[:, label_at]


def write_npz(path: str | Path, x: np.ndarray, y: np.ndarray) -> Path:
    """Write rows as the NPZ a node can name in `data-file` (x float32, y int64); for preparing nodes' data."""
    p = Path(path)
    np.savez(p, x=np.asarray(x, dtype=np.float32), y=np.asarray(y, dtype=np.int64))
    return p


def write_csv(path: str | Path, x: np.ndarray, y: np.ndarray) -> Path:
    """Write rows as a CSV a node can name in `data-file`: f0..f{d-1} then `label`."""
    p = Path(path)
    with p.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow([f"f{i}" for i in range(x.shape[1])] + [LABEL_COLUMN])
        for features, label in zip(np.asarray(x), np.asarray(y), strict=True):
            out.writerow([repr(float(v)) for v in features] + [int(label)])
    return p
