"""Atomic, no-clobber writing of key and certificate files; private keys are born 0600 and never wider."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from gateway.fsutil import refuse_existing, write_file

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


def write_private_key(path: Path, key: PrivateKeyTypes, force: bool = False) -> Path:
    """Write `key` as unencrypted PKCS#8 PEM, mode 0600, atomically; refuse to overwrite unless `force`."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return write_file(path, pem, PRIVATE_MODE, force)


__all__ = ["PRIVATE_MODE", "PUBLIC_MODE", "refuse_existing", "write_file", "write_private_key"]
