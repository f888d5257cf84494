"""The reference (background) data of a sealed model: `reference.npz`, array `x`, one row per sample.

It is a small sample of PUBLIC data (never client data) that the release path packs beside the model
before sealing (gateway/release/reference.py), so it is signed with the model. A signed file is still
untrusted input: it is read with `allow_pickle=False`, its uncompressed size is checked before anything
is decompressed, and only finite numbers of a regular shape are accepted.
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

from gateway.errors import NotExplainable

REFERENCE_FILE = "reference.npz"
ARRAY = "x"
MAX_ROWS = 100  # KernelSHAP's cost grows with the background: more rows are thinned, evenly spaced
MAX_UNCOMPRESSED = 64 << 20  # bytes of the `x` array once decompressed


def load_reference(files: Mapping[str, bytes]) -> np.ndarray:
    """The background rows (float64, [n, ...], 1 <= n <= MAX_ROWS) of the `reference.npz` among `files`.

    NotExplainable (FAILED_PRECONDITION) when there is none or it cannot be used, saying why.
    """
    data = files.get(REFERENCE_FILE)
    if data is None:
        raise NotExplainable(
            f"the model carries no {REFERENCE_FILE} (reference data to explain against): release it with one "
            "(sealgate release packs one from the public data)"
        )
    if data[:4] != b"PK\x03\x04":
        raise NotExplainable(f"{REFERENCE_FILE} is not an npz (zip) archive")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            info = archive.getinfo(f"{ARRAY}.npy")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):  # what numpy writes
                raise NotExplainable(f"{REFERENCE_FILE}: array {ARRAY!r} is compressed with an unsupported method")
            size = info.file_size
            if size > MAX_UNCOMPRESSED:
                raise NotExplainable(f"{REFERENCE_FILE}: array {ARRAY!r} is {size} bytes, over {MAX_UNCOMPRESSED}")
            x = _npy(archive.read(f"{ARRAY}.npy"))
    except KeyError:
        raise NotExplainable(f"{REFERENCE_FILE} has no array {ARRAY!r}") from None
    except (OSError, ValueError, EOFError, RuntimeError, zlib.error, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise NotExplainable(f"{REFERENCE_FILE} cannot be read: {str(exc)[:120]}") from None
    if x.ndim < 2 or x.shape[0] < 1 or x[0].size < 1:
        raise NotExplainable(f"{REFERENCE_FILE}: {ARRAY!r} must be numbers of shape [rows, features...]")
    if len(x) > MAX_ROWS:  # thin first: the float64 copy below is then bounded by the row cap
        x = x[np.linspace(0, len(x) - 1, MAX_ROWS).round().astype(np.int64)]
    if x.size * 8 > MAX_UNCOMPRESSED:
        raise NotExplainable(f"{REFERENCE_FILE}: {ARRAY!r} rows are too wide ({x[0].size} values each)")
    rows = x.astype(np.float64)
    if not np.isfinite(rows).all():
        raise NotExplainable(f"{REFERENCE_FILE}: {ARRAY!r} holds NaN or infinite values")
    return rows


def _npy(member: bytes) -> np.ndarray:
    """The array of one .npy member, read without numpy's loader: the header's dtype must be numbers and
    its shape must match the bytes that follow, before anything is allocated (a header may claim terabytes)."""
    stream = io.BytesIO(member)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    if dtype.hasobject or dtype.kind not in "fiu":
        raise NotExplainable(f"{REFERENCE_FILE}: {ARRAY!r} must be numbers, not {dtype.str}")
    count = math.prod(shape)
    body = memoryview(member)[stream.tell() :]
    if count * dtype.itemsize != len(body):
        raise NotExplainable(f"{REFERENCE_FILE}: {ARRAY!r}'s shape {shape} does not match its {len(body)} bytes")
    return np.frombuffer(body, dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")
