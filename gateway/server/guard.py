"""What wraps every call, gRPC or REST: authorization, then one audit line and one metrics sample.

Each gRPC method declares here, in one line, what it needs: `@guarded(action, model=FIELD)` (a token with
the scope `action` on the model named by the request's FIELD, then a slot of the caller), `@guarded_stream`
(a stream admitted on its metadata, each message authorized), or `@public(NAME)` (no token: the client
certificate check only). Every call is admitted on its metadata before its request message is read (the
server registers unary-request methods as request streams, gateway/server/registration.py): a token and a
slot (a public call: the certificate check, and one of `waiting` while its message comes), then the message
within `message_timeout_s`, then the scope on the model it names. So a caller without a valid token holds
nothing: gRPC itself would otherwise count a call from its headers and run the handler only once the
message arrived. The decorators authorize, take the slot, audit, measure and map errors, so a
handler only translates its request; `declaration(method)` reads a declaration back (the guard-walk test
proves every registered method carries one and is refused without a token unless it is public).

Knows nothing of models beyond their names. The status recorded is the one the client receives; an
unexpected exception is logged here (server side, with its traceback) and reaches the client only as
"internal error". Streams are admitted the same way, before their first message.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import operator
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from gateway.auth.authorizer import Authorizer, Metadata, Principal
from gateway.auth.peer import PeerIdentity, peer_from_auth_context
from gateway.auth.policy import authorize as check_scope
from gateway.auth.xfcc import ProxyTrust
from gateway.errors import (
    InvalidInput,
    NotFound,
    Overloaded,
    PermissionDenied,
    SealgateError,
    StreamTimeout,
    Unauthenticated,
    clip,
)
from gateway.server.limits import Slots, slot_key
from gateway.server.recorder import CallRecord, CallRecorder
from gateway.server.status_map import grpc_code, grpc_status
from gateway.serving.canary import SUBJECT
from gateway.serving.repository import NAME_PATTERN

if TYPE_CHECKING:
    from gateway.server.tracing import CallTrace, Tracing

log = logging.getLogger("sealgate.server")


class Call:
    """One call in progress: who, on what, and how it ended; a context manager that records it on exit.

    A plain class with __slots__ rather than a dataclass and @contextmanager: it is made on every call,
    and the generator machinery alone cost a few microseconds.
    """

    __slots__ = (
        "_rec",
        "metadata",
        "method",
        "model",
        "peer",
        "principal",
        "protocol",
        "reason",
        "started",
        "status",
        "trace",
        "version",
    )

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
        self.metadata: Metadata = ()
        self.started = time.perf_counter()
        self.trace: CallTrace | None = None  # the call's span, only while tracing (gateway/server/tracing.py)

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
        if self.trace is not None:
            self.trace.end(self)
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

    def __init__(
        self,
        authorizer: Authorizer,
        recorder: CallRecorder,
        proxy: ProxyTrust | None = None,
        tracing: Tracing | None = None,
        message_timeout_s: float = 10.0,
        waiting: Slots | None = None,
    ) -> None:
        """`message_timeout_s`: how long a unary call's request message may take to arrive after its headers;
        `waiting`: the limit on public calls awaiting theirs (per client certificate and in total)."""
        self.authorizer = authorizer
        self.recorder = recorder
        self.proxy = proxy or ProxyTrust()  # [tls] mode: the peer a call acts for (x-forwarded-client-cert)
        self.metrics = recorder.metrics
        self.message_timeout_s = message_timeout_s
        self.waiting = waiting or Slots(1024, 64)
        self._reading: dict[asyncio.Task[Any], float] = {}  # calls awaiting their message -> deadline (monotonic)
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        if tracing is not None:  # [tracing]: authorize also starts the call's span; off, nothing is wrapped
            self.authorize = tracing.wrap_authorize(self.authorize)  # type: ignore[method-assign]

    def authorize(self, call: Call, metadata: Metadata, action: str | None, model: str = "") -> Principal:
        """Authenticate the call's token and, with an action, require its scope on `model`.

        A name no model can have (see repository.NAME_PATTERN) is authenticated only, then NotFound
        (InvalidInput for a release): it never reaches the scope check or its cache, whatever its size.
        """
        call.model = model or call.model
        try:
            call.peer = self.proxy.resolve(call.peer, metadata)  # behind a mesh: the client the proxy forwards
            if action is None:
                call.principal = self.authorizer.authenticate(metadata, call.peer)
            elif not NAME_PATTERN.fullmatch(model):
                call.principal = self.authorizer.authenticate(metadata, call.peer)
                raise _bad_name(action, model)
            else:
                call.principal = self.authorizer.authorize(metadata, call.peer, action, model)
        except (Unauthenticated, PermissionDenied) as exc:
            self.metrics.auth_failures.labels(exc.reason).inc()
            call.principal = None  # a refused call is recorded with its certificate only, also when admitted first
            raise
        SUBJECT.set(call.principal.subject)  # what a sticky canary rollout hashes
        return call.principal

    def permit(self, call: Call, action: str, model: str) -> None:
        """The second half of `authorize` for a call already authenticated on its metadata: the scope for
        `action` on the `model` its message names (no second token check). Refusals as `authorize`'s."""
        call.model = model
        principal = call.principal
        if principal is None:
            raise Unauthenticated("the call was not authenticated", "token")
        if not NAME_PATTERN.fullmatch(model):
            raise _bad_name(action, model)
        try:
            check_scope(principal, action, model)
        except PermissionDenied as exc:
            self.metrics.auth_failures.labels(exc.reason).inc()
            call.principal = None  # recorded with its certificate only, as `authorize` does
            raise

    async def read_request(self, context: Any) -> Any:
        """The request message of a unary-request call admitted on its metadata, within `message_timeout_s`
        (StreamTimeout: DEADLINE_EXCEEDED); InvalidInput if the client ended the call without one.

        The deadline is kept by one sweep for all reads (`_sweep`, every SWEEP_S while any is pending), not a
        timer per call: asyncio.timeout cost ~7 µs a call on uvloop, and the message nearly always came
        with the headers."""
        task = asyncio.current_task()
        assert task is not None
        self._reading[task] = time.monotonic() + self.message_timeout_s
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)
        try:
            request = await context.read()
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            self._expired.discard(task)
            task.uncancel()
            raise StreamTimeout(f"no request message within {self.message_timeout_s:g} s of the call") from None
        finally:
            self._reading.pop(task, None)
        if request is grpc.aio.EOF:
            raise InvalidInput("the call ended before its request message")
        return request

    def _sweep(self) -> None:
        """Cancel the reads past their deadline (`read_request` turns that into StreamTimeout); re-arm while any
        read is pending."""
        now = time.monotonic()
        for task, deadline in list(self._reading.items()):
            if deadline <= now and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep) if self._reading else None

    async def read_public_request(self, call: Call, context: Any) -> Any:
        """`read_request` for a public call (no token to admit it): while it waits, it holds one of `waiting`,
        counted per client certificate, so certificates without tokens cannot stall calls without bound."""
        key = call.peer.thumbprint or ""
        if not self.waiting.acquire(key):
            raise Overloaded("too many calls from this client are waiting to send their request")
        try:
            return await self.read_request(context)
        finally:
            self.waiting.release(key)

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
            key = self.admit(call, metadata, slots)
        except BaseException as exc:
            call.__exit__(type(exc), exc, exc.__traceback__)
            raise
        if call.trace is not None:  # the admission's span ends here; each message has its own
            call.trace.end(call)
        return key

    def call(self, protocol: str, method: str, peer: PeerIdentity, model: str = "") -> Call:
        """A Call to run a body in (`with guard.call(...) as call:`); records it however it ends."""
        return Call(self.recorder, protocol, method, peer, model)


