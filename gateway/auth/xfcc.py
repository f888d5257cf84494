"""Behind a mesh: the client identity a trusted proxy forwards in Envoy's `x-forwarded-client-cert` (XFCC).

`[tls] mode = "proxy"`: a proxy (Envoy, an Istio sidecar or ingress gateway) terminates the client's mTLS and
opens its own mTLS connection to the gateway with its own client certificate. A call then acts for the
client the header names, but only when the connection's verified certificate is one of `[tls]
proxy_identities`; a header from any other peer is refused (UNAUTHENTICATED, audited), and so is a call
from a proxy that carries none (a proxy that dropped the header must not act as itself). In `mode = "direct"`
(the default) the header is refused too: a client has no business sending it, and refusing makes a proxy
put in front of a direct-mode gateway fail loudly instead of every client silently becoming the proxy.

The element used is the LAST one: the one the proxy we trust appended for the peer it saw; earlier
elements were written by hops we do not know. It must carry `Hash` (SHA-256 hex of the client
certificate's DER) and `Cert` (the URL-encoded PEM), which must match: the forwarded certificate is then
checked like a direct client's (chain against `[tls] ca`, EKU, revocation, by the Authorizer) and its
thumbprint is what a `cnf.x5t#S256` token is bound to (RFC 8705). The parser is strict and bounded
(length, elements, pairs, keys known, no duplicate single-valued key, quoting exact): anything else is
refused, never guessed at.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote, unquote_to_bytes

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.auth.peer import PeerIdentity, peer_from_cert
from gateway.errors import Unauthenticated, clip

HEADER = "x-forwarded-client-cert"
MODES = ("direct", "proxy")
MAX_HEADER_BYTES = 16384  # one client certificate URL-encoded is ~2 KB; a chain of a few fits
MAX_ELEMENTS = 8  # proxy hops
MAX_PAIRS = 32  # key=value pairs in one element
MULTI_KEYS = frozenset({"by", "uri", "dns"})  # may repeat within an element
SINGLE_KEYS = frozenset({"hash", "cert", "chain", "subject"})
Metadata = Mapping[str, str | bytes] | Iterable[tuple[str, str | bytes]]  # as gateway.auth.authorizer's
REASON = "xfcc"  # the auth-failure metric label of every refusal here

_HASH = re.compile(r"[0-9a-fA-F]{64}")
_PERCENT = re.compile(r"(?:[^%]|%[0-9A-Fa-f]{2})*")
_KEY = re.compile(r"[A-Za-z]{1,16}")
_IDENTITY = re.compile(r"(uri|dns|cn):(.+)|(spiffe://.+)", re.DOTALL)
_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"


def _refuse(message: str) -> Unauthenticated:
    return Unauthenticated(f"x-forwarded-client-cert refused: {message}", reason=REASON)


@dataclass(frozen=True, slots=True)
class Element:
    """One XFCC element (one proxy hop): the values of its keys, `Cert` already URL-decoded."""

    by: tuple[str, ...] = ()
    hash: str | None = None
    cert: bytes | None = None
    chain: str | None = None
    subject: str | None = None
    uri: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()


def _value(text: str, i: int) -> tuple[str, int]:
    """The value starting at text[i] (quoted or bare) and the index just after it."""
    n = len(text)
    if i < n and text[i] == '"':
        out: list[str] = []
        i += 1
        while i < n:
            ch = text[i]
            if ch == "\\":
                if i + 1 >= n or text[i + 1] not in '"\\':
                    raise _refuse("bad escape in a quoted value")
                out.append(text[i + 1])
                i += 2
            elif ch == '"':
                return "".join(out), i + 1
            else:
                out.append(ch)
                i += 1
        raise _refuse("unterminated quoted value")
    start = i
    while i < n and text[i] not in ";,":
        if text[i] in '"=\\':
            raise _refuse("a value with '\"', '=' or '\\' must be quoted")
        i += 1
    return text[start:i], i


def parse(header: str | bytes) -> list[Element]:
    """The elements of an XFCC header value, first hop first; Unauthenticated (reason "xfcc") when malformed."""
    if len(header) > MAX_HEADER_BYTES:
        raise _refuse(f"longer than {MAX_HEADER_BYTES} bytes")
    if isinstance(header, bytes):
        try:
            header = header.decode("ascii")
        except UnicodeDecodeError:
            raise _refuse("not ASCII") from None
    if not header.isascii() or not header.isprintable():
        raise _refuse("not printable ASCII")
    elements: list[Element] = []
    i, n = 0, len(header)
    while True:
        if len(elements) >= MAX_ELEMENTS:
            raise _refuse(f"more than {MAX_ELEMENTS} elements")
        values: dict[str, list[str]] = {}
        pairs = 0
        while True:
            eq = header.find("=", i)
            if eq < 0 or not _KEY.fullmatch(header[i:eq]):
                raise _refuse(f"expected key=value at offset {i}")
            key = header[i:eq].lower()
            if key not in MULTI_KEYS and key not in SINGLE_KEYS:
                raise _refuse(f"unknown key '{clip(header[i:eq], 16)}'")
            value, i = _value(header, eq + 1)
            if key in SINGLE_KEYS and key in values:
                raise _refuse(f"key '{key}' repeated in one element")
            pairs += 1
            if pairs > MAX_PAIRS:
                raise _refuse(f"more than {MAX_PAIRS} pairs in one element")
            values.setdefault(key, []).append(value)
            if i >= n or header[i] == ",":
                break
            if header[i] != ";":
                raise _refuse(f"expected ';' or ',' at offset {i}")
            i += 1
        elements.append(_element(values))
        if i >= n:
            return elements
        i += 1  # the ','


def _element(values: Mapping[str, list[str]]) -> Element:
    """An Element from its raw key values; checks the hash's form and URL-decodes the certificate."""
    digest = values.get("hash", [None])[0]
    if digest is not None and not _HASH.fullmatch(digest):
        raise _refuse("Hash must be 64 hexadecimal digits")
    cert_text = values.get("cert", [None])[0]
    cert = None
    if cert_text is not None:
        if not _PERCENT.fullmatch(cert_text):
            raise _refuse("Cert is not URL-encoded")
        cert = unquote_to_bytes(cert_text)
    return Element(
        by=tuple(values.get("by", ())),
        hash=digest.lower() if digest else None,
        cert=cert,
        chain=values.get("chain", [None])[0],
        subject=values.get("subject", [None])[0],
        uri=tuple(values.get("uri", ())),
        dns=tuple(values.get("dns", ())),
    )


