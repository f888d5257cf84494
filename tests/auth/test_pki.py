"""The dev PKI and key files that `sealgate init` writes: verified by openssl and by cryptography's
RFC 5280 verifier, with the right SANs and EKUs, private keys 0600, and no silent overwrite."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from gateway.auth import pki
from gateway.auth.jwk import jwk_thumbprint
from gateway.auth.keyfiles import write_private_key
from gateway.errors import ConfigError

PKI_FILES = ["ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key"]


@pytest.fixture()
def certs(tmp_path: Path) -> Path:
    """A fresh dev PKI plus one extra client."""
    d = tmp_path / "certs"
    pki.write_dev_pki(d)
    pki.add_client(d, "edge-1")
    return d


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _openssl_verify(certs: Path, leaf: str, purpose: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-x509_strict", "-purpose", purpose, "-CAfile", str(certs / "ca.pem"), str(certs / leaf)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_write_dev_pki_returns_the_six_files(tmp_path: Path) -> None:
    paths = pki.write_dev_pki(tmp_path / "c")
    assert [p.name for p in paths] == PKI_FILES
    assert all(p.is_file() for p in paths)


@pytest.mark.parametrize(
    ("leaf", "purpose"), [("server.pem", "sslserver"), ("client.pem", "sslclient"), ("client-edge-1.pem", "sslclient")]
)
def test_openssl_verifies_leaves_against_the_ca(certs: Path, leaf: str, purpose: str) -> None:
    result = _openssl_verify(certs, leaf, purpose)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": OK")


def test_openssl_rejects_a_leaf_for_the_wrong_purpose(certs: Path) -> None:
    assert _openssl_verify(certs, "client.pem", "sslserver").returncode != 0
    assert _openssl_verify(certs, "server.pem", "sslclient").returncode != 0


def test_ca_is_a_pathlen0_p256_signing_ca(certs: Path) -> None:
    ca = _cert(certs / "ca.pem")
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp256r1"


def test_server_certificate_sans_and_eku(certs: Path) -> None:
    cert = _cert(certs / "server.pem")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=364) < lifetime <= dt.timedelta(days=366)


def test_client_certificates_carry_their_spiffe_id(certs: Path) -> None:
    for name, file in (("dev", "client.pem"), ("edge-1", "client-edge-1.pem")):
        cert = _cert(certs / file)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://sealgate.local/client/{name}"]
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
            ExtendedKeyUsageOID.CLIENT_AUTH
        ]


def test_rfc5280_verifier_accepts_server_and_client_chains(certs: Path) -> None:
    store = Store([_cert(certs / "ca.pem")])
    now = dt.datetime.now(dt.UTC)
    server = PolicyBuilder().store(store).time(now).build_server_verifier(x509.DNSName("localhost"))
    assert server.verify(_cert(certs / "server.pem"), [])
    server_ip = PolicyBuilder().store(store).time(now)
    server_ip_verifier = server_ip.build_server_verifier(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    assert server_ip_verifier.verify(_cert(certs / "server.pem"), [])
    client = PolicyBuilder().store(store).time(now).build_client_verifier()
    verified = client.verify(_cert(certs / "client-edge-1.pem"), [])
    assert verified.subjects is not None
    assert x509.UniformResourceIdentifier("spiffe://sealgate.local/client/edge-1") in verified.subjects


def test_private_keys_are_0600_and_public_files_0644(certs: Path) -> None:
    pki.write_signing_keys(certs)
    pki.write_recipient_keys(certs)
    pki.write_jwt_issuer(certs)
    keys = sorted(certs.glob("*.key"))
    assert {p.name for p in keys} >= {"ca.key", "server.key", "client.key", "client-edge-1.key", "signing.key"}
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    for public in [*certs.glob("*.pem"), *certs.glob("*.pub"), certs / "jwks.json"]:
        assert stat.S_IMODE(public.stat().st_mode) == 0o644, public
    assert not list(certs.glob(".*.tmp")), "temporary files left behind"


def test_refuses_to_overwrite_without_force(certs: Path) -> None:
    before = {n: (certs / n).read_bytes() for n in PKI_FILES}
    with pytest.raises(ConfigError, match=r"ca\.pem"):
        pki.write_dev_pki(certs)
    assert {n: (certs / n).read_bytes() for n in PKI_FILES} == before
    with pytest.raises(ConfigError, match=r"client-edge-1\.pem"):
        pki.add_client(certs, "edge-1")


def test_force_replaces_everything_with_a_new_ca(certs: Path) -> None:
    old_ca = (certs / "ca.pem").read_bytes()
    pki.write_dev_pki(certs, force=True)
    assert (certs / "ca.pem").read_bytes() != old_ca
    assert _openssl_verify(certs, "server.pem", "sslserver").returncode == 0
    assert stat.S_IMODE((certs / "ca.key").stat().st_mode) == 0o600


def test_add_client_needs_the_ca_and_a_safe_name(tmp_path: Path, certs: Path) -> None:
    with pytest.raises(ConfigError, match="dev CA"):
        pki.add_client(tmp_path / "empty", "x")
    for bad in ("../evil", "a b", "", "x/y", "-lead"):
        with pytest.raises(ConfigError):
            pki.add_client(certs, bad)
    assert not list(certs.glob("client-*evil*"))


def test_write_private_key_is_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = write_private_key(tmp_path / "k.key", ec.generate_private_key(ec.SECP256R1()))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match=r"k\.key"):
        write_private_key(path, ec.generate_private_key(ec.SECP256R1()))
    replacement = ec.generate_private_key(ec.SECP256R1())
    write_private_key(path, replacement, force=True)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert loaded.public_key() == replacement.public_key()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.key"]


def test_write_private_key_does_not_follow_or_replace_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / "k.key").symlink_to(target)
    with pytest.raises(ConfigError):
        write_private_key(tmp_path / "k.key", ec.generate_private_key(ec.SECP256R1()))
    assert target.read_text() == "keep"


def test_signing_and_recipient_keys(tmp_path: Path) -> None:
    key_path, pub_path = pki.write_signing_keys(tmp_path)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert serialization.load_pem_public_key(pub_path.read_bytes()) == key.public_key()
    rkey_path, rpub_path = pki.write_recipient_keys(tmp_path, stem="edge")
    assert (rkey_path.name, rpub_path.name) == ("edge.key", "edge.pub")
    rkey = serialization.load_pem_private_key(rkey_path.read_bytes(), password=None)
    assert isinstance(rkey, x25519.X25519PrivateKey)
    assert stat.S_IMODE(rkey_path.stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match=r"signing\.key"):
        pki.write_signing_keys(tmp_path)


def test_jwt_issuer_jwks_kid_is_the_rfc7638_thumbprint(tmp_path: Path) -> None:
    key_path, pub_path, jwks_path = pki.write_jwt_issuer(tmp_path)
    (entry,) = json.loads(jwks_path.read_text())["keys"]
    assert entry["kty"] == "EC" and entry["crv"] == "P-256"
    assert entry["alg"] == "ES256" and entry["use"] == "sig"
    assert "d" not in entry
    assert entry["kid"] == jwk_thumbprint(entry)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert serialization.load_pem_public_key(pub_path.read_bytes()) == key.public_key()


def test_jwk_thumbprint_matches_the_rfc7638_example() -> None:
    # RFC 7638 §3.1: this RSA key's thumbprint is NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
        "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZ"
        "Hzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEg"
        "U8awapJzKnqDKgw"
    )
    jwk = {"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_dev_constants() -> None:
    assert pki.ISSUER == "https://sealgate.local/dev-issuer"
    assert pki.AUDIENCE == "sealgate"
    assert pki.TRUST_DOMAIN == "sealgate.local"
    assert pki.client_spiffe_id("x") == "spiffe://sealgate.local/client/x"


def _verifies_for(certs: Path, leaf: str, name: x509.GeneralName) -> bool:
    """Whether cryptography's RFC 5280 server verifier accepts `leaf` for the host `name`."""
    now = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    verifier = PolicyBuilder().store(Store([_cert(certs / "ca.pem")])).time(now).build_server_verifier(name)
    try:
        verifier.verify(_cert(certs / leaf), [])
    except x509.verification.VerificationError:
        return False
    return True


