"""Client-certificate revocation: the CA's CRL, checked on every authorized call for each certificate of
the client's verified chain (the leaf, and its issuer when that is an intermediate of the bundle).

gRPC Python has no CRL hook in its TLS credentials, so revocation is enforced where the call is
authorized, which also gives a refusal its status code (UNAUTHENTICATED), audit line and metric. The CRL
must be signed by a certificate in the client CA bundle; it is re-read when the file changes (checked at
most once per `reload_interval`), and a bad or unsigned replacement keeps the last good list.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509

from gateway.auth.peer import PeerIdentity
from gateway.errors import ConfigError, Unauthenticated
from gateway.fsutil import file_stamp

log = logging.getLogger(__name__)


class RevocationList:
    """(issuer, serial) pairs revoked by a CRL file; `check(peer)` refuses a revoked client certificate."""

    def __init__(self, crl: Path, ca: Path, reload_interval: float = 1.0) -> None:
        """Load the CRL now (ConfigError if unreadable or not signed by the CA bundle)."""
        self.crl_path, self.ca_path = Path(crl), Path(ca)
        self._interval = reload_interval
        self._lock = threading.Lock()
        self._stamp = file_stamp(self.crl_path, "CRL")
        self._revoked = self._load()
        self._last_check = time.monotonic()

    @property
    def revoked_count(self) -> int:
        """How many certificates the current list revokes."""
        return len(self._revoked)

    def check(self, peer: PeerIdentity) -> None:
        """Raise Unauthenticated (reason "revoked") if the peer's certificate is on the list."""
        if time.monotonic() - self._last_check >= self._interval:
            self.reload()
        if peer.serial is not None and (peer.issuer, peer.serial) in self._revoked:
            raise Unauthenticated("client certificate revoked", reason="revoked")

    def check_chain(self, ids: Iterable[tuple[str, int]]) -> None:
        """Raise Unauthenticated (reason "revoked") if any (issuer, serial) of a verified chain is on the list."""
        if time.monotonic() - self._last_check >= self._interval:
            self.reload()
        revoked = self._revoked
        for entry in ids:
            if entry in revoked:
                raise Unauthenticated("client certificate revoked", reason="revoked")

    def reload(self) -> bool:
        """Re-read the CRL if the file changed; returns whether the list was replaced."""
        with self._lock:
            self._last_check = time.monotonic()
            try:
                stamp = file_stamp(self.crl_path, "CRL")
                if stamp == self._stamp:
                    return False
                self._stamp = stamp
                revoked = self._load()
            except ConfigError as exc:
                log.warning("CRL %s not reloaded, keeping the last good one: %s", self.crl_path, exc)
                return False
            self._revoked = revoked
            log.info("CRL %s reloaded: %d revoked certificate(s)", self.crl_path, len(revoked))
            return True

    def _load(self) -> frozenset[tuple[str, int]]:
        try:
            data = self.crl_path.read_bytes()
            crl = (
                x509.load_pem_x509_crl(data)
                if data.lstrip().startswith(b"-----BEGIN")
                else x509.load_der_x509_crl(data)
            )
            cas = x509.load_pem_x509_certificates(self.ca_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read CRL {self.crl_path} or CA {self.ca_path}: {exc}") from None
        signer = next((ca for ca in cas if ca.subject == crl.issuer and _signed_by(crl, ca)), None)
        if signer is None:
            raise ConfigError(f"CRL {self.crl_path} is not signed by a CA in {self.ca_path}")
        next_update = crl.next_update_utc
        if next_update is not None and next_update < dt.datetime.now(dt.UTC):
            log.warning(
                "CRL %s is past its next update (%s): still enforced; publish a new one", self.crl_path, next_update
            )
        issuer = crl.issuer.rfc4514_string()
        return frozenset((issuer, entry.serial_number) for entry in crl)


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