@dataclass(frozen=True, slots=True)
class ForwardedPeer(PeerIdentity):
    """A client identity forwarded by the proxy `via` (the connection's own, verified peer)."""

    via: PeerIdentity | None = field(default=None, repr=False, compare=False)


def forwarded_peer(element: Element, via: PeerIdentity) -> ForwardedPeer:
    """The identity an element forwards: its one PEM certificate, whose SHA-256 must equal its Hash."""
    if element.hash is None or element.cert is None:
        raise _refuse("the element must carry Hash and Cert (set the proxy to forward the client certificate)")
    pem = element.cert.strip()
    if not pem.startswith(_PEM_BEGIN) or pem.count(_PEM_BEGIN) != 1:
        raise _refuse("Cert must be exactly one PEM certificate")
    try:
        der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    except (ValueError, x509.InvalidVersion):  # InvalidVersion is no ValueError (a v1/v2 or bogus version field)
        raise _refuse("Cert is not a readable certificate") from None
    if not hmac.compare_digest(hashlib.sha256(der).hexdigest(), element.hash):
        raise _refuse("Hash does not match Cert")
    base = peer_from_cert(der)
    return ForwardedPeer(
        spiffe_id=base.spiffe_id,
        subject=base.subject,
        thumbprint=base.thumbprint,
        serial=base.serial,
        issuer=base.issuer,
        certificate=base.certificate,
        via=via,
    )


