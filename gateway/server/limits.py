"""Application-level concurrency slots: a total cap and a per-peer share, taken only after authentication.

gRPC's own `maximum_concurrent_rpcs` counts every call before any check, so idle unauthenticated streams
could take every slot; these slots are taken by authenticated callers only (keyed by certificate
thumbprint), so one peer cannot starve the others and a peer without a token holds nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from gateway.auth.authorizer import Principal
from gateway.auth.peer import PeerIdentity
from gateway.errors import ConfigError, Overloaded

BACKSTOP_FACTOR = 4  # gRPC's own maximum_concurrent_rpcs: this many times the application's total


def slot_key(peer: PeerIdentity, principal: Principal) -> str:
    """The key a caller's slots count under: its certificate's thumbprint, else (no certificate) its subject."""
    return peer.thumbprint or f"sub:{principal.subject}"


class Slots:
    """A non-blocking counting limit, `total` overall and `per_peer` for each peer key; 0 means unlimited."""

    def __init__(self, total: int, per_peer: int) -> None:
        if total < 0 or per_peer < 0:
            raise ConfigError("[server] max_concurrent_requests and max_concurrent_per_peer must be >= 0 (0: no limit)")
        self.total = total
        self.per_peer = per_peer
        self._lock = threading.Lock()
        self._used = 0
        self._by_peer: dict[str, int] = {}

    def acquire(self, peer_key: str) -> bool:
        """Take one slot for `peer_key` without waiting; False when the total or the peer's share is used up."""
        with self._lock:
            if self.total and self._used >= self.total:
                return False
            held = self._by_peer.get(peer_key, 0)
            if self.per_peer and held >= self.per_peer:
                return False
            self._used += 1
            self._by_peer[peer_key] = held + 1
            return True

    def release(self, peer_key: str) -> None:
        """Give back one slot of `peer_key` (a release without an acquire is ignored)."""
        with self._lock:
            held = self._by_peer.get(peer_key, 0)
            if held <= 0:
                return
            self._used -= 1
            if held == 1:
                del self._by_peer[peer_key]
            else:
                self._by_peer[peer_key] = held - 1

    @property
    def in_use(self) -> int:
        """How many slots are held now, all peers together."""
        with self._lock:
            return self._used

    def held_by(self, peer_key: str) -> int:
        """How many slots `peer_key` holds now."""
        with self._lock:
            return self._by_peer.get(peer_key, 0)

    @contextmanager
    def hold(self, peer_key: str) -> Iterator[None]:
        """Hold one slot for the block; Overloaded (RESOURCE_EXHAUSTED / 429) when none is free."""
        if not self.acquire(peer_key):
            raise Overloaded(self.refusal(peer_key))
        try:
            yield
        finally:
            self.release(peer_key)

    def refusal(self, peer_key: str) -> str:
        """The message of a refusal: which of the two limits was reached (no peer data echoed)."""
        with self._lock:
            if self.total and self._used >= self.total:
                return f"server busy: {self.total} requests in progress (max_concurrent_requests)"
        return f"too many requests in progress from this client: {self.per_peer} at most (max_concurrent_per_peer)"
