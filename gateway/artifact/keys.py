"""Key files of the artifact layer: recipient keys (X25519, hybrid ML-KEM-768 + X25519) and signer keys.

Classical keys are ordinary PKCS#8 / SubjectPublicKeyInfo PEM. The hybrid recipient key has no standard
PEM form yet in `cryptography`, so it is stored as a PEM block of its two raw parts (ML-KEM seed or
public key, then the X25519 raw key). Private keys are written 0600, atomically, never overwritten
silently.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem, x25519

from gateway.errors import ConfigError
from gateway.fsutil import check_private_mode, write_public, write_secret

HYBRID_PRIVATE_LABEL = "SEALGATE MLKEM768-X25519 PRIVATE KEY"
HYBRID_PUBLIC_LABEL = "SEALGATE MLKEM768-X25519 PUBLIC KEY"
KEM_X25519 = "X25519"
KEM_HYBRID = "MLKEM768-X25519"

RecipientPrivate = x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey
RecipientPublic = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey


@dataclass(frozen=True)
class RecipientKey:
    """A recipient's public key with its KEM name and stable key id."""

    kem: str
    public: RecipientPublic
    raw: bytes

    @property
    def key_id(self) -> str:
        return raw_key_id(self.kem, self.raw)


@dataclass(frozen=True)
class Identity:
    """A recipient's private key: what opens an artifact addressed to it."""

    kem: str
    private: RecipientPrivate
    public: RecipientKey


def raw_key_id(kind: str, raw: bytes) -> str:
    """Stable, short key id: the first 16 hex digits of SHA-256 over the kind and the raw public key."""
    return hashlib.sha256(kind.encode() + b"\0" + raw).hexdigest()[:16]


def signer_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """Key id of a signer: the first 16 hex digits of SHA-256 over its SubjectPublicKeyInfo DER."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


# --- generation ------------------------------------------------------------------------------------
def generate_identity(kem: str = KEM_X25519) -> Identity:
    """A fresh recipient key pair; `kem` is X25519 (default) or the hybrid post-quantum MLKEM768-X25519."""
    if kem == KEM_X25519:
        priv = x25519.X25519PrivateKey.generate()
        return _x25519_identity(priv)
    if kem == KEM_HYBRID:
        return _hybrid_identity(mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate())
    raise ConfigError(f"unknown recipient key type {kem!r} (use {KEM_X25519} or {KEM_HYBRID})")


def _x25519_identity(priv: x25519.X25519PrivateKey) -> Identity:
    pub = priv.public_key()
    return Identity(KEM_X25519, priv, RecipientKey(KEM_X25519, pub, pub.public_bytes_raw()))


def _hybrid_identity(mk: mlkem.MLKEM768PrivateKey, xk: x25519.X25519PrivateKey) -> Identity:
    priv = hpke.MLKEM768X25519PrivateKey(mk, xk)
    mpub, xpub = mk.public_key(), xk.public_key()
    raw = mpub.public_bytes_raw() + xpub.public_bytes_raw()
    return Identity(KEM_HYBRID, priv, RecipientKey(KEM_HYBRID, hpke.MLKEM768X25519PublicKey(mpub, xpub), raw))


# --- serialization ---------------------------------------------------------------------------------
def _pem(label: str, data: bytes) -> bytes:
    body = base64.encodebytes(data).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return (
        b"-----BEGIN " + label.encode() + b"-----\n" + b"\n".join(lines) + b"\n-----END " + label.encode() + b"-----\n"
    )


def _unpem(label: str, text: bytes, path: Path) -> bytes:
    begin, end = f"-----BEGIN {label}-----".encode(), f"-----END {label}-----".encode()
    try:
        start, stop = text.index(begin) + len(begin), text.index(end)
        return base64.b64decode(b"".join(text[start:stop].split()), validate=True)
    except ValueError:  # a marker missing, or the body not base64
        raise ConfigError(f"{path}: malformed {label.lower()}") from None


def recipient_public_pem(key: RecipientKey) -> bytes:
    """PEM bytes of a recipient public key."""
    if isinstance(key.public, x25519.X25519PublicKey):
        return key.public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return _pem(HYBRID_PUBLIC_LABEL, key.raw)


def generate_identity_files(private_path: Path, public_path: Path, kem: str, force: bool = False) -> RecipientKey:
    """Generate a recipient key pair of either kind and write it; returns the public key."""
    if kem == KEM_HYBRID:
        mk, xk = mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()
        identity = _hybrid_identity(mk, xk)
        write_secret(private_path, _pem(HYBRID_PRIVATE_LABEL, mk.private_bytes_raw() + xk.private_bytes_raw()), force)
        write_public(public_path, recipient_public_pem(identity.public), force)
        return identity.public
    identity = generate_identity(kem)
    assert isinstance(identity.private, x25519.X25519PrivateKey)
    pem = identity.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_secret(private_path, pem, force)
    write_public(public_path, recipient_public_pem(identity.public), force)
    return identity.public


def load_identity(path: Path) -> Identity:
    """Read a recipient private key (X25519 PKCS#8 PEM, or the hybrid block)."""
    data = _read(path)
    if HYBRID_PRIVATE_LABEL.encode() in data:
        raw = _unpem(HYBRID_PRIVATE_LABEL, data, path)
        if len(raw) != 96:
            raise ConfigError(f"{path}: malformed hybrid private key")
        check_private_mode(path)
        return _hybrid_identity(
            mlkem.MLKEM768PrivateKey.from_seed_bytes(raw[:64]), x25519.X25519PrivateKey.from_private_bytes(raw[64:])
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a readable private key ({exc})") from None
    if not isinstance(key, x25519.X25519PrivateKey):
        raise ConfigError(f"{path}: a recipient identity must be an X25519 or hybrid key")
    check_private_mode(path)
    return _x25519_identity(key)


def load_recipient(path: Path) -> RecipientKey:
    """Read a recipient public key (X25519 SubjectPublicKeyInfo PEM, or the hybrid block)."""
    data = _read(path)
    if HYBRID_PUBLIC_LABEL.encode() in data:
        raw = _unpem(HYBRID_PUBLIC_LABEL, data, path)
        if len(raw) != 1184 + 32:
            raise ConfigError(f"{path}: malformed hybrid public key")
        mpub = mlkem.MLKEM768PublicKey.from_public_bytes(raw[:1184])
        xpub = x25519.X25519PublicKey.from_public_bytes(raw[1184:])
        return RecipientKey(KEM_HYBRID, hpke.MLKEM768X25519PublicKey(mpub, xpub), raw)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a readable public key ({exc})") from None
    if not isinstance(key, x25519.X25519PublicKey):
        raise ConfigError(f"{path}: a recipient must be an X25519 or hybrid public key")
    return RecipientKey(KEM_X25519, key, key.public_bytes_raw())


def load_signer(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read an ECDSA P-256 signing key (PKCS#8 or SEC1 PEM)."""
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a readable private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"{path}: a signing key must be ECDSA P-256 (as OpenSSF Model Signing needs)")
    check_private_mode(path)
    return key


def load_trusted(path: Path) -> ec.EllipticCurvePublicKey:
    """Read a trusted signer's ECDSA P-256 public key (SubjectPublicKeyInfo PEM)."""
    try:
        key = serialization.load_pem_public_key(_read(path))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a readable public key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"{path}: a trusted signer key must be ECDSA P-256")
    return key


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None