def _identities(cert: x509.Certificate) -> set[str]:
    """Every name a certificate answers to, as `uri:`, `dns:` and `cn:` strings."""
    names = {f"cn:{a.value!s}" for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return names
    names.update(f"uri:{u}" for u in san.get_values_for_type(x509.UniformResourceIdentifier))
    names.update(f"dns:{d.lower()}" for d in san.get_values_for_type(x509.DNSName))
    return names


def normalize_identity(entry: str) -> str:
    """A `[tls] proxy_identities` entry as `uri:…`, `dns:…` or `cn:…` (a bare spiffe:// ID is a URI SAN);
    ValueError when it has none of these forms."""
    m = _IDENTITY.fullmatch(entry.strip())
    if m is None:
        raise ValueError(f"proxy identity {entry!r} must be uri:URI, dns:NAME, cn:COMMON-NAME or spiffe://ID")
    if m.group(3):
        return f"uri:{m.group(3)}"
    kind, value = m.group(1), m.group(2)
    return f"{kind}:{value.lower() if kind == 'dns' else value}"


def header_values(metadata: Metadata) -> list[str | bytes]:
    """The values of every XFCC entry of gRPC metadata, REST header pairs or a mapping (names lowercased)."""
    items = metadata if type(metadata) is tuple else metadata.items() if isinstance(metadata, Mapping) else metadata
    return [v for k, v in items if isinstance(k, str) and k.lower() == HEADER]


class ProxyTrust:
    """`[tls] mode` and `proxy_identities`: the peer a call acts for, given its connection peer and headers.

    `check_peer` verifies a connection's certificate (chain, revocation) before its header is believed.
    Decisions are cached: which certificate thumbprints are proxies, and each (proxy, header) parsed once.
    """

    def __init__(
        self,
        mode: str = "direct",
        identities: Sequence[str] = (),
        check_peer: Callable[[PeerIdentity], None] | None = None,
        cache_size: int = 256,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        self.identities = frozenset(normalize_identity(e) for e in identities)
        self._check_peer = check_peer
        self._size = max(1, cache_size)
        self._proxy: dict[str, bool] = {}
        self._forwarded: dict[tuple[str, str | bytes], ForwardedPeer] = {}

    def is_proxy(self, peer: PeerIdentity) -> bool:
        """Whether the connection's certificate names one of the proxy identities."""
        if peer.certificate is None or peer.thumbprint is None:
            return False
        hit = self._proxy.get(peer.thumbprint)
        if hit is None:
            hit = not self.identities.isdisjoint(_identities(peer.certificate))
            if len(self._proxy) >= self._size:
                self._proxy.clear()
            self._proxy[peer.thumbprint] = hit
        return hit

    def resolve(self, peer: PeerIdentity, metadata: Metadata) -> PeerIdentity:
        """The peer a call acts for: the connection's, or in proxy mode the one its proxy forwards.

        Raises Unauthenticated (reason "xfcc") for a header in direct mode or from a peer that is not a
        proxy, a proxy call without one, several headers, or a malformed or inconsistent one. Idempotent:
        a ForwardedPeer is resolved again from its connection peer.
        """
        if isinstance(peer, ForwardedPeer) and peer.via is not None:
            peer = peer.via
        values = header_values(metadata)
        if self.mode == "direct":
            if values:
                raise _refuse("[tls] mode is 'direct'; set mode = 'proxy' and proxy_identities to accept it")
            return peer
        proxy = self.is_proxy(peer)
        if not values:
            if proxy:
                raise _refuse("a call from the proxy must forward its client's certificate in the header")
            return peer  # a direct mTLS client beside the mesh (e.g. an exec probe)
        if not proxy:
            raise _refuse(f"sent by '{clip(peer.name or 'an anonymous peer')}', which is not a configured proxy")
        if len(values) > 1:
            raise _refuse("more than one header")
        if self._check_peer is not None:
            self._check_peer(peer)  # the proxy's own certificate verifies and is not revoked
        key = (peer.thumbprint or "", values[0])
        hit = self._forwarded.get(key)
        if hit is None:
            hit = forwarded_peer(parse(values[0])[-1], peer)
            if len(self._forwarded) >= self._size:
                self._forwarded.clear()
            self._forwarded[key] = hit
        return hit


def header_for(cert: bytes, by: str = "") -> str:
    """An XFCC element for a PEM or DER certificate as Envoy writes it (By, Hash, Cert, Subject, URI, DNS):
    what a test proxy sends, and a seed for the fuzz harness."""
    parsed = (
        x509.load_pem_x509_certificate(cert)
        if cert.lstrip().startswith(b"-----")
        else x509.load_der_x509_certificate(cert)
    )
    der = parsed.public_bytes(Encoding.DER)
    pem = parsed.public_bytes(Encoding.PEM).decode("ascii")
    pairs = [f"By={_quoted(by)}"] if by else []
    pairs += [f"Hash={hashlib.sha256(der).hexdigest()}", f'Cert="{quote(pem, safe="")}"']
    pairs.append(f"Subject={_quoted(parsed.subject.rfc4514_string())}")
    names = _identities(parsed)
    pairs += [f"URI={_quoted(n[4:])}" for n in sorted(names) if n.startswith("uri:")]
    pairs += [f"DNS={_quoted(n[4:])}" for n in sorted(names) if n.startswith("dns:")]
    return ";".join(pairs)


def _quoted(value: str) -> str:
    """A value, double-quoted with `"` and `\\` escaped (always quoting is valid XFCC and never ambiguous)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
