"""Fuzz the x-forwarded-client-cert parser and the proxy rule: `xfcc.parse` and `ProxyTrust.resolve`.

Input: the raw header value. It goes to the parser, then to a proxy-mode ProxyTrust three ways: from the
configured proxy (the only peer whose header may be accepted), from a peer that is not a proxy, and to a
direct-mode one (both must refuse whatever the header says). Allowed: Unauthenticated. An accepted header
must name a client whose thumbprint is the SHA-256 of its certificate, equal to the element's Hash, with
the proxy as its connection peer; a parse never yields more elements than the bound.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
import sys
from urllib.parse import quote

from fuzz.common import Harness, fuzz_main, instrumented

with instrumented(("gateway",)):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    from gateway.auth import xfcc
    from gateway.auth.jwk import b64url
    from gateway.auth.peer import PeerIdentity, peer_from_cert
    from gateway.errors import Unauthenticated

PROXY_ID = "spiffe://fuzz.sealgate/proxy"
CLIENT_ID = "spiffe://fuzz.sealgate/client"


@functools.cache
def certificate(uri: str) -> bytes:
    """A self-signed P-256 certificate (PEM) with one URI SAN: the chain is the Authorizer's job, not this one's."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uri.rsplit("/", 1)[-1])])
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.PEM)


@functools.cache
def peers() -> tuple[PeerIdentity, PeerIdentity]:
    """(the configured proxy, a peer that is not one)."""
    return peer_from_cert(certificate(PROXY_ID)), peer_from_cert(certificate(CLIENT_ID + "/other"))


PROXY_MODE = xfcc.ProxyTrust("proxy", [PROXY_ID], cache_size=4)
DIRECT_MODE = xfcc.ProxyTrust("direct")


def resolve(data: bytes) -> None:
    """The target: parse, then the three ProxyTrust checks; an accepted header must be consistent."""
    proxy, stranger = peers()
    metadata = ((xfcc.HEADER, data),)
    for trust, peer in ((PROXY_MODE, stranger), (DIRECT_MODE, proxy)):
        try:
            trust.resolve(peer, metadata)
        except Unauthenticated:
            pass
        else:
            raise AssertionError(f"{trust.mode} mode accepted a header from {peer.name}")
    elements = xfcc.parse(data)
    if not 1 <= len(elements) <= xfcc.MAX_ELEMENTS:
        raise AssertionError(f"parse returned {len(elements)} elements")
    forwarded = PROXY_MODE.resolve(proxy, metadata)
    if not isinstance(forwarded, xfcc.ForwardedPeer) or forwarded.via != proxy:
        raise AssertionError("an accepted header did not yield a peer forwarded by the proxy")
    cert = forwarded.certificate
    if cert is None:
        raise AssertionError("a forwarded peer without its certificate")
    digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()
    if forwarded.thumbprint != b64url(digest) or elements[-1].hash != digest.hex():
        raise AssertionError("the forwarded thumbprint is not the hash of the forwarded certificate")


def seeds() -> dict[str, bytes]:
    """Valid headers (one hop, two hops, Envoy's documented example) and near misses of each parser rule."""
    client = certificate(CLIENT_ID)
    valid = xfcc.header_for(client, by="spiffe://fuzz.sealgate/gateway")
    own = xfcc.parse(valid)[0].hash or ""
    digest = "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688"
    envoy = (
        f'By=http://frontend.lyft.com;Hash={digest};Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";'
        "URI=http://testclient.lyft.com"
    )
    other = certificate(CLIENT_ID + "/other")
    chain = quote(client.decode() + other.decode(), safe="")
    cases = {
        "seed-valid-one-hop": valid,
        "seed-valid-two-hops": f"{envoy},{valid}",
        "seed-valid-envoy-example-no-cert": envoy,
        "seed-finding15-hash-mismatch": valid.replace(own, own[:-1] + ("1" if own[-1] == "0" else "0"), 1),
        "seed-finding15-duplicate-hash": f"Hash={digest};{valid}",
        "seed-finding15-two-certs": valid.split(";Cert=")[0] + f';Cert="{chain}"',
        "seed-finding15-unterminated-quote": valid[:-1],
        "seed-valid-escaped-subject": re.sub(r'Subject="[^"]*"', lambda _: 'Subject="CN=\\"x\\",O=a\\\\b;c"', valid),
        "seed-finding15-bad-percent": valid.replace("%0A", "%0G", 1),
        "seed-finding15-too-many-elements": ",".join([envoy] * (xfcc.MAX_ELEMENTS + 1)),
        "seed-finding15-too-long": valid + ";DNS=" + "a" * xfcc.MAX_HEADER_BYTES,
        "seed-finding15-unknown-key": valid + ";Foo=bar",
    }
    return {name: text.encode("latin-1") for name, text in cases.items()}


TestOneInput = Harness("xfcc", resolve, (Unauthenticated,))

if __name__ == "__main__":
    fuzz_main(TestOneInput)
    sys.exit(0)
