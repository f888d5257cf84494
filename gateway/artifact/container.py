"""The plaintext container inside a sealed artifact: a manifest of (path, size), then the file bytes.

A deliberately tiny format instead of tar: there is nothing to express a link, a device or a mode, so
the unpacker has no such cases to get wrong. Paths are validated on both sides (relative POSIX, no
'..', no empty or dot components, no backslash or NUL) and sizes are bounded before any allocation.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from gateway.errors import UnsafeArchive

MANIFEST_FORMAT = "sealgate-container/1"
READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Upper bounds enforced while unpacking (and sealing), before memory is committed."""

    max_files: int = 10_000
    max_total_bytes: int = 8 << 30
    max_manifest_bytes: int = 4 << 20
    max_path_length: int = 1024


DEFAULT_LIMITS = Limits()


def check_path(name: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """Return `name` if it is a safe relative POSIX path inside the model folder, else raise UnsafeArchive."""
    if not isinstance(name, str) or not name or len(name) > limits.max_path_length:
        raise UnsafeArchive(f"unsafe path in archive: {name!r}")
    if "\\" in name or "\0" in name or name.startswith("/") or PurePosixPath(name).is_absolute():
        raise UnsafeArchive(f"unsafe path in archive: {name!r}")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafeArchive(f"unsafe path in archive: {name!r}")
    return name


@dataclass(frozen=True)
class SourceFile:
    """One file to pack: its path inside the model and where to read it (disk) or its bytes (memory)."""

    name: str
    size: int
    path: Path | None = None
    data: bytes | None = None

    def chunks(self) -> Iterator[bytes]:
        """Stream the file's content in bounded blocks."""
        if self.data is not None:
            yield self.data
            return
        assert self.path is not None
        with open(self.path, "rb") as fh:
            remaining = self.size
            while remaining > 0:
                block = fh.read(min(READ_BLOCK, remaining))
                if not block:
                    raise UnsafeArchive(f"{self.name} shrank while being sealed")
                remaining -= len(block)
                yield block


def collect(src: Path, limits: Limits = DEFAULT_LIMITS, skip: frozenset[str] = frozenset()) -> list[SourceFile]:
    """List the regular files of a model folder (or a single model file) in a stable order.

    Links, devices, sockets and fifos are refused: a sealed model holds regular files only.
    """
    src = Path(src)
    st = os.lstat(src)
    if stat.S_ISREG(st.st_mode):
        return [SourceFile(check_path(src.name, limits), st.st_size, path=src)]
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeArchive(f"{src} is neither a regular file nor a folder")
    files: list[SourceFile] = []
    for root, dirs, names in os.walk(src, followlinks=False):
        for d in dirs:
            if os.path.islink(os.path.join(root, d)):
                raise UnsafeArchive(f"refusing to seal a symbolic link: {os.path.join(root, d)}")
        for n in names:
            full = Path(root) / n
            rel = full.relative_to(src).as_posix()
            if rel in skip:
                continue
            st = os.lstat(full)
            if not stat.S_ISREG(st.st_mode):
                raise UnsafeArchive(f"refusing to seal {rel}: not a regular file (link, device, socket or fifo)")
            files.append(SourceFile(check_path(rel, limits), st.st_size, path=full))
    files.sort(key=lambda f: f.name)
    _check_totals([(f.name, f.size) for f in files], limits)
    return files


def _check_totals(entries: list[tuple[str, int]], limits: Limits) -> None:
    if not entries:
        raise UnsafeArchive("a model holds at least one file")
    if len(entries) > limits.max_files:
        raise UnsafeArchive(f"{len(entries)} files exceed the limit of {limits.max_files}")
    total = sum(size for _, size in entries)
    if total > limits.max_total_bytes:
        raise UnsafeArchive(f"{total} bytes exceed the limit of {limits.max_total_bytes}")
    names = [n for n, _ in entries]
    if len(set(names)) != len(names):
        raise UnsafeArchive("duplicate path in archive")
    lowered = {n.lower() for n in names}
    prefixes = {"/".join(n.split("/")[:i]) for n in names for i in range(1, n.count("/") + 1)}
    if prefixes & set(names) or len(lowered) != len(names):
        raise UnsafeArchive("a path in the archive is both a file and a folder, or differs only in case")


def manifest_bytes(files: list[SourceFile]) -> bytes:
    """The length-prefixed manifest that opens the container."""
    body = json.dumps(
        {"format": MANIFEST_FORMAT, "files": [[f.name, f.size] for f in files]}, separators=(",", ":")
    ).encode()
    return struct.pack(">I", len(body)) + body


def container_size(files: list[SourceFile]) -> int:
    """Exact plaintext size of the container, known before streaming (it goes into the header)."""
    return len(manifest_bytes(files)) + sum(f.size for f in files)


def stream(files: list[SourceFile]) -> Iterator[bytes]:
    """Yield the container: manifest, then each file's bytes in manifest order."""
    yield manifest_bytes(files)
    for f in files:
        yield from f.chunks()


def unpack(plaintext: memoryview | bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, bytes]:
    """Split an authenticated container into {path: bytes}, refusing anything unsafe or inconsistent."""
    return {name: bytes(view) for name, view in unpack_views(plaintext, limits).items()}


def unpack_views(plaintext: memoryview | bytes, limits: Limits = DEFAULT_LIMITS) -> dict[str, memoryview]:
    """Check a container like `unpack`, returning zero-copy views of each file into `plaintext`.

    For callers that verify before copying (the OMS check hashes these views while the copies are made).
    """
    view = memoryview(plaintext)
    if len(view) < 4:
        raise UnsafeArchive("container too short")
    (mlen,) = struct.unpack(">I", view[:4])
    if mlen > limits.max_manifest_bytes or 4 + mlen > len(view):
        raise UnsafeArchive("container manifest length out of bounds")
    try:
        manifest = json.loads(bytes(view[4 : 4 + mlen]))
        fmt = manifest["format"]
        entries = [(n, s) for n, s in manifest["files"]]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise UnsafeArchive(f"malformed container manifest ({exc.__class__.__name__})") from None
    if fmt != MANIFEST_FORMAT:
        raise UnsafeArchive(f"unknown container format {fmt!r}")
    for name, size in entries:
        if not isinstance(name, str) or type(size) is not int:
            raise UnsafeArchive(f"malformed container manifest entry {name!r:.80}: {size!r:.40}")
        check_path(name, limits)
        if size < 0:
            raise UnsafeArchive(f"negative size for {name!r}")
    _check_totals(entries, limits)
    offset = 4 + mlen
    if offset + sum(s for _, s in entries) != len(view):
        raise UnsafeArchive("container sizes do not add up to its length")
    out: dict[str, memoryview] = {}
    for name, size in entries:
        out[name] = view[offset : offset + size]
        offset += size
    return out


def from_mapping(files: Mapping[str, bytes], limits: Limits = DEFAULT_LIMITS) -> list[SourceFile]:
    """Source files from an in-memory mapping (tests, re-sealing), in the same stable order as `collect`."""
    out = [SourceFile(check_path(n, limits), len(b), data=bytes(b)) for n, b in sorted(files.items())]
    _check_totals([(f.name, f.size) for f in out], limits)
    return out
