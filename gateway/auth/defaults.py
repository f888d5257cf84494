"""Development defaults of the auth layer, in one place: the dev issuer, audience and SPIFFE trust domain."""

from __future__ import annotations

ISSUER = "https://sealgate.local/dev-issuer"
AUDIENCE = "sealgate"
TRUST_DOMAIN = "sealgate.local"
CERT_DAYS = 365
TOKEN_TTL_S = 3600
