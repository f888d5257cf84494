"""JSON Web Keys: the public JWK of a key, its RFC 7638 thumbprint (used as `kid`), and its JWS algorithm."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gateway.errors import ConfigError

# RFC 7638 §3.2: the required members of each key type, the only ones that enter the thumbprint.
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK: base64url of SHA-256 over its canonical required members."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None:
        raise ConfigError(f"no thumbprint for key type {jwk.get('kty')!r}")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def _public(key: PrivateKeyTypes | PublicKeyTypes) -> PublicKeyTypes:
    """The public half of a key (a public key is returned unchanged)."""
    return key.public_key() if hasattr(key, "private_bytes") else key  # type: ignore[union-attr]


def algorithm_for_key(key: PrivateKeyTypes | PublicKeyTypes) -> str:
    """The JWS algorithm sealgate signs with for this key type (ES256 for P-256, ES384, EdDSA, RS256)."""
    pub = _public(key)
    if isinstance(pub, ec.EllipticCurvePublicKey):
        algs = {"secp256r1": "ES256", "secp384r1": "ES384"}
        if pub.curve.name in algs:
            return algs[pub.curve.name]
    elif isinstance(pub, ed25519.Ed25519PublicKey):
        return "EdDSA"
    elif isinstance(pub, rsa.RSAPublicKey) and pub.key_size >= 2048:
        return "RS256"
    raise ConfigError(f"unsupported token-signing key type: {type(pub).__name__}")


def public_jwk(key: PrivateKeyTypes | PublicKeyTypes) -> dict[str, str]:
    """The public JWK of a key (never its private members), with `kid` = thumbprint, `alg` and `use: sig`."""
    pub = _public(key)
    alg = algorithm_for_key(pub)
    if isinstance(pub, ec.EllipticCurvePublicKey):
        jwk: dict[str, Any] = ECAlgorithm.to_jwk(pub, as_dict=True)
    elif isinstance(pub, ed25519.Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(pub, as_dict=True)
    elif isinstance(pub, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(pub, as_dict=True)
    else:
        raise ConfigError(f"unsupported token-signing key type: {type(pub).__name__}")
    members = _THUMBPRINT_MEMBERS[jwk["kty"]]
    out = {m: str(jwk[m]) for m in members}
    out.update(kid=jwk_thumbprint(out), alg=alg, use="sig")
    return out
