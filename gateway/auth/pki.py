"""The development PKI and keys that `sealgate init` writes: a P-256 CA, server and SPIFFE client
certificates, the model-signing key, the gateway's X25519 recipient key, and the JWT issuer with its JWKS.

Production deployments bring their own PKI; these are sane, short-lived defaults for one machine.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.auth.defaults import AUDIENCE, CERT_DAYS, ISSUER, TRUST_DOMAIN
from gateway.auth.jwk import public_jwk
from gateway.auth.keyfiles import refuse_existing, write_file, write_private_key
from gateway.errors import ConfigError
from gateway.fsutil import check_private_mode

__all__ = [
    "AUDIENCE",
    "ISSUER",
    "TRUST_DOMAIN",
    "add_client",
    "add_server",
    "client_spiffe_id",
    "parse_san",
    "write_dev_pki",
    "write_jwt_issuer",
    "write_private_key",
    "write_recipient_keys",
    "write_signing_keys",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_SKEW = dt.timedelta(minutes=5)


def client_spiffe_id(name: str, trust_domain: str = TRUST_DOMAIN) -> str:
    """The SPIFFE ID a dev client certificate carries: spiffe://<trust domain>/client/<name>."""
    return f"spiffe://{trust_domain}/client/{_check_name(name)}"


