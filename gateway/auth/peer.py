"""Who is on the other end of the TLS connection: SPIFFE ID, subject and RFC 8705 thumbprint of the
client certificate, from gRPC's auth_context() or a PEM/DER certificate (REST), and the cnf binding check.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.auth.jwk import b64url
from gateway.errors import PermissionDenied, Unauthenticated


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """The client certificate's identity; all None/"" for a connection without one."""

    spiffe_id: str | None
    subject: str
    thumbprint: str | None
    serial: int | None = None  # with `issuer`, what a CRL names
    issuer: str = ""
    certificate: x509.Certificate | None = field(default=None, repr=False, compare=False)  # for chain checks

    @property
    def name(self) -> str | None:
        """The identity to record: the SPIFFE ID, else the subject DN, else None."""
        return self.spiffe_id or self.subject or None


ANONYMOUS = PeerIdentity(spiffe_id=None, subject="", thumbprint=None)


def peer_from_cert(cert: bytes | str | None) -> PeerIdentity:
    """PeerIdentity of a PEM or DER certificate (e.g. `getpeercert(binary_form=True)`); ANONYMOUS for None."""
    if not cert:
        return ANONYMOUS
    data = cert.encode("ascii") if isinstance(cert, str) else bytes(cert)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            parsed = x509.load_pem_x509_certificate(data)
        else:
            parsed = x509.load_der_x509_certificate(data)
    except (ValueError, x509.InvalidVersion):  # InvalidVersion is no ValueError
        raise Unauthenticated("client certificate unreadable", reason="malformed") from None
    der = parsed.public_bytes(serialization.Encoding.DER)
    return PeerIdentity(
        spiffe_id=_spiffe_id(parsed),
        subject=parsed.subject.rfc4514_string(),
        thumbprint=b64url(hashlib.sha256(der).digest()),
        serial=parsed.serial_number,
        issuer=parsed.issuer.rfc4514_string(),
        certificate=parsed,
    )


def peer_from_auth_context(auth_context: Mapping[str, Sequence[bytes]]) -> PeerIdentity:
    """PeerIdentity from grpc `context.auth_context()`; the certificate itself (x509_pem_cert) is authoritative."""
    pem = auth_context.get("x509_pem_cert") or []
    if not pem:
        return ANONYMOUS
    return peer_from_cert(pem[0])


def peer_from_grpc_context(context: Any) -> PeerIdentity:
    """PeerIdentity of a gRPC servicer context (call from the handler: interceptors cannot see auth_context)."""
    return peer_from_auth_context(context.auth_context())


def check_binding(claims: Any, peer: PeerIdentity) -> None:
    """RFC 8705: a token with cnf.x5t#S256 is only good over the certificate it names; else PermissionDenied."""
    bound = getattr(claims, "cnf_thumbprint", None)
    if bound is None:
        return
    if peer.thumbprint is None:
        raise PermissionDenied("token is bound to a client certificate, and none was presented", reason="binding")
    if not hmac.compare_digest(bound.encode("ascii", "replace"), peer.thumbprint.encode("ascii")):
        raise PermissionDenied("token is bound to another client certificate", reason="binding")


def _spiffe_id(cert: x509.Certificate) -> str | None:
    """The SPIFFE ID: the single spiffe:// URI SAN (an X.509-SVID has exactly one URI SAN), else None."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or not uris[0].startswith("spiffe://"):
        return None
    return uris[0]
