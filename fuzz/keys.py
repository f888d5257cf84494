"""Fixed keys for fuzzing: derived from constant seeds, so checked-in signed seeds stay valid across runs.

These keys protect nothing: they exist so that the fuzzer starts from inputs that pass the signature
checks (a sealed file it can open, a token it can verify) and mutates from there.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import shutil
import struct
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from gateway.artifact import container
from gateway.artifact.keys import KEM_X25519, Identity, RecipientKey
from gateway.artifact.sealed import TrustStore, seal
from gateway.auth.jwk import public_jwk

SAMPLE_NAME = "fuzz"
JWT_ISSUER = "https://issuer.fuzz.sealgate"
JWT_AUDIENCE = "sealgate"
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _scalar(label: str) -> int:
    return int.from_bytes(hashlib.sha256(b"sealgate-fuzz " + label.encode()).digest(), "big") % (_P256_ORDER - 1) + 1


@functools.cache
def signer() -> ec.EllipticCurvePrivateKey:
    """The artifact signer (ECDSA P-256)."""
    return ec.derive_private_key(_scalar("signer"), ec.SECP256R1())


@functools.cache
def identity() -> Identity:
    """The recipient identity (X25519) the sample artifacts are sealed to."""
    priv = x25519.X25519PrivateKey.from_private_bytes(hashlib.sha256(b"sealgate-fuzz recipient").digest())
    pub = priv.public_key()
    return Identity(KEM_X25519, priv, RecipientKey(KEM_X25519, pub, pub.public_bytes_raw()))


@functools.cache
def trust() -> TrustStore:
    """A trust store holding the fuzz signer only."""
    return TrustStore.of([signer().public_key()])


def sample_files() -> dict[str, bytes]:
    """A small model folder whose container spans two 4 KiB chunks."""
    return {"model.onnx": bytes(range(256)) * 16, "extra/vocab.txt": b"a\nb\n"}


def sealed_sample() -> bytes:
    """The sample model sealed to `identity()` by `signer()`, in 4 KiB chunks."""
    _, chunks = seal(
        sample_files(), name=SAMPLE_NAME, version=1, signer=signer(), recipients=[identity().public], chunk_size=4096
    )
    return b"".join(chunks)


def container_sample() -> bytes:
    """The plaintext container of `sample_files()`."""
    return container_of(sample_files())


def container_of(files: Mapping[str, bytes], check: bool = True) -> bytes:
    """A container of `files`; with check=False the paths are written as given (for unsafe-path seeds)."""
    if check:
        return b"".join(container.stream(container.from_mapping(files)))
    body = json.dumps(
        {"format": container.MANIFEST_FORMAT, "files": [[n, len(b)] for n, b in files.items()]}, separators=(",", ":")
    ).encode()
    return struct.pack(">I", len(body)) + body + b"".join(files.values())


@functools.cache
def jwt_issuer() -> ec.EllipticCurvePrivateKey:
    """The token issuer key (ES256)."""
    return ec.derive_private_key(_scalar("jwt issuer"), ec.SECP256R1())


def jwt_kid() -> str:
    """The issuer key's kid in the JWKS (its RFC 7638 thumbprint)."""
    return public_jwk(jwt_issuer().public_key())["kid"]


@functools.cache
def jwks_file() -> Path:
    """A JWKS file holding the issuer's public key, written once per process into a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="sealgate-fuzz-jwks-"))
    atexit.register(shutil.rmtree, folder, True)
    path = folder / "jwks.json"
    path.write_text(json.dumps({"keys": [public_jwk(jwt_issuer().public_key())]}))
    return path


def jwt_token(extra: Mapping[str, Any], ttl: int = 300) -> str:
    """A token the fuzz verifier accepts, with `extra` claims."""
    now = int(time.time())
    claims = {"iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "sub": "fuzz", "iat": now, "exp": now + ttl, **extra}
    return jwt.encode(claims, jwt_issuer(), algorithm="ES256", headers={"kid": jwt_kid(), "typ": "JWT"})
