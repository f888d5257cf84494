"""Minting dev access tokens (ES256 JWTs with scopes, optionally bound to a client certificate per RFC 8705)."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.auth.defaults import AUDIENCE, ISSUER, TOKEN_TTL_S
from gateway.auth.jwk import algorithm_for_key, b64url, jwk_thumbprint, public_jwk
from gateway.auth.scopes import check_scopes
from gateway.errors import ConfigError, clip
from gateway.fsutil import check_private_mode

_MAX_TTL_S = 30 * 24 * 3600
IssuerKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


def cert_thumbprint(pem_or_der: bytes) -> str:
    """RFC 8705 `x5t#S256`: base64url (no padding) of SHA-256 over the DER of the (first) certificate."""
    data = bytes(pem_or_der)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ConfigError(f"not an X.509 certificate: {exc}") from None
    return b64url(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())


def mint_token(
    issuer_key_path: Path,
    jwks_path_or_kid: Path | str | None,
    sub: str,
    scopes: Sequence[str] | str,
    ttl: int = TOKEN_TTL_S,
    issuer: str = ISSUER,
    audience: str = AUDIENCE,
    bind_cert: bytes | None = None,
) -> str:
    """Sign a JWT with the issuer key: header kid + typ JWT; claims iss aud sub iat nbf exp jti scope [cnf].

    `jwks_path_or_kid`: a JWKS file (the kid of the entry matching the issuer key is used, so a token
    never names a key the verifier lacks), a literal kid, or None for the key's RFC 7638 thumbprint.
    `scopes` is a list or one space-separated string; `bind_cert` (PEM or DER) adds cnf.x5t#S256.
    """
    key = _load_issuer_key(Path(issuer_key_path))
    alg = algorithm_for_key(key)
    kid = _resolve_kid(key, jwks_path_or_kid)
    if not isinstance(sub, str) or not sub.strip():
        raise ConfigError("token subject must be a non-empty string")
    scope_list = _check_scopes(scopes)
    if not 0 < int(ttl) <= _MAX_TTL_S:
        raise ConfigError(f"token ttl must be between 1 and {_MAX_TTL_S} seconds")
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": issuer,
        "aud": audience,
        "sub": sub,
        "iat": now,
        "nbf": now,
        "exp": now + int(ttl),
        "jti": secrets.token_urlsafe(16),
        "scope": " ".join(scope_list),
    }
    if bind_cert is not None:
        claims["cnf"] = {"x5t#S256": cert_thumbprint(bind_cert)}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "JWT"})


def _load_issuer_key(path: Path) -> IssuerKey:
    """Load the unencrypted PEM issuer private key (EC, Ed25519 or RSA); ConfigError when unreadable or when
    every user may read it."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot load token issuer key {path}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
        raise ConfigError(f"unsupported token-signing key type: {type(key).__name__}")
    check_private_mode(path)
    return key


def _resolve_kid(key: IssuerKey, jwks_path_or_kid: Path | str | None) -> str:
    """The kid for `key`: looked up in a JWKS file, given literally, or its thumbprint."""
    own = public_jwk(key)
    if jwks_path_or_kid is None:
        return own["kid"]
    if isinstance(jwks_path_or_kid, str) and not Path(jwks_path_or_kid).is_file():
        return jwks_path_or_kid
    path = Path(jwks_path_or_kid)
    try:
        keys = json.loads(path.read_text("utf-8"))["keys"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read JWKS {path}: {exc}") from None
    for entry in keys:
        try:
            if isinstance(entry, dict) and jwk_thumbprint(entry) == own["kid"] and entry.get("kid"):
                return str(entry["kid"])
        except (ConfigError, KeyError):
            continue
    raise ConfigError(f"the issuer key is not in {path}: tokens it signs would not verify")


def _check_scopes(scopes: Sequence[str] | str) -> list[str]:
    """Validate scopes: printable ASCII without spaces or quotes (RFC 6749 §3.3), at least one, and each one
    the gateway could grant (`gateway.auth.scopes`): a token never carries a scope that silently grants nothing.
    """
    items = scopes.split() if isinstance(scopes, str) else list(scopes)
    for s in items:
        if not isinstance(s, str) or not s or any(not (0x21 <= ord(c) <= 0x7E) or c in '"\\' for c in s):
            raise ConfigError(f"invalid scope {clip(s)!r}")
    return check_scopes(items)
