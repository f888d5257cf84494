"""What wraps every call, gRPC or REST: authorization, then one audit line and one metrics sample.

Knows nothing of models beyond their names. The status recorded is the one the client receives; an
unexpected exception is logged here (server side, with its traceback) and reaches the client only as
"internal error". Streams are admitted on their metadata (authenticated, then given a concurrency slot)
before any message is read, so a caller without a valid token holds nothing.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType

import grpc

from gateway.auth.authorizer import Authorizer, Metadata, Principal
from gateway.auth.peer import PeerIdentity
from gateway.errors import (
    InvalidInput,
    NotFound,
    Overloaded,
    PermissionDenied,
    SealgateError,
    Unauthenticated,
    clip,
)
from gateway.server.limits import Slots, slot_key
from gateway.server.recorder import CallRecord, CallRecorder
from gateway.server.status_map import grpc_code, grpc_status
from gateway.serving.repository import NAME_PATTERN

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
                self.status, self.reason = grpc_code(exc), str(exc)
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
        """Authenticate the call's token and, with an action, require its scope on `model`.

        A name no model can have (see repository.NAME_PATTERN) is authenticated only, then NotFound
        (InvalidInput for a release): it never reaches the scope check or its cache, whatever its size.
        """
        call.model = model or call.model
        try:
            if action is None:
                call.principal = self.authorizer.authenticate(metadata, call.peer)
            elif not NAME_PATTERN.fullmatch(model):
                call.principal = self.authorizer.authenticate(metadata, call.peer)
                if action == "release":  # a new name is being chosen: say what a valid one is
                    raise InvalidInput(
                        f"invalid model name '{clip(model)}': use 1-64 characters of A-Z a-z 0-9 . _ - "
                        "starting with a letter or digit"
                    )
                raise NotFound(f"model '{clip(model)}' not found")
            else:
                call.principal = self.authorizer.authorize(metadata, call.peer, action, model)
        except (Unauthenticated, PermissionDenied) as exc:
            self.metrics.auth_failures.labels(exc.reason).inc()
            raise
        return call.principal

    def check_peer(self, call: Call) -> None:
        """The only check of a public call (health, reflection, OIP live/ready): the client certificate
        verifies and is not revoked; a refusal is counted by reason and recorded with the call."""
        try:
            self.authorizer.check_peer(call.peer)
        except Unauthenticated as exc:
            self.metrics.auth_failures.labels(exc.reason).inc()
            raise

    def admit(self, call: Call, metadata: Metadata, slots: Slots, action: str | None = None, model: str = "") -> str:
        """Authorize `call` (as `authorize`), then take one of `slots` for its caller; returns the slot key.

        The caller releases the slot (`slots.release(key)`) when the call or stream ends. Overloaded when the
        total or the caller's own share is used up; nothing is held when authorization fails.
        """
        principal = self.authorize(call, metadata, action, model)
        key = slot_key(call.peer, principal)
        if not slots.acquire(key):
            raise Overloaded(slots.refusal(key))
        return key

    def open_stream(self, protocol: str, method: str, peer: PeerIdentity, metadata: Metadata, slots: Slots) -> str:
        """Admit a stream on its metadata, before its first message: authenticate, take a slot; the slot key.

        Only a refusal is recorded here (audited, counted); each request of an admitted stream is recorded
        on its own. The caller releases the slot when the stream ends.
        """
        call = Call(self.recorder, protocol, method, peer)
        try:
            return self.admit(call, metadata, slots)
        except BaseException as exc:
            call.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def call(self, protocol: str, method: str, peer: PeerIdentity, model: str = "") -> Call:
        """A Call to run a body in (`with guard.call(...) as call:`); records it however it ends."""
        return Call(self.recorder, protocol, method, peer, model)
