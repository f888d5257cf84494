"""How much explaining a caller may ask for: a per-subject rate and a cap on explanations computed at once.

Explanations leak more about a model than its answers (each one is hundreds of model runs around a point
of the caller's choosing), so they are rationed per token subject: a token bucket of `per_minute`
instances, refilled continuously. Only authenticated subjects reach it, and its table is bounded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from gateway.errors import Overloaded, RateLimited, clip

MAX_SUBJECTS = 10_000  # buckets kept; beyond, full ones are dropped first (a full bucket is a fresh one)


class RateLimiter:
    """A token bucket per subject: at most `per_minute` instances in any minute, refilled continuously."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        """Allow `per_minute` instances a minute to each subject, measured by `clock` (seconds)."""
        self.per_minute = per_minute
        self._clock = clock
        self._rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}  # subject -> (tokens, when last refilled)
        self._lock = threading.Lock()

    def take(self, subject: str, count: int = 1) -> None:
        """Spend `count` of `subject`'s allowance, or raise RateLimited (RESOURCE_EXHAUSTED) spending nothing."""
        with self._lock:
            now = self._clock()
            tokens, then = self._buckets.get(subject, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - then) * self._rate)
            if tokens < count:
                self._buckets[subject] = (tokens, now)
                wait = (count - tokens) / self._rate
                raise RateLimited(
                    f"explanation rate limit: {self.per_minute} a minute for subject {clip(subject, 64)!r}; "
                    + (f"retry in {wait:.0f} s" if count <= self.per_minute else f"{count} instances is over it")
                )
            if len(self._buckets) >= MAX_SUBJECTS and subject not in self._buckets:
                self._prune(now)
            self._buckets[subject] = (tokens - count, now)

    def _prune(self, now: float) -> None:
        """Drop buckets that have refilled (they equal a new one); if none has, start the table over."""
        full = [s for s, (t, then) in self._buckets.items() if t + (now - then) * self._rate >= self.per_minute]
        for subject in full:
            del self._buckets[subject]
        if len(self._buckets) >= MAX_SUBJECTS:
            self._buckets.clear()


class Running:
    """At most `limit` explanations computed at once; one more is refused (RESOURCE_EXHAUSTED), never queued.

    A place is released by the computation itself when it ends, not by the call that asked for it: a client
    that cancels its call cannot free a place while its explanation is still being computed.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.now = 0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Take a place, or raise Overloaded when all are taken."""
        with self._lock:
            if self.now >= self.limit:
                raise Overloaded(f"{self.limit} explanations are being computed; retry shortly")
            self.now += 1

    def release(self) -> None:
        """Give a place back."""
        with self._lock:
            self.now -= 1