def test_init_sans_name_the_hosts_and_addresses_a_server_is_reached_by(tmp_path: Path) -> None:
    d = tmp_path / "certs"
    pki.write_dev_pki(d, sans=["superlink.example.org", "10.1.2.3", "127.0.0.4", "fd00::7", "localhost"])
    san = _cert(d / "server.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "superlink.example.org"]  # no duplicate
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    assert ips == ["127.0.0.1", "::1", "10.1.2.3", "127.0.0.4", "fd00::7"]
    assert _openssl_verify(d, "server.pem", "sslserver").returncode == 0
    assert _verifies_for(d, "server.pem", x509.DNSName("superlink.example.org"))
    assert _verifies_for(d, "server.pem", x509.IPAddress(ipaddress.ip_address("10.1.2.3")))
    assert not _verifies_for(d, "server.pem", x509.DNSName("other.example.org"))
    assert not _verifies_for(d, "server.pem", x509.IPAddress(ipaddress.ip_address("10.1.2.4")))


@pytest.mark.parametrize("bad", ["bad_name", "-x.example", "*.example.org", "a..b", "1.2.3", "", "x" * 64 + ".org"])
def test_init_refuses_a_bad_san_before_writing_anything(tmp_path: Path, bad: str) -> None:
    d = tmp_path / "certs"
    with pytest.raises(ConfigError, match="invalid --san"):
        pki.write_dev_pki(d, sans=["ok.example.org", bad])
    assert not d.exists() or not any(d.iterdir())


def test_add_server_issues_a_certificate_for_a_remote_host_only(certs: Path) -> None:
    paths = pki.add_server(certs, "superlink", ["superlink.example.org", "192.0.2.10"])
    assert [p.name for p in paths] == ["server-superlink.pem", "server-superlink.key"]
    assert stat.S_IMODE(paths[1].stat().st_mode) == 0o600
    assert _openssl_verify(certs, "server-superlink.pem", "sslserver").returncode == 0
    assert _verifies_for(certs, "server-superlink.pem", x509.IPAddress(ipaddress.ip_address("192.0.2.10")))
    assert not _verifies_for(certs, "server-superlink.pem", x509.DNSName("localhost"))
    with pytest.raises(ConfigError, match="at least one"):
        pki.add_server(certs, "empty", [])
    with pytest.raises(ConfigError, match="exist"):
        pki.add_server(certs, "superlink", ["superlink.example.org"])


def test_cli_init_names_extra_hosts_and_issues_remote_server_certificates(tmp_path: Path) -> None:
    """`sealgate init --san` puts the names in the server certificate; `--server N --san` issues another one."""
    sealgate = [sys.executable, "-m", "gateway.cli"]
    run = subprocess.run([*sealgate, "init", "--dir", str(tmp_path), "--san", "127.0.0.2", "--san", "node.example"])
    assert run.returncode == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "node.example" in names.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "127.0.0.2"}
    run = subprocess.run([*sealgate, "init", "--dir", str(tmp_path), "--server", "n3", "--san", "127.0.0.3"])
    assert run.returncode == 0
    remote = x509.load_pem_x509_certificate((tmp_path / "server-n3.pem").read_bytes())
    ips = remote.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in ips.get_values_for_type(x509.IPAddress)] == ["127.0.0.3"]
    refused = subprocess.run([*sealgate, "init", "--dir", str(tmp_path), "--server", "n4"], capture_output=True)
    assert refused.returncode != 0 and not (tmp_path / "server-n4.pem").exists()
    assert len(refused.stderr.decode().strip().splitlines()) == 1