def write_dev_pki(
    dir: Path, force: bool = False, client_name: str = "dev", days: int = CERT_DAYS, sans: Sequence[str] = ()
) -> list[Path]:
    """Write ca.pem/.key, server.pem/.key (localhost, 127.0.0.1, ::1 and `sans`) and client.pem/.key (SPIFFE).

    `sans` are extra host names or IP addresses the server is reached by (`sealgate init --san`), e.g. the
    address SuperNodes on other machines dial. Refuses to touch anything if one of the six files exists,
    unless `force` (which mints a new CA).
    """
    extra = [parse_san(v) for v in sans]
    dir = _ensure_dir(dir)
    paths = [dir / n for n in ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")]
    refuse_existing(paths, force)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_certificate(ca_key, days)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _leaf(
        ca_cert, ca_key, server_key, "localhost", _server_sans(extra), ExtendedKeyUsageOID.SERVER_AUTH, days
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _client_certificate(ca_cert, ca_key, client_key, client_name, days)
    write_private_key(paths[1], ca_key, force)
    write_file(paths[0], _pem(ca_cert), force=force)
    write_private_key(paths[3], server_key, force)
    write_file(paths[2], _pem(server_cert), force=force)
    write_private_key(paths[5], client_key, force)
    write_file(paths[4], _pem(client_cert), force=force)
    return paths


def add_client(dir: Path, name: str, force: bool = False, days: int = CERT_DAYS) -> list[Path]:
    """Issue client-<name>.pem/.key (URI SAN spiffe://sealgate.local/client/<name>) from the existing dev CA."""
    dir = Path(dir)
    ca_cert, ca_key = load_ca(dir)
    paths = [dir / f"client-{_check_name(name)}.pem", dir / f"client-{name}.key"]
    refuse_existing(paths, force)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _client_certificate(ca_cert, ca_key, key, name, days)
    write_private_key(paths[1], key, force)
    write_file(paths[0], _pem(cert), force=force)
    return paths


def add_server(dir: Path, name: str, sans: Sequence[str], force: bool = False, days: int = CERT_DAYS) -> list[Path]:
    """Issue server-<name>.pem/.key from the existing dev CA for the given host names / IP addresses only
    (no loopback names unless listed): a certificate for a server on another machine."""
    dir = Path(dir)
    names = [parse_san(v) for v in sans]
    if not names:
        raise ConfigError("a server certificate needs at least one host name or IP address (--san)")
    ca_cert, ca_key = load_ca(dir)
    paths = [dir / f"server-{_check_name(name)}.pem", dir / f"server-{name}.key"]
    refuse_existing(paths, force)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(ca_cert, ca_key, key, _common_name(names[0]), _unique(names), ExtendedKeyUsageOID.SERVER_AUTH, days)
    write_private_key(paths[1], key, force)
    write_file(paths[0], _pem(cert), force=force)
    return paths


def parse_san(value: str) -> x509.GeneralName:
    """An IP address (v4 or v6) as an IP SAN, else a DNS host name (RFC 1123 labels, `*.` wildcard refused)."""
    text = value.strip() if isinstance(value, str) else ""
    try:
        return x509.IPAddress(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    host = text.rstrip(".").lower()
    labels = host.split(".")
    if not host or len(host) > 253 or not all(_DNS_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        raise ConfigError(f"invalid --san {value!r}: use a host name (letters, digits, '-', '.') or an IP address")
    return x509.DNSName(host)


def load_ca(dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Load ca.pem and ca.key from `dir`; ConfigError when missing, unreadable, not a matching P-256 pair, or
    when every user may read the key."""
    try:
        cert = x509.load_pem_x509_certificate((Path(dir) / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((Path(dir) / "ca.key").read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot load the dev CA from {dir}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise ConfigError(f"{dir}/ca.key is not the P-256 key of {dir}/ca.pem")
    check_private_mode(Path(dir) / "ca.key")
    return cert, key


def write_signing_keys(dir: Path, force: bool = False) -> list[Path]:
    """Write the model-signing key pair: signing.key (PKCS#8 PEM, ECDSA P-256) and signing.pub (SPKI PEM)."""
    dir = _ensure_dir(dir)
    paths = [dir / "signing.key", dir / "signing.pub"]
    refuse_existing(paths, force)
    key = ec.generate_private_key(ec.SECP256R1())
    write_private_key(paths[0], key, force)
    write_file(paths[1], _spki(key.public_key()), force=force)
    return paths


def write_recipient_keys(dir: Path, stem: str = "gateway", force: bool = False) -> list[Path]:
    """Write an X25519 recipient key pair for sealed artifacts: <stem>.key (PKCS#8 PEM), <stem>.pub (SPKI PEM)."""
    dir = _ensure_dir(dir)
    paths = [dir / f"{_check_name(stem)}.key", dir / f"{stem}.pub"]
    refuse_existing(paths, force)
    key = x25519.X25519PrivateKey.generate()
    write_private_key(paths[0], key, force)
    write_file(paths[1], _spki(key.public_key()), force=force)
    return paths


def write_jwt_issuer(dir: Path, force: bool = False) -> list[Path]:
    """Write the dev token issuer: jwt-issuer.key (ES256, PKCS#8 PEM), jwt-issuer.pub and jwks.json.

    The JWKS key carries `kid` = its RFC 7638 thumbprint, `alg: ES256` and `use: sig`.
    """
    dir = _ensure_dir(dir)
    paths = [dir / "jwt-issuer.key", dir / "jwt-issuer.pub", dir / "jwks.json"]
    refuse_existing(paths, force)
    key = ec.generate_private_key(ec.SECP256R1())
    jwks = json.dumps({"keys": [public_jwk(key.public_key())]}, indent=2) + "\n"
    write_private_key(paths[0], key, force)
    write_file(paths[1], _spki(key.public_key()), force=force)
    write_file(paths[2], jwks.encode("utf-8"), force=force)
    return paths


CRL_DAYS = 7


def revoke(dir: Path, cert: Path, days: int = CRL_DAYS) -> Path:
    """Add a certificate issued by the dev CA to `dir`/crl.pem (made if absent), signed by the CA; atomic.

    The gateway enforces it when `[tls] crl` names the file; it re-reads the file within a second.
    """
    ca_cert, ca_key = load_ca(dir)
    try:
        leaf = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read certificate {cert}: {exc}") from None
    try:
        leaf.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(f"{cert} was not issued by the CA in {dir}") from None
    if leaf == ca_cert:  # self-issued: revoking the root in its own CRL would lock every client out
        raise ConfigError(f"{cert} is the CA itself; to replace the CA, write a new PKI (`sealgate init --force`)")
    path = Path(dir) / "crl.pem"
    entries: list[x509.RevokedCertificate] = []
    if path.exists():
        try:
            old = x509.load_pem_x509_crl(path.read_bytes())
        except ValueError as exc:
            raise ConfigError(f"{path} is not a CRL: {exc}") from None
        if not old.is_signature_valid(ca_key.public_key()):
            raise ConfigError(f"{path} is not signed by the CA in {dir}")
        entries = [e for e in old if e.serial_number != leaf.serial_number]
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=days))
    )
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    builder = builder.add_revoked_certificate(
        x509.RevokedCertificateBuilder().serial_number(leaf.serial_number).revocation_date(now).build()
    )
    crl = builder.sign(ca_key, hashes.SHA256())
    write_file(path, crl.public_bytes(serialization.Encoding.PEM), force=True)
    return path


# --- certificates ---------------------------------------------------------------------------------
def _ca_certificate(key: ec.EllipticCurvePrivateKey, days: int) -> x509.Certificate:
    """A self-signed CA: CA:true with pathlen 0 (it signs leaves only), keyCertSign + cRLSign."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sealgate"),
            x509.NameAttribute(NameOID.COMMON_NAME, "sealgate dev CA"),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    return builder.sign(key, hashes.SHA256())


def _client_certificate(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, key: ec.EllipticCurvePrivateKey, name: str, days: int
) -> x509.Certificate:
    """A client leaf whose only SAN is its SPIFFE ID, for clientAuth."""
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(client_spiffe_id(name))]
    return _leaf(ca_cert, ca_key, key, name, sans, ExtendedKeyUsageOID.CLIENT_AUTH, days)


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    sans: list[x509.GeneralName],
    eku: x509.ObjectIdentifier,
    days: int,
) -> x509.Certificate:
    """An end-entity certificate: CA:false, digitalSignature, one EKU, the given SANs, valid `days`."""
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sealgate"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    return builder.sign(ca_key, hashes.SHA256())


def _server_sans(extra: Sequence[x509.GeneralName] = ()) -> list[x509.GeneralName]:
    """Loopback names (DNS:localhost, IP:127.0.0.1, IP:::1) and then `extra`, each once."""
    loopback: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    return _unique([*loopback, *extra])


def _unique(names: Sequence[x509.GeneralName]) -> list[x509.GeneralName]:
    """`names` without repeats, first occurrence kept."""
    out: list[x509.GeneralName] = []
    for n in names:
        if n not in out:
            out.append(n)
    return out


def _common_name(name: x509.GeneralName) -> str:
    """A subject CN for a server certificate: its first SAN as text (clients check the SAN, not the CN)."""
    return str(name.value)


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    """keyCertSign + cRLSign for the CA, digitalSignature (all ECDHE-ECDSA needs) for leaves."""
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


# --- small helpers --------------------------------------------------------------------------------
def _check_name(name: str) -> str:
    """A client or key name safe in a file name and a SPIFFE path: [A-Za-z0-9._-], up to 63 characters."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"invalid name {name!r}: use letters, digits, '.', '_' or '-' (max 63)")
    return name


def _ensure_dir(dir: Path) -> Path:
    """Create the key directory (0700 when new) and return it as a Path."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return dir


def _now() -> dt.datetime:
    """The current time in UTC, to the second."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _pem(cert: x509.Certificate) -> bytes:
    """A certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def _spki(pub: ec.EllipticCurvePublicKey | x25519.X25519PublicKey) -> bytes:
    """A public key as SubjectPublicKeyInfo PEM."""
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
