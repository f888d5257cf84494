"""Behind a mesh (issue 15): the strict, bounded parser of Envoy's x-forwarded-client-cert, and the rule
that only a configured proxy may forward a client identity (gateway/auth/xfcc.py); the configuration keys.

The real-gateway tests (a proxy certificate forwarding a client over gRPC and REST) are in
tests/security/test_xfcc_gateway.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gateway.auth import pki, xfcc
from gateway.auth.peer import PeerIdentity, peer_from_cert
from gateway.config import Config
from gateway.errors import ConfigError, Unauthenticated

PROXY_ID = "spiffe://sealgate.local/client/proxy"


@pytest.fixture(scope="module")
def mesh(certs: Path) -> Path:
    """The dev PKI of conftest with a proxy client certificate."""
    if not (certs / "client-proxy.pem").exists():
        pki.add_client(certs, "proxy")
    return certs


def _refused(header: str | bytes, needle: str) -> None:
    with pytest.raises(Unauthenticated) as info:
        xfcc.parse(header)
    assert info.value.reason == "xfcc"
    assert needle in str(info.value), str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


# --- the parser ---------------------------------------------------------------------------------------
def test_parses_envoys_documented_example() -> None:
    digest = "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688"
    header = (
        f'By=http://frontend.lyft.com;Hash={digest};Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";'
        "URI=http://testclient.lyft.com"
    )
    [element] = xfcc.parse(header)
    assert element.by == ("http://frontend.lyft.com",)
    assert element.hash == digest
    assert element.subject == "/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client"
    assert element.uri == ("http://testclient.lyft.com",)
    assert element.cert is None


def test_parses_several_elements_repeated_names_escapes_and_case_insensitive_keys() -> None:
    header = "By=a;hash=" + "AB" * 32 + ',by="spiffe://x/y";DNS=a.example;dns=b.example;SUBJECT="CN=\\"q\\",O=x\\\\y"'
    first, last = xfcc.parse(header.encode())
    assert first.by == ("a",) and first.hash == "ab" * 32  # lowercased hex
    assert last.by == ("spiffe://x/y",) and last.dns == ("a.example", "b.example")
    assert last.subject == 'CN="q",O=x\\y'


def test_cert_is_url_decoded_and_round_trips(mesh: Path) -> None:
    pem = (mesh / "client.pem").read_bytes()
    [element] = xfcc.parse(xfcc.header_for(pem, by="spiffe://sealgate.local/gateway"))
    assert element.cert is not None and element.cert.strip() == pem.strip()
    peer = xfcc.forwarded_peer(element, peer_from_cert(mesh.joinpath("client-proxy.pem").read_bytes()))
    direct = peer_from_cert(pem)
    assert (peer.spiffe_id, peer.thumbprint, peer.serial) == (direct.spiffe_id, direct.thumbprint, direct.serial)
    assert peer.via is not None and peer.via.spiffe_id == PROXY_ID


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        ("x" * (xfcc.MAX_HEADER_BYTES + 1), "longer than"),
        (",".join(["By=a"] * (xfcc.MAX_ELEMENTS + 1)), "elements"),
        (";".join(["DNS=a"] * (xfcc.MAX_PAIRS + 1)), "pairs"),
        ("Foo=bar", "unknown key"),
        ("Hash=" + "a" * 64 + ";Hash=" + "b" * 64, "repeated"),
        ('Subject="CN=x', "unterminated"),
        ('Subject="CN=\\x"', "bad escape"),
        ("URI=http://x/?a=b", "must be quoted"),
        ('Subject="a"b', "expected ';' or ','"),
        ("By=a,", "key=value"),
        ("By=a;;Hash=b", "key=value"),
        ("", "key=value"),
        ("=a", "key=value"),
        ("By=a\nHash=b", "printable"),
        ("By=é", "printable"),
        (b"By=\xff", "ASCII"),
        ("Hash=abc", "64 hexadecimal"),
        ('Cert="%zz"', "URL-encoded"),
    ],
)
def test_malformed_headers_are_refused(header: str | bytes, needle: str) -> None:
    _refused(header, needle)


def test_forwarded_certificate_must_match_its_hash_and_be_one_certificate(mesh: Path) -> None:
    proxy = peer_from_cert((mesh / "client-proxy.pem").read_bytes())
    pem = (mesh / "client.pem").read_bytes()
    other = (mesh / "client-edge.pem").read_bytes()
    good = xfcc.parse(xfcc.header_for(pem))[0]
    cases = {
        "Hash does not match": xfcc.Element(hash=hashlib.sha256(b"x").hexdigest(), cert=good.cert),
        "exactly one PEM": xfcc.Element(hash=good.hash, cert=pem + other),
        "must carry Hash and Cert": xfcc.Element(hash=good.hash),
        "readable": xfcc.Element(hash=good.hash, cert=b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"),
    }
    for needle, element in cases.items():
        with pytest.raises(Unauthenticated, match=needle):
            xfcc.forwarded_peer(element, proxy)


# --- who may forward ----------------------------------------------------------------------------------
def _peer(certs: Path, stem: str) -> PeerIdentity:
    return peer_from_cert((certs / f"{stem}.pem").read_bytes())


def test_direct_mode_refuses_the_header_from_anyone(mesh: Path) -> None:
    trust = xfcc.ProxyTrust()
    header = xfcc.header_for((mesh / "client.pem").read_bytes())
    for stem in ("client", "client-proxy"):
        with pytest.raises(Unauthenticated, match="mode is 'direct'"):
            trust.resolve(_peer(mesh, stem), (("x-forwarded-client-cert", header),))
    plain = _peer(mesh, "client")
    assert trust.resolve(plain, (("authorization", "Bearer x"),)) is plain
    with pytest.raises(Unauthenticated):  # a mapping (REST-like) and any case of the name
        trust.resolve(plain, {"X-Forwarded-Client-Cert": header})


def test_proxy_mode_only_a_configured_proxy_forwards(mesh: Path) -> None:
    checked: list[str | None] = []
    trust = xfcc.ProxyTrust("proxy", [PROXY_ID], lambda p: checked.append(p.name))
    client, proxy, edge = _peer(mesh, "client"), _peer(mesh, "client-proxy"), _peer(mesh, "client-edge")
    header = (("x-forwarded-client-cert", xfcc.header_for((mesh / "client.pem").read_bytes())),)

    forwarded = trust.resolve(proxy, header)
    assert isinstance(forwarded, xfcc.ForwardedPeer)
    assert forwarded.thumbprint == client.thumbprint and forwarded.spiffe_id == client.spiffe_id
    assert checked == [PROXY_ID]  # the proxy's own certificate was verified before its header was believed
    assert trust.resolve(forwarded, header) == forwarded  # idempotent: resolved again from the connection peer

    with pytest.raises(Unauthenticated, match="not a configured proxy"):
        trust.resolve(edge, header)
    with pytest.raises(Unauthenticated, match="must forward"):
        trust.resolve(proxy, ())
    with pytest.raises(Unauthenticated, match="more than one header"):
        trust.resolve(proxy, header + header)
    assert trust.resolve(edge, ()) is edge  # a direct client beside the mesh is still a client


def test_a_refused_proxy_certificate_forwards_nothing(mesh: Path) -> None:
    def refuse(peer: PeerIdentity) -> None:
        raise Unauthenticated("client certificate revoked", reason="revoked")

    trust = xfcc.ProxyTrust("proxy", [PROXY_ID], refuse)
    header = (("x-forwarded-client-cert", xfcc.header_for((mesh / "client.pem").read_bytes())),)
    with pytest.raises(Unauthenticated, match="revoked"):
        trust.resolve(_peer(mesh, "client-proxy"), header)


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (PROXY_ID, True),
        (f"uri:{PROXY_ID}", True),
        ("cn:proxy", True),
        ("uri:spiffe://sealgate.local/client/dev", False),
        ("dns:proxy", False),
        ("cn:dev", False),
    ],
)
def test_proxy_identity_forms(mesh: Path, entry: str, match: bool) -> None:
    assert xfcc.ProxyTrust("proxy", [entry]).is_proxy(_peer(mesh, "client-proxy")) is match


def test_identity_entries_must_be_typed() -> None:
    for bad in ("proxy", "ip:10.0.0.1", "uri:", ""):
        with pytest.raises(ValueError):
            xfcc.normalize_identity(bad)
    assert xfcc.normalize_identity("dns:Proxy.Example") == "dns:proxy.example"


def test_config_keys_are_validated() -> None:
    config = Config().replaced(tls={"mode": "proxy", "proxy_identities": [PROXY_ID, "cn:envoy"]})
    assert config.tls.mode == "proxy" and config.tls.proxy_identities == (PROXY_ID, "cn:envoy")
    assert Config().tls.mode == "direct" and Config().tls.proxy_identities == ()
    for tls in (
        {"mode": "mesh"},
        {"mode": "proxy"},
        {"mode": "proxy", "proxy_identities": ["envoy"]},
        {"mode": "proxy", "proxy_identities": [PROXY_ID], "require_client_auth": False},
    ):
        with pytest.raises(ConfigError, match=r"\[tls\]"):
            Config().replaced(tls=tls)
