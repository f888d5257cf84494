"""What wraps every call, gRPC or REST: authorization, then one audit line and one metrics sample.

Knows nothing of models beyond their names. The status recorded is the one the client receives; an
unexpected exception is logged here (server side, with its traceback) and reaches the client only as
"internal error".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc

from gateway.auth.audit import AuditLog
from gateway.auth.authorizer import Authorizer, Metadata, Principal
from gateway.auth.peer import PeerIdentity
from gateway.errors import PermissionDenied, SealgateError, Unauthenticated, grpc_status
from gateway.server.metrics import Metrics

log = logging.getLogger("sealgate.server")


@dataclass
class Call:
    """One call in progress: who, on what, and how it ended."""

    protocol: str
    method: str
    peer: PeerIdentity
    model: str = ""
    version: str = ""
    principal: Principal | None = None
    status: grpc.StatusCode = grpc.StatusCode.OK
    reason: str | None = None
    started: float = field(default_factory=time.perf_counter)


class Guard:
    """Authorizes calls and records them (audit log + metrics) exactly once each."""

    def __init__(self, authorizer: Authorizer, audit: AuditLog, metrics: Metrics) -> None:
        self.authorizer = authorizer
        self.audit = audit
        self.metrics = metrics

    def authorize(self, call: Call, metadata: Metadata, action: str | None, model: str = "") -> Principal:
        """Authenticate the call's token and, with an action, require its scope on `model`."""
        call.model = model or call.model
        try:
            if action is None:
                call.principal = self.authorizer.authenticate(metadata, call.peer)
            else:
                call.principal = self.authorizer.authorize(metadata, call.peer, action, model)
        except Unauthenticated as exc:
            self.metrics.auth_failures.labels(exc.reason).inc()
            raise
        except PermissionDenied as exc:
            self.metrics.auth_failures.labels(exc.reason).inc()
            raise
        return call.principal

    @contextmanager
    def call(self, protocol: str, method: str, peer: PeerIdentity, model: str = "") -> Iterator[Call]:
        """Run a call body; records status, audit line and metrics however it ends."""
        call = Call(protocol, method, peer, model)
        try:
            yield call
        except SealgateError as exc:
            call.status, call.reason = exc.grpc_code, str(exc)
            raise
        except Exception as exc:
            call.status, call.reason = grpc_status(exc)
            log.exception("unexpected error in %s %s", protocol, method)
            raise
        finally:
            elapsed = time.perf_counter() - call.started
            p = call.principal
            self.audit.record(
                subject=p.subject if p else None,
                identity=p.identity if p else call.peer.name,
                method=f"{protocol}:{method}",
                model=call.model or None,
                version=call.version or None,
                status=call.status,
                latency_ms=elapsed * 1000.0,
                reason=call.reason,
            )
            self.metrics.observe(protocol, method, call.model, call.version, call.status.name, elapsed)
