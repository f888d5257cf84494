"""What wraps every call, gRPC or REST: authorization, then one audit line and one metrics sample.

Knows nothing of models beyond their names. The status recorded is the one the client receives; an
unexpected exception is logged here (server side, with its traceback) and reaches the client only as
"internal error".
"""

from __future__ import annotations

import logging
import time
from types import TracebackType

import grpc

from gateway.auth.authorizer import Authorizer, Metadata, Principal
from gateway.auth.peer import PeerIdentity
from gateway.errors import PermissionDenied, SealgateError, Unauthenticated, grpc_status
from gateway.server.recorder import CallRecord, CallRecorder

log = logging.getLogger("sealgate.server")


class Call:
    """One call in progress: who, on what, and how it ended; a context manager that records it on exit.

    A plain class with __slots__ rather than a dataclass and @contextmanager: it is made on every call,
    and the generator machinery alone cost a few microseconds.
    """

    __slots__ = ("_rec", "method", "model", "peer", "principal", "protocol", "reason", "started", "status", "version")

    def __init__(self, recorder: CallRecorder, protocol: str, method: str, peer: PeerIdentity, model: str = "") -> None:
        self._rec = recorder
        self.protocol = protocol
        self.method = method
        self.peer = peer
        self.model = model
        self.version = ""
        self.principal: Principal | None = None
        self.status = grpc.StatusCode.OK
        self.reason: str | None = None
        self.started = time.perf_counter()

    def __enter__(self) -> Call:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Note how the call ended (the status the client will get) and queue its record; never swallows."""
        elapsed = time.perf_counter() - self.started
        if exc is not None:
            if isinstance(exc, SealgateError):
                self.status, self.reason = exc.grpc_code, str(exc)
            elif not isinstance(exc, Exception):  # CancelledError, GeneratorExit: the client went away
                self.status, self.reason = grpc.StatusCode.CANCELLED, "cancelled"
            else:
                self.status, self.reason = grpc_status(exc)
                log.error("unexpected error in %s %s", self.protocol, self.method, exc_info=exc)
        p = self.principal
        self._rec.record(
            CallRecord(
                time.time(),
                self.protocol,
                self.method,
                p.subject if p else None,
                p.identity if p else self.peer.name,
                self.model,
                self.version,
                self.status,
                elapsed,
                self.reason,
            )
        )


class Guard:
    """Authorizes calls and records them (audit log + metrics, through the CallRecorder) exactly once each."""

    def __init__(self, authorizer: Authorizer, recorder: CallRecorder) -> None:
        self.authorizer = authorizer
        self.recorder = recorder
        self.metrics = recorder.metrics

    def authorize(self, call: Call, metadata: Metadata, action: str | None, model: str = "") -> Principal:
        """Authenticate the call's token and, with an action, require its scope on `model`."""
        call.model = model or call.model
        try:
            if action is None:
                call.principal = self.authorizer.authenticate(metadata, call.peer)
            else:
                call.principal = self.authorizer.authorize(metadata, call.peer, action, model)
        except (Unauthenticated, PermissionDenied) as exc:
            self.metrics.auth_failures.labels(exc.reason).inc()
            raise
        return call.principal

    def call(self, protocol: str, method: str, peer: PeerIdentity, model: str = "") -> Call:
        """A Call to run a body in (`with guard.call(...) as call:`); records it however it ends."""
        return Call(self.recorder, protocol, method, peer, model)
