"""Fuzz the loader of a sealed model's `reference.npz` (gateway/explain/reference.py: `load_reference`).

Input: the raw bytes of the file. The file is signed with the model but still untrusted: it must be read
without pickles, its size checked before anything is decompressed, only finite numbers accepted. Allowed:
NotExplainable (the loader's typed refusal, FAILED_PRECONDITION / 412). An accepted file must give float64
rows of shape [n, features...] with 1 <= n <= MAX_ROWS, every value finite; one call must stay within the
harness's memory bound (256 MiB by default: 4x the loader's own MAX_UNCOMPRESSED).
"""

from __future__ import annotations

import io
import sys
import zipfile

from fuzz.common import Harness, fuzz_main, instrumented

with instrumented():
    import numpy as np

    from gateway.errors import NotExplainable
    from gateway.explain import reference


def load(data: bytes) -> None:
    """The target: the loader on `data`; an accepted array must respect the loader's promises."""
    rows = reference.load_reference({reference.REFERENCE_FILE: data})
    if not isinstance(rows, np.ndarray) or rows.dtype != np.float64:
        raise AssertionError(f"the reference is {type(rows).__name__} {getattr(rows, 'dtype', '')}, not float64")
    if rows.ndim < 2 or not 1 <= rows.shape[0] <= reference.MAX_ROWS or rows[0].size < 1:
        raise AssertionError(f"the reference has shape {rows.shape}, outside [1..{reference.MAX_ROWS}, features...]")
    if not np.isfinite(rows).all():
        raise AssertionError("the reference holds NaN or infinite values")


def _npz(compressed: bool = True, **arrays: object) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)  # type: ignore[operator]
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _size_lie(data: bytes, claimed: int) -> bytes:
    """`data` (a one-member zip) whose central directory claims `claimed` uncompressed bytes."""
    out = bytearray(data)
    at = out.rfind(b"PK\x01\x02")
    out[at + 24 : at + 28] = claimed.to_bytes(4, "little")
    return bytes(out)


def _patched(data: bytes, method: int | None = None, flags: int | None = None, corrupt: bool = False) -> bytes:
    """A one-member zip with its compression method or flags changed (both headers), or its data overwritten."""
    out = bytearray(data)
    for signature, method_at, flags_at in ((b"PK\x03\x04", 8, 6), (b"PK\x01\x02", 10, 8)):
        at = out.find(signature)
        if method is not None:
            out[at + method_at : at + method_at + 2] = method.to_bytes(2, "little")
        if flags is not None:
            out[at + flags_at : at + flags_at + 2] = flags.to_bytes(2, "little")
    if corrupt:
        at = out.find(b"PK\x03\x04") + 30 + int.from_bytes(out[26:28], "little")
        out[at : at + 8] = b"\xff" * 8
    return bytes(out)


def _needs_version(data: bytes, version: int) -> bytes:
    """A one-member zip whose central directory says extracting it needs zip `version` / 10."""
    out = bytearray(data)
    at = out.rfind(b"PK\x01\x02")
    out[at + 6 : at + 8] = version.to_bytes(2, "little")
    return bytes(out)


def seeds() -> dict[str, bytes]:
    """Valid files (compressed, stored, thinned, integer) and attacks on each of the loader's checks."""
    rng = np.random.default_rng(0)
    good = rng.normal(size=(8, 4)).astype(np.float32)
    header = _npy(np.zeros((2, 2)))
    return {
        "seed-valid-compressed": _npz(x=good),
        "seed-valid-stored": _npz(False, x=good),
        "seed-valid-150-rows-thinned": _npz(x=rng.normal(size=(150, 3))),
        "seed-valid-int32-3d": _npz(x=np.arange(24, dtype=np.int32).reshape(2, 3, 4)),
        "seed-valid-extra-member": _npz(x=good, y=np.zeros(3)),
        "seed-no-array-x": _npz(y=good),
        "seed-one-dimensional": _npz(x=np.ones(4)),
        "seed-zero-rows": _npz(x=np.ones((0, 4))),
        "seed-nan": _npz(x=np.array([[1.0, np.nan]])),
        "seed-infinity": _npz(x=np.array([[1.0, np.inf]])),
        "seed-strings": _npz(x=np.array([["a", "b"]])),
        "seed-complex": _npz(x=np.ones((2, 2), np.complex64)),
        "seed-bool": _npz(x=np.ones((2, 2), bool)),
        "seed-pickled-object": _zip({"x.npy": _npy(np.array([[{"a": 1}]], dtype=object))}),
        "seed-plain-pickle": b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.",
        "seed-not-a-zip": b"reference",
        "seed-empty": b"",
        "seed-truncated": _npz(x=good)[:-30],
        "seed-size-claim-over-bound": _size_lie(_zip({"x.npy": _npy(good)}), 0xFFFFFFFF),
        "seed-size-claim-under-actual": _size_lie(_zip({"x.npy": _npy(good)}), 64),
        "seed-header-shape-short": _zip({"x.npy": header.replace(b"(2, 2)", b"(4, 2)")}),
        # found by this harness: zipfile errors outside the caught classes (RuntimeError, zlib.error,
        # NotImplementedError) escape the loader
        "seed-finding-reference-zip-encrypted-flag": _patched(_zip({"x.npy": _npy(good)}), flags=1),
        "seed-finding-reference-zip-deflate-garbage": _patched(_zip({"x.npy": _npy(good)}), corrupt=True),
        "seed-finding-reference-zip-method-99": _patched(_zip({"x.npy": _npy(good)}), method=99),
        "seed-finding-reference-zip-version-12-8": _needs_version(_zip({"x.npy": _npy(good)}), 128),
        "seed-bzip2-garbage": _patched(_zip({"x.npy": _npy(good)}, zipfile.ZIP_BZIP2), corrupt=True),
        "seed-lzma-garbage": _patched(_zip({"x.npy": _npy(good)}, zipfile.ZIP_LZMA), corrupt=True),
        # found by this harness: the .npy header's shape is not checked against the member's size, and numpy
        # allocates the whole claimed array before reading (16 TiB here: an unhandled MemoryError)
        "seed-finding-reference-header-shape-16tib": _zip({"x.npy": header.replace(b"(2, 2)", b"(1099511627776, 2)")}),
        # found by this harness: a .npy file with a zip after it passes the zip check, np.load then reads the
        # .npy and returns an array, not an archive (an unhandled TypeError)
        "seed-finding-reference-npy-zip-polyglot": _npy(np.ones((3, 2))) + _npz(x=good),
        # found by this harness: 48 KB compress 50 MB of int8 zeros (under MAX_UNCOMPRESSED), converted to
        # float64 (400 MB) before the rows are thinned
        "seed-finding-reference-int8-50mb-to-float64": _npz(x=np.zeros((50_000, 1000), np.int8)),
    }


TestOneInput = Harness("reference", load, (NotExplainable,))

if __name__ == "__main__":
    fuzz_main(TestOneInput)
    sys.exit(0)
