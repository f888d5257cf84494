"""Certificates the dev PKI would never issue, minted in a test with the dev CA's key: CA:TRUE "clients",
leaves of such intermediates, leaves without clientAuth; plus gRPC calls that present them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.auth import pki
from gateway.auth.keyfiles import write_private_key

DEV_SPIFFE = pki.client_spiffe_id("dev")


@dataclass(frozen=True)
class Minted:
    """A certificate and its key, written as <name>.pem (the chain to present) and <name>.key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    pem: Path
    key_path: Path


def mint(
    certs: Path,
    name: str,
    *,
    issuer: Minted | None = None,
    ca: bool = False,
    eku: list[x509.ObjectIdentifier] | None = None,
    spiffe: str | None = DEV_SPIFFE,
) -> Minted:
    """Issue a certificate from `issuer` (default: the dev CA in `certs`) and write it beside the dev PKI.

    `ca` sets CA:TRUE (keyCertSign, no path length); `eku=None` means clientAuth, `[]` no EKU extension.
    The written PEM holds the certificate followed by its issuer when the issuer is not the dev CA.
    """
    if issuer is None:
        issuer_cert, issuer_key = pki.load_ca(certs)
    else:
        issuer_cert, issuer_key = issuer.cert, issuer.key
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if eku is None else eku
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if spiffe:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe)]), critical=False
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    chain = cert.public_bytes(serialization.Encoding.PEM)
    if issuer is not None:
        chain += issuer.cert.public_bytes(serialization.Encoding.PEM)
    pem, key_path = certs / f"{name}.pem", certs / f"{name}.key"
    pem.write_bytes(chain)
    write_private_key(key_path, key, force=True)  # 0600, as every private key sealgate writes
    return Minted(cert, key, pem, key_path)


def channel(certs: Path, port: int, client: str) -> grpc.Channel:
    """A fresh (unshared) mTLS channel to the gateway presenting certs/<client>.pem and its key."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.pem").read_bytes(),
        private_key=(certs / f"{client}.key").read_bytes(),
        certificate_chain=(certs / f"{client}.pem").read_bytes(),
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.use_local_subchannel_pool", 1)])


def rpc_error(fn: Any) -> grpc.RpcError:
    """The RpcError `fn()` raises (AssertionError if it succeeds)."""
    try:
        fn()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded")
