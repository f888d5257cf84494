"""Isolated model workers in the gateway's audit log and metrics: every start, crash, overrun, restart and
failure of a worker (gateway/backends/isolated/events.py) becomes one audit line and one count.

`sealgate_model_worker_events_total{model, event}`: model names come from loaded versions only (never from a
client), so the label set stays bounded. The sandbox line is logged once at start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.auth.audit import AuditLog
from gateway.backends.isolated import events, landlock, sandbox_status

log = logging.getLogger("sealgate.server")
_BAD = (events.CRASHED, events.DEADLINE, events.FAILED)


def watch_workers(audit: AuditLog, registry: CollectorRegistry, isolation: str) -> Callable[[], None]:
    """Audit and count worker events; log and export the sandbox's state; returns the unsubscribe function."""
    counter = Counter(
        "sealgate_model_worker_events",
        "Isolated model worker events (started, crashed, deadline, restarted, failed)",
        ["model", "event"],
        registry=registry,
    )
    sandbox = Gauge(
        "sealgate_model_worker_landlock_abi",
        "The Landlock ABI isolated workers sandbox themselves with (0: none; -1: isolation off)",
        registry=registry,
    )
    if isolation == "process":
        abi = landlock.abi_version()
        sandbox.set(abi)
        (log.info if abi > 0 else log.warning)("model isolation: worker processes; %s", sandbox_status())
    else:
        sandbox.set(-1)

    def record(event: events.WorkerEvent) -> None:
        name, _, version = event.label.rpartition(":")
        counter.labels(name or event.label, event.kind).inc()
        audit.record(
            subject="sealgate",
            identity=None,
            method=f"worker:{event.kind}",
            model=name or event.label,
            version=version if name else None,
            status="UNAVAILABLE" if event.kind in _BAD else "OK",
            latency_ms=0.0,
            reason=f"pid {event.pid}: {event.detail}; failed calls: {event.failed_calls}",
        )

    return events.subscribe(record)
