"""Authentication and authorization for the gateway: mTLS credentials, JWT verification with a token cache,
scope policy, client-certificate chain checks, certificate-bound tokens, the audit log, and the dev PKI.
Knows nothing of models.
"""

from gateway.auth.audit import AuditLog
from gateway.auth.authorizer import Authorizer, Principal, bearer_token
from gateway.auth.chain import ClientCertVerifier
from gateway.auth.defaults import AUDIENCE, ISSUER, TRUST_DOMAIN
from gateway.auth.jwt_verify import Claims, TokenVerifier, preparse
from gateway.auth.peer import (
    ANONYMOUS,
    PeerIdentity,
    check_binding,
    peer_from_auth_context,
    peer_from_cert,
    peer_from_grpc_context,
)
from gateway.auth.policy import authorize, is_allowed
from gateway.auth.tls import channel_credentials, server_credentials, ssl_context_for_rest
from gateway.auth.tokens import cert_thumbprint, mint_token

__all__ = [
    "ANONYMOUS",
    "AUDIENCE",
    "ISSUER",
    "TRUST_DOMAIN",
    "AuditLog",
    "Authorizer",
    "Claims",
    "ClientCertVerifier",
    "PeerIdentity",
    "Principal",
    "TokenVerifier",
    "authorize",
    "bearer_token",
    "cert_thumbprint",
    "channel_credentials",
    "check_binding",
    "is_allowed",
    "mint_token",
    "peer_from_auth_context",
    "peer_from_cert",
    "peer_from_grpc_context",
    "preparse",
    "server_credentials",
    "ssl_context_for_rest",
]
