"""Crash-safe file writes: temp file in the same folder, fsync, rename, fsync the folder.

Every write that must survive a crash (keys, certificates, repository artifacts and state) goes through
here, so a reader only ever sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from gateway.errors import ConfigError


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | Iterable[bytes], mode: int = 0o644, force: bool = True) -> None:
    """Write `data` (bytes or an iterable of chunks) to `path` atomically with `mode` from creation on.

    With force=False an existing file is refused (ConfigError) rather than replaced.
    """
    path = Path(path)
    if not force and path.exists():
        raise ConfigError(f"{path} exists; refusing to overwrite (use --force)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, bytes | bytearray | memoryview):
                fh.write(data)
            else:
                for chunk in data:
                    fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_secret(path: Path, data: bytes, force: bool = False) -> None:
    """Write a secret (private key, token) with mode 0600 from creation on, atomically."""
    atomic_write(path, data, 0o600, force)


def write_public(path: Path, data: bytes, force: bool = False) -> None:
    """Write a public file (certificate, public key, JWKS) with mode 0644, atomically."""
    atomic_write(path, data, 0o644, force)
