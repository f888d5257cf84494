"""Client-certificate chain verification, the same for gRPC and REST, done where calls are authorized.

gRPC's TLS stack (BoringSSL via grpcio) checks signatures up to the CA bundle but not the trust anchor's
path length, and gRPC Python hands the handler the leaf only, never the presented chain. So every client
certificate is verified again here with `cryptography`'s X.509 verifier: the configured CA bundle is the only
set of trust anchors and no intermediates are used, EKU clientAuth is required, the leaf must not be a CA,
basic constraints, key usage, validity and path length are enforced. Client certificates must therefore be
issued directly by a CA of the bundle. A result is cached per certificate (by its SHA-256 thumbprint), so a
repeat call costs one dict lookup; the bundle is re-read when its file changes, which clears the cache.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from gateway.auth.peer import PeerIdentity
from gateway.errors import ConfigError, Unauthenticated, clip
from gateway.fsutil import file_stamp

log = logging.getLogger(__name__)

REFUSED = "client certificate not accepted: it must be a clientAuth leaf issued directly by a trusted CA"
FAILURE_TTL_S = 10.0  # a refused certificate is verified again after this long (it may become valid)
MAX_CHAIN_DEPTH = 0  # intermediates between the leaf and its trust anchor: never any

ChainIds = tuple[tuple[str, int], ...]  # (issuer DN, serial) of each certificate of a verified chain


@dataclass(frozen=True, slots=True)
class _Outcome:
    """A cached verification result: the chain's ids, or the refusal; valid until `until` (epoch seconds)."""

    ids: ChainIds | None
    until: float


def _require_client_auth(policy: Policy, cert: x509.Certificate, eku: x509.ExtendedKeyUsage) -> None:
    """EE extension validator: the leaf must list clientAuth in its EKU (an absent EKU is refused too)."""
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise ValueError("extended key usage lacks clientAuth")


# WebPKI rules for CAs and leaves; a leaf must carry EKU clientAuth; a SAN is optional (the subject DN then
# names the peer, as on REST).
_EE_POLICY = (
    ExtensionPolicy.webpki_defaults_ee()
    .require_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _require_client_auth)
    .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
)
_CA_POLICY = ExtensionPolicy.webpki_defaults_ca()


class ClientCertVerifier:
    """Verifies client certificates against the CA bundle file; `chain_ids(peer)` is the per-call entry."""

    def __init__(self, ca: Path, reload_interval: float = 1.0, cache_size: int = 4096) -> None:
        """Load the CA bundle now (ConfigError if unreadable or empty)."""
        self.ca_path = Path(ca)
        self._interval = reload_interval
        self._cache_size = max(1, cache_size)
        self._lock = threading.Lock()
        self._stamp = file_stamp(self.ca_path, "CA bundle")
        self._store = self._load()
        self._cache: dict[str, _Outcome] = {}
        self._last_check = time.monotonic()

    def chain_ids(self, peer: PeerIdentity) -> ChainIds:
        """The (issuer, serial) of every certificate of the peer's verified chain, leaf first.

        Raises Unauthenticated (reason "certificate") when the certificate does not verify. A peer without
        a certificate (client authentication not required) has an empty chain.
        """
        if peer.thumbprint is None:
            return ()
        if time.monotonic() - self._last_check >= self._interval:
            self.reload()
        hit = self._cache.get(peer.thumbprint)
        if hit is None or hit.until <= time.time():
            hit = self._verify(peer)
        if hit.ids is None:
            raise Unauthenticated(REFUSED, reason="certificate")
        return hit.ids

    def reload(self) -> bool:
        """Re-read the CA bundle if the file changed (clearing the cache); False if unchanged or unusable."""
        with self._lock:
            self._last_check = time.monotonic()
            try:
                stamp = file_stamp(self.ca_path, "CA bundle")
                if stamp == self._stamp:
                    return False
                self._stamp = stamp
                store = self._load()
            except ConfigError as exc:
                log.warning("CA bundle %s not reloaded, keeping the last good one: %s", self.ca_path, exc)
                return False
            self._store = store
            self._cache = {}
            log.info("client CA bundle %s reloaded", self.ca_path)
            return True

    def _verify(self, peer: PeerIdentity) -> _Outcome:
        """Verify the peer's certificate now and cache the outcome (bounded cache, cleared when full)."""
        cert = peer.certificate
        now = dt.datetime.now(dt.UTC)
        outcome = _Outcome(None, time.time() + FAILURE_TTL_S)
        if cert is not None and peer.thumbprint is not None:
            verifier = (
                PolicyBuilder()
                .store(self._store)
                .time(now)
                .max_chain_depth(MAX_CHAIN_DEPTH)
                .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
                .build_client_verifier()
            )
            try:
                chain = verifier.verify(cert, []).chain
            except VerificationError as exc:
                log.info("client certificate %s refused: %s", clip(peer.name), clip(str(exc), 512))
            else:
                until = min(c.not_valid_after_utc for c in chain).timestamp()
                outcome = _Outcome(tuple((c.issuer.rfc4514_string(), c.serial_number) for c in chain), until)
        if peer.thumbprint is not None:
            if len(self._cache) >= self._cache_size:
                self._cache = {}
            self._cache[peer.thumbprint] = outcome
        return outcome

    def _load(self) -> Store:
        """The bundle's certificates as the only trust anchors."""
        try:
            cas = x509.load_pem_x509_certificates(self.ca_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the client CA bundle {self.ca_path}: {exc}") from None
        for ca in cas:
            try:
                is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            except x509.ExtensionNotFound:
                is_ca = False
            if not is_ca:
                log.warning("%s holds %s, which is not a CA: no client certificate can chain to it", self.ca_path, ca)
        return Store(cas)
