"""Fuzz JWT pre-parsing and verification: `jwt_verify.preparse` and `TokenVerifier.verify`.

Input layout: the first byte picks the mode. 0: the rest, as text, is a bearer token given to `preparse`
and to a verifier trusting the fixed fuzz issuer (fuzz/keys.py). 1: the rest is a header JSON and a
payload JSON separated by the first newline; `__NOW__`/`__EXP__` become the current time and five
minutes on; both are base64url-encoded and signed by the fuzz issuer, so mutations reach the claim checks
behind the signature. Allowed: Unauthenticated. A token that verifies must not repeat a key in its header
or payload (finding 13: the last "scope" was granted) and must carry the scopes of its one "scope" claim.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from typing import Any

from fuzz.common import Harness, fuzz_main, instrumented

with instrumented(("gateway", "jwt")):
    from jwt.algorithms import ECAlgorithm

    from fuzz import keys
    from gateway.auth import jwt_verify
    from gateway.errors import Unauthenticated

MODE_RAW, MODE_SIGNED = 0, 1
VERIFIER = jwt_verify.TokenVerifier(keys.jwks_file(), keys.JWT_ISSUER, keys.JWT_AUDIENCE, reload_interval=3600)
_SIGNER = ECAlgorithm(ECAlgorithm.SHA256)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def signed_token(head: bytes, payload: bytes) -> str:
    """header.payload.signature over the given JSON bytes (times substituted), signed by the fuzz issuer."""
    now = int(time.time())
    payload = payload.replace(b"__NOW__", str(now).encode()).replace(b"__EXP__", str(now + 300).encode())
    signing_input = f"{_b64(head)}.{_b64(payload)}"
    signature = _SIGNER.sign(signing_input.encode("ascii"), keys.jwt_issuer())
    return f"{signing_input}.{_b64(signature)}"


def _pairs_unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({k for k, _ in pairs}) != len(pairs):
        raise ValueError("duplicate key")
    return dict(pairs)


def _segment(token: str, index: int) -> Any:
    raw = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)), object_pairs_hook=_pairs_unique)


def verify(data: bytes) -> None:
    """The target: pre-parse and verify one token; an accepted token must be unambiguous."""
    if not data:
        return
    if data[0] % 2 == MODE_RAW:
        token = data[1:].decode("utf-8", "surrogateescape")
        if hasattr(jwt_verify, "preparse"):
            try:
                jwt_verify.preparse(token)
            except Unauthenticated:
                pass
    else:
        head, _, payload = data[1:].partition(b"\n")
        token = signed_token(head, payload)
    claims = VERIFIER.verify(token)
    try:
        _segment(token, 0)
        payload_doc = _segment(token, 1)
    except ValueError:
        raise AssertionError("a token whose header or payload repeats a key was accepted") from None
    except RecursionError:
        return  # nested beyond this re-check's reach; the verifier's own bounds decided
    scope = payload_doc.get("scope", "")
    if claims.scopes != frozenset(scope.split()):
        raise AssertionError(f"granted scopes {sorted(claims.scopes)[:8]} differ from the token's scope claim")


TestOneInput = Harness("jwt", verify, (Unauthenticated,))

if __name__ == "__main__":
    fuzz_main(TestOneInput)
    sys.exit(0)
