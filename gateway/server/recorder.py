"""Records finished calls off the request path: audit lines and per-call metrics.

A handler appends one tuple to a deque (well under a microsecond); a writer thread wakes every `interval`
seconds, formats the batch into audit lines, appends them in one write and updates the metrics. Formatting,
the write syscall and the metric updates (~30 µs a call together) thus leave the request's critical path,
and a busy gateway pays one write per batch instead of one per call.

Guarantees: lines keep the order calls finished in; `flush()` (called before every /metrics scrape and at
shutdown) writes everything recorded so far; a crash (SIGKILL) can lose at most the last `interval`.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import NamedTuple

import grpc

from gateway.auth.audit import AuditLog, audit_line
from gateway.server.metrics import Metrics

log = logging.getLogger("sealgate.server")
DEFAULT_INTERVAL_S = 0.02


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

    def __init__(self, audit: AuditLog, metrics: Metrics, interval: float = DEFAULT_INTERVAL_S) -> None:
        """Start the writer thread; `interval` bounds how long a record waits before it is written."""
        self.audit = audit
        self.metrics = metrics
        self._interval = interval
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
            for r in batch:
                status = r.status.name
                observe(r.protocol, r.method, r.model, r.version, status, r.seconds)
                lines.append(
                    audit_line(
                        subject=r.subject,
                        identity=r.identity,
                        method=f"{r.protocol}:{r.method}",
                        model=r.model or None,
                        version=r.version or None,
                        status=status,
                        latency_ms=r.seconds * 1000.0,
                        reason=r.reason,
                        at=r.at,
                    )
                )
            try:
                self.audit.write("".join(lines))
            except OSError as exc:
                self.metrics.audit_lost.inc(len(batch))
                log.error("audit log write failed, %d record(s) lost: %s", len(batch), exc)
            return len(batch)

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
