"""Development defaults of the auth layer: the dev issuer, audience and algorithms, SPIFFE trust domain.

Issuer, audience and algorithms are defined once, in gateway/config.py (the `[auth]` defaults), and
only named here for the auth modules.
"""

from __future__ import annotations

from gateway.config import DEFAULT_ALGORITHMS as ALGORITHMS
from gateway.config import DEV_AUDIENCE as AUDIENCE
from gateway.config import DEV_ISSUER as ISSUER

__all__ = ["ALGORITHMS", "AUDIENCE", "CERT_DAYS", "ISSUER", "TOKEN_TTL_S", "TRUST_DOMAIN"]

TRUST_DOMAIN = "sealgate.local"
CERT_DAYS = 365
TOKEN_TTL_S = 3600