def _bad_name(action: str, model: str) -> SealgateError:
    """The refusal of a name no model can have: NotFound, or for a release (a name being chosen) what a valid
    one is."""
    if action == "release":
        return InvalidInput(
            f"invalid model name '{clip(model)}': use 1-64 characters of A-Z a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return NotFound(f"model '{clip(model)}' not found")


class PeerCache:
    """Parse each distinct client certificate once (connections reuse the same PEM bytes)."""

    def __init__(self, size: int = 1024) -> None:
        self._cache: dict[bytes, PeerIdentity] = {}
        self._size = size

    def get(self, context: grpc.aio.ServicerContext) -> PeerIdentity:
        """The identity of the call's client certificate (ANONYMOUS-like when there is none)."""
        auth = context.auth_context()
        pem = (auth.get("x509_pem_cert") or [b""])[0]
        peer = self._cache.get(pem)
        if peer is None:
            peer = peer_from_auth_context(auth)
            if len(self._cache) >= self._size:
                self._cache.clear()
            self._cache[pem] = peer
        return peer


# --- declarations -------------------------------------------------------------------------------
IN_STREAM = "<stream>"  # the model is named inside the request stream: the handler authorizes it there
SWEEP_S = 0.25  # how often reads awaiting their message are checked against their deadline
UNREAD: Any = object()  # a unary-request call whose message is not read yet (gateway/server/registration.py)
DECLARATION = "__sealgate_guard__"


@dataclass(frozen=True)
class Declaration:
    """What one RPC needs: the scope `action` (None: any valid token) on the model in request field `model`.

    `public` methods need no token, only a client certificate that verifies and is not revoked.
    """

    name: str
    action: str | None
    model: str = ""
    public: bool = False


class GuardedServicer(Protocol):
    """What a servicer whose methods are declared here holds: the guard, a peer cache and its slots."""

    guard: Guard
    peers: PeerCache
    slots: Slots


def declaration(method: object) -> Declaration | None:
    """The declaration of a servicer method (bound or not), None if it has none."""
    return getattr(method, DECLARATION, None)


def _mark(wrapper: Any, decl: Declaration) -> Any:
    setattr(wrapper, DECLARATION, decl)
    return wrapper


async def _abort(context: Any, exc: BaseException) -> None:
    """End the RPC with the status and clipped message `exc` maps to (never a traceback)."""
    code, message = grpc_status(exc)
    await context.abort(code, message)


def guarded(action: str | None, model: str = "", *, name: str = "", version: str = "") -> Callable[[Any], Any]:
    """Declare a unary-request RPC: authorize `action` on the model in request field `model`, take a slot.

    The handler is `async def M(self, request, call)` returning the answer (or an async generator of
    answers for a server stream); `version` names a request field copied, clipped, into the audit record
    before authorization. With `model=IN_STREAM` (a request stream naming its model inside) the wrapper
    only authenticates: the handler reads the name and authorizes it with `self.guard.authorize`.
    """

    def decorate(fn: Any) -> Any:
        method = name or fn.__name__
        decl = Declaration(method, action, model)
        field = model if model != IN_STREAM else ""
        model_of = operator.attrgetter(field) if field else None  # a dotted path reaches a nested field

        if model == IN_STREAM:

            @functools.wraps(fn)
            async def authenticated(self: GuardedServicer, request: Any, context: Any) -> Any:
                try:
                    with self.guard.call("grpc", method, self.peers.get(context)) as call:
                        call.metadata = context.invocation_metadata()
                        self.guard.authorize(call, call.metadata, None)  # the token first: nothing read or held
                        return await fn(self, request, call)
                except Exception as exc:
                    error = exc
                await _abort(context, error)
                raise AssertionError("unreachable")  # context.abort always raises

            return _mark(authenticated, decl)

        async def admitted(self: GuardedServicer, request: Any, context: Any, call: Call) -> tuple[Any, str]:
            """The token and a slot on the call's metadata, then (if unread) its request, then the scope on the
            model it names; returns the request and the slot key (held: the caller releases it)."""
            metadata = context.invocation_metadata()
            key = self.guard.admit(call, metadata, self.slots)  # before the message: nothing read for a stranger
            try:
                if request is UNREAD:
                    request = await self.guard.read_request(context)
                target = model_of(request) if model_of else ""
                if version:
                    call.version = clip(getattr(request, version))
                if action is not None:
                    self.guard.permit(call, action, target)
                else:
                    call.model = target
            except BaseException:
                self.slots.release(key)
                raise
            return request, key

        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def streamed(self: GuardedServicer, request: Any, context: Any) -> AsyncIterator[Any]:
                try:
                    with self.guard.call("grpc", method, self.peers.get(context)) as call:
                        request, key = await admitted(self, request, context, call)
                        try:
                            async for answer in fn(self, request, call):
                                yield answer
                        finally:
                            self.slots.release(key)
                        return
                except Exception as exc:
                    error = exc
                await _abort(context, error)

            return _mark(streamed, decl)

        @functools.wraps(fn)
        async def unary(self: GuardedServicer, request: Any, context: Any) -> Any:
            try:
                with self.guard.call("grpc", method, self.peers.get(context)) as call:
                    request, key = await admitted(self, request, context, call)
                    try:
                        return await fn(self, request, call)
                    finally:
                        self.slots.release(key)
            except Exception as exc:
                error = exc
            await _abort(context, error)
            raise AssertionError("unreachable")  # context.abort always raises

        return _mark(unary, decl)

    return decorate


def guarded_stream(action: str, model: str, error: Callable[[str], Any], *, name: str = "") -> Callable[[Any], Any]:
    """Declare a bidirectional stream: admitted on its metadata (token, then one slot held until it ends)
    before its first message is read; each message is then authorized for `action` on its own `model`
    field, recorded on its own, and a refused or failed message is answered in-stream with `error(message)`.

    The handler is `async def M(self, request, call)` returning the answer to one message.
    """

    def decorate(fn: Any) -> Any:
        method = name or fn.__name__

        @functools.wraps(fn)
        async def stream(self: GuardedServicer, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            metadata = context.invocation_metadata()
            peer = self.peers.get(context)
            try:
                key = self.guard.open_stream("grpc", method, peer, metadata, self.slots)
            except Exception as exc:
                await _abort(context, exc)
                raise AssertionError("unreachable") from exc  # context.abort always raises
            try:
                async for request in requests:
                    target = getattr(request, model)
                    try:
                        with self.guard.call("grpc", method, peer, target) as call:
                            self.guard.authorize(call, metadata, action, target)
                            answer = await fn(self, request, call)
                        yield answer
                    except Exception as exc:
                        yield error(grpc_status(exc)[1])
            finally:
                self.slots.release(key)

        return _mark(stream, Declaration(method, action, model))

    return decorate


def public(name: str) -> Callable[[Any], Any]:
    """Declare a public RPC (health, reflection, OIP live/ready): no token, the certificate check only.

    The handler is `async def M(self, request, context)`: a coroutine (its answer, or None for a method
    that writes through the context) or an async generator of answers; it runs after the check.
    """

    def decorate(fn: Any) -> Any:
        decl = Declaration(name, None, public=True)

        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def streamed(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
                try:
                    with self.guard.call("grpc", name, self.peers.get(context)) as call:
                        self.guard.check_peer(call)
                        if request is UNREAD:
                            request = await self.guard.read_public_request(call, context)
                        async for answer in fn(self, request, context):
                            yield answer
                        return
                except Exception as exc:
                    error = exc
                await _abort(context, error)

            return _mark(streamed, decl)

        @functools.wraps(fn)
        async def unary(self: Any, request: Any, context: Any) -> Any:
            try:
                with self.guard.call("grpc", name, self.peers.get(context)) as call:
                    self.guard.check_peer(call)
                    if request is UNREAD:
                        request = await self.guard.read_public_request(call, context)
                    return await fn(self, request, context)
            except Exception as exc:
                error = exc
            await _abort(context, error)
            raise AssertionError("unreachable")  # context.abort always raises

        return _mark(unary, decl)

    return decorate
