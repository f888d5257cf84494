"""What isolated workers report to the gateway: starts, crashes, deadlines, restarts, a model marked failed.

The backend layer knows no audit log or metrics registry; the gateway subscribes a listener (app.py) that
writes each event as an audit line and counts it. Listeners must be quick and must not raise.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("sealgate.worker")

STARTED = "started"
CRASHED = "crashed"  # the worker died (signal, OOM kill, exit)
DEADLINE = "deadline"  # a call ran past the deadline; the worker was killed
RESTARTED = "restarted"
FAILED = "failed"  # too many crashes in the window: the model serves no more
KINDS = (STARTED, CRASHED, DEADLINE, RESTARTED, FAILED)


@dataclass(frozen=True)
class WorkerEvent:
    """One event of one model's worker; `label` is "name:version" when the loader was told, else the file."""

    kind: str
    label: str
    pid: int
    detail: str
    failed_calls: int = 0


Listener = Callable[[WorkerEvent], None]
_listeners: list[Listener] = []
_lock = threading.Lock()


def subscribe(listener: Listener) -> Callable[[], None]:
    """Add a listener; returns the function that removes it again."""
    with _lock:
        _listeners.append(listener)

    def unsubscribe() -> None:
        with _lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return unsubscribe


def emit(event: WorkerEvent) -> None:
    """Log the event and hand it to every listener (a listener's exception is logged, never raised)."""
    level = logging.INFO if event.kind in (STARTED, RESTARTED) else logging.WARNING
    log.log(level, "model worker %s: %s (pid %d) %s", event.kind, event.label, event.pid, event.detail)
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(event)
        except Exception:
            log.exception("a worker event listener failed")
