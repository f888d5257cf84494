"""Records finished calls off the request path: audit lines and per-call metrics.

A handler appends one tuple to a deque (well under a microsecond); a writer thread wakes every `interval`
seconds, formats the batch into audit lines, appends them in one write and updates the metrics. Formatting,
the write syscall and the metric updates (~30 µs a call together) thus leave the request's critical path,
and a busy gateway pays one write per batch instead of one per call.

Guarantees: lines keep the order calls finished in; `flush()` (called before every /metrics scrape and at
shutdown) writes everything recorded so far; a crash (SIGKILL) can lose at most the last `interval`.
Every call is counted in the metrics; successful calls are always audited, refusals (any other status) at
most `refusal_rate` a second per (status, peer) after a burst of `refusal_burst`, so a flood of refused
calls cannot fill the disk; the ones dropped are counted (sealgate_audit_records_suppressed_total).
Client strings (model, method, reason...) are clipped before they reach a line or a cache.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import NamedTuple

import grpc

from gateway.auth.audit import MAX_FIELD_CHARS, AuditLog, audit_line
from gateway.errors import clip
from gateway.server.metrics import Metrics

log = logging.getLogger("sealgate.server")
DEFAULT_INTERVAL_S = 0.02
REFUSAL_RATE = 20.0  # refusal audit lines a second per (status, peer), once the burst is spent
REFUSAL_BURST = 200
MAX_BUCKETS = 4096  # distinct (status, peer) pairs tracked; beyond, the table starts over
REASON_CHARS = MAX_FIELD_CHARS - 1  # a reason is a server message with (clipped) client strings; + "…" fits
SUPPRESSED_LOG_EVERY_S = 10.0


class CallRecord(NamedTuple):
    """What is known of a finished call (never a token or a tensor)."""

    at: float
    protocol: str
    method: str
    subject: str | None
    identity: str | None
    model: str
    version: str
    status: grpc.StatusCode
    seconds: float
    reason: str | None


class CallRecorder:
    """Batches CallRecords into the audit log and the metrics from a background thread."""

    def __init__(
        self,
        audit: AuditLog,
        metrics: Metrics,
        interval: float = DEFAULT_INTERVAL_S,
        refusal_rate: float = REFUSAL_RATE,
        refusal_burst: int = REFUSAL_BURST,
    ) -> None:
        """Start the writer thread; `interval` bounds how long a record waits before it is written."""
        self.audit = audit
        self.metrics = metrics
        self._interval = interval
        self._rate = refusal_rate
        self._burst = float(refusal_burst)
        self._buckets: dict[tuple[str, str | None], list[float]] = {}  # [tokens, last refill (monotonic)]
        self._suppressed_logged = float("-inf")
        self._pending: deque[CallRecord] = deque()
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sealgate-recorder", daemon=True)
        self._thread.start()

    def record(self, entry: CallRecord) -> None:
        """Queue one finished call (thread-safe; deque.append is atomic)."""
        self._pending.append(entry)

    def flush(self) -> int:
        """Write every queued record now, in order; returns how many were written."""
        with self._flush_lock:
            pending = self._pending
            batch: list[CallRecord] = []
            while pending:
                batch.append(pending.popleft())
            if not batch:
                return 0
            lines = []
            observe = self.metrics.observe
            now = time.monotonic()
            suppressed = 0
            for r in batch:
                status = r.status.name
                observe(r.protocol, r.method, r.model, r.version, status, r.seconds)
                if status != "OK" and not self._admit(status, r.identity, now):
                    suppressed += 1
                    continue
                lines.append(
                    audit_line(
                        subject=None if r.subject is None else clip(r.subject),
                        identity=None if r.identity is None else clip(r.identity),
                        method=clip(f"{r.protocol}:{r.method}"),
                        model=clip(r.model) if r.model else None,
                        version=clip(r.version, 20) if r.version else None,
                        status=status,
                        latency_ms=r.seconds * 1000.0,
                        reason=None if r.reason is None else clip(r.reason, REASON_CHARS),
                        at=r.at,
                    )
                )
            if suppressed:
                self._suppressed(suppressed, now)
            try:
                self.audit.write("".join(lines))
            except OSError as exc:
                self.metrics.audit_lost.inc(len(batch))
                log.error("audit log write failed, %d record(s) lost: %s", len(batch), exc)
            return len(batch)

    def _admit(self, status: str, identity: str | None, now: float) -> bool:
        """Take one token from the bucket of (status, peer); False when it is empty (the line is dropped)."""
        key = (status, identity)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._buckets.clear()
            bucket = self._buckets[key] = [self._burst, now]
        else:
            bucket[0] = min(self._burst, bucket[0] + (now - bucket[1]) * self._rate)
            bucket[1] = now
        if bucket[0] < 1.0:
            return False
        bucket[0] -= 1.0
        return True

    def _suppressed(self, count: int, now: float) -> None:
        """Count refusal lines the rate bound dropped; say so in the server log at most every few seconds."""
        self.metrics.audit_suppressed.inc(count)
        if now - self._suppressed_logged >= SUPPRESSED_LOG_EVERY_S:
            self._suppressed_logged = now
            log.warning("audit: refusals beyond %g/s per peer and status are counted, not written", self._rate)

    def close(self) -> None:
        """Stop the writer thread and write what is left."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(10)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
            except Exception:  # nothing may kill the writer thread
                log.exception("recording calls failed")
