"""TF Serving's REST API over mutual TLS, on h11 (a strict HTTP/1.1 state machine) and asyncio streams.

Predict (row "instances" and columnar "inputs") and model status, with the same Guard as gRPC: every
request, refused or served, is authorized, audited and counted (HTTP-level refusals under the method
"http-parse"; refused connections under "connection"). The order of work bounds what a client can take:

1. Connections: at most `max_connections` open (beyond: closed at once, before TLS), a bounded TLS
   handshake, at most `max_connections_per_peer` per client certificate (beyond: 429 and close).
2. The request head: at most `max_header_bytes` (431) and a target of `max_target_bytes` (414); RFC 9112
   framing only: h11 refuses a malformed or conflicting Content-Length; any Transfer-Encoding (chunked
   included, alone or beside Content-Length) is refused with 501, bare LF / CR and obs-fold with 400, an
   HTTP version other than 1.0/1.1 with 505. Every refusal answers `Connection: close` and closes.
3. Routing and the token, on the head alone; only then a slot (`Slots`: total and per peer), the declared
   Content-Length against the body limit (413), and the body, read to exactly that many bytes.
4. One deadline (`request_timeout_s`) covers head and body from the request's first byte: past it, 408,
   close, and the slot is free again. An idle keep-alive connection is closed after the same time.
5. Strict JSON (gateway.server.strict_json); a body above INLINE_BODY_BYTES, or a model whose backend is
   not `runs_inline`, is decoded and run in a worker thread (as gRPC does), so the event loop stays free.

Sans-IO entry, for fuzzing: `RestApp(manager, guard, limits).respond(data: bytes, peer: PeerIdentity =
ANONYMOUS) -> bytes` runs raw request bytes (one or several pipelined requests, then end of stream)
through the same per-connection code as a TLS connection and returns every byte the server wrote.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import h11
import numpy as np

from gateway.auth.peer import ANONYMOUS, PeerIdentity, peer_from_cert
from gateway.config import ServerConfig
from gateway.errors import (
    ConfigError,
    InvalidInput,
    NotFound,
    Overloaded,
    SealgateError,
    TooLarge,
    Unauthenticated,
    clip,
)
from gateway.server import strict_json
from gateway.server.dataplane import DataPlane
from gateway.server.guard import Call, Guard
from gateway.server.limits import Slots
from gateway.server.status_map import HttpRefusal, http_status
from gateway.serving.manager import ModelManager
from gateway.serving.status import ServedModel
from gateway.versions import parse_version

log = logging.getLogger("sealgate.rest")
Infer = Callable[[ServedModel, Mapping[str, np.ndarray]], dict[str, np.ndarray]]
_TFS_STATE = {"SERVING": "AVAILABLE", "LOADING": "LOADING", "AVAILABLE": "AVAILABLE", "RETIRED": "END"}
_BARE_LF = re.compile(rb"(?<!\r)\n")
_BARE_CR = re.compile(rb"\r(?!\n)")
_HEAD_END = re.compile(rb"\n\r?\n")  # the empty line; CRLF-only is checked once the head is whole
INLINE_BODY_BYTES = 64 << 10
READ_CHUNK = 64 << 10
LINGER_S = 1.0
LINGER_BYTES = 8 << 20
_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    412: b"Precondition Failed",
    413: b"Content Too Large",
    414: b"URI Too Long",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
}


class _Gone(BaseException):
    """The client closed the connection; nothing more can be said to it.

    A BaseException, like CancelledError, so the Guard records the call it ends as CANCELLED.
    """


@dataclass(frozen=True)
class RestLimits:
    """Every bound of the REST listener (from `[server]`, see gateway/config.py)."""

    max_body_bytes: int = 4 << 20
    max_concurrent: int = 1024
    max_concurrent_per_peer: int = 64
    max_connections: int = 512
    max_connections_per_peer: int = 64
    request_timeout_s: float = 30.0
    handshake_timeout_s: float = 10.0
    max_header_bytes: int = 16 << 10
    max_target_bytes: int = 2048
    max_json_depth: int = strict_json.MAX_DEPTH

    def __post_init__(self) -> None:
        """Refuse bounds that cannot work, naming the key."""
        positive = {
            "max_message_bytes": self.max_body_bytes,
            "rest_max_connections": self.max_connections,
            "rest_max_connections_per_peer": self.max_connections_per_peer,
            "rest_request_timeout_s": self.request_timeout_s,
            "rest_handshake_timeout_s": self.handshake_timeout_s,
            "rest_max_header_bytes": self.max_header_bytes,
            "rest_max_target_bytes": self.max_target_bytes,
            "max_json_depth": self.max_json_depth,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"[server] {key} must be > 0")
        if self.max_json_depth > 512:
            raise ConfigError("[server] max_json_depth must be <= 512 (Python's JSON parser recurses per level)")

    @classmethod
    def from_config(cls, server: ServerConfig) -> RestLimits:
        """The REST limits a `[server]` section sets."""
        return cls(
            max_body_bytes=server.max_message_bytes,
            max_concurrent=server.max_concurrent_requests,
            max_concurrent_per_peer=server.max_concurrent_per_peer,
            max_connections=server.rest_max_connections,
            max_connections_per_peer=server.rest_max_connections_per_peer,
            request_timeout_s=server.rest_request_timeout_s,
            handshake_timeout_s=server.rest_handshake_timeout_s,
            max_header_bytes=server.rest_max_header_bytes,
            max_target_bytes=server.rest_max_target_bytes,
            max_json_depth=server.max_json_depth,
        )


# --- TF Serving's predict on a request body -------------------------------------------------------
def _inputs_of(body: Any, specs: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """Numpy inputs of a parsed predict body, and the number of rows for the row ("instances") form."""
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    if ("instances" in body) == ("inputs" in body):
        raise InvalidInput('the request needs exactly one of "instances" or "inputs"')
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise InvalidInput('"instances" must be a non-empty list')
        if len(specs) == 1:
            (only,) = specs.values()
            return {only.name: strict_json.to_array(rows, only.datatype, only.name)}, len(rows)
        if not all(isinstance(r, dict) for r in rows):
            raise InvalidInput("a model with several inputs takes instances as objects keyed by input name")
        keys = set(rows[0])
        if any(set(r) != keys for r in rows):
            raise InvalidInput("every instance must name the same inputs")
        inputs = {}
        for k in keys:
            if k not in specs:
                raise InvalidInput(f"unknown input {clip(k)!r}; expected {', '.join(sorted(specs))}")
            inputs[k] = strict_json.to_array([r[k] for r in rows], specs[k].datatype, k)
        return inputs, len(rows)
    cols = body["inputs"]
    if isinstance(cols, dict):
        inputs = {}
        for k, v in cols.items():
            if k not in specs:
                raise InvalidInput(f"unknown input {clip(k)!r}; expected {', '.join(sorted(specs))}")
            inputs[k] = strict_json.to_array(v, specs[k].datatype, k)
        return inputs, None
    if len(specs) == 1:
        (only,) = specs.values()
        return {only.name: strict_json.to_array(cols, only.datatype, only.name)}, None
    raise InvalidInput('"inputs" must be an object keyed by input name for a model with several inputs')


def predict(
    served: ServedModel, raw: bytes, max_depth: int = strict_json.MAX_DEPTH, infer: Infer | None = None
) -> bytes:
    """TF Serving's predict on a served model and a raw request body: strict JSON in, strict JSON out.

    `infer` runs the decoded inputs (the data plane's `infer_now`); without one, the model itself does.
    """
    model = served.model
    inputs, rows = _inputs_of(strict_json.loads(raw, max_depth), {t.name: t for t in model.inputs})
    outputs = infer(served, inputs) if infer is not None else model.infer(inputs)
    out_names = [t.name for t in model.outputs]
    if rows is not None:
        if len(out_names) == 1:
            doc: dict[str, Any] = {"predictions": strict_json.jsonable(outputs[out_names[0]])}
        else:
            cols = {k: strict_json.jsonable(outputs[k]) for k in out_names}
            doc = {"predictions": [{k: cols[k][i] for k in out_names} for i in range(rows)]}
    elif len(out_names) == 1:
        doc = {"outputs": strict_json.jsonable(outputs[out_names[0]])}
    else:
        doc = {"outputs": {k: strict_json.jsonable(outputs[k]) for k in out_names}}
    return strict_json.dumps(doc)


def model_status(dataplane: DataPlane, name: str, version: int | None) -> bytes:
    """TF Serving's GetModelStatus document for a model (or one of its versions)."""
    entries = [s for s in dataplane.status() if s.name == name and (version is None or s.version == version)]
    if not entries:
        raise NotFound(f"model {clip(name)!r}" + (f" has no version {version}" if version else " not found"))
    return strict_json.dumps(
        {
            "model_version_status": [
                {
                    "version": str(s.version),
                    "state": _TFS_STATE.get(s.state.name, s.state.name),
                    "status": {
                        "error_code": "OK" if s.state.name != "REFUSED" else "FAILED_PRECONDITION",
                        "error_message": s.reason or "",
                    },
                }
                for s in entries
            ]
        }
    )


# --- the route table: every REST route, its audit name, its scope and its handler --------------------
@dataclass(frozen=True)
class Route:
    """One REST route: HTTP method, path pattern (named groups `name`, `version`), audit name, scope, handler.

    `example` is a path of this route, `{name}` standing for a model (the guard-walk test calls each through it).
    """

    method: bytes
    pattern: re.Pattern[str]
    name: str
    action: str
    handler: str
    example: str


_MODEL = r"/v1/models/(?P<name>[A-Za-z0-9._-]+)(?:/versions/(?P<version>[0-9]+))?"
ROUTES: tuple[Route, ...] = (
    Route(b"GET", re.compile(_MODEL), "GetModelStatus", "infer", "_status", "/v1/models/{name}"),
    Route(b"POST", re.compile(_MODEL + ":predict"), "Predict", "infer", "_predict", "/v1/models/{name}:predict"),
)
PUBLIC_ROUTES: tuple[Route, ...] = ()  # none: every REST route needs a token


def match(method: bytes, path: str) -> tuple[Route, re.Match[str]]:
    """The route of a request and its path's match; NotFound (404, path clipped) when there is none."""
    for route in ROUTES:
        m = route.pattern.fullmatch(path)
        if m is not None:
            if route.method == method:
                return route, m
            if m["version"]:
                parse_version(m["version"])  # a bad version is named before a wrong verb
            raise NotFound("POST needs the :predict verb" if method == b"POST" else "use POST for :predict")
    raise NotFound(f"no such endpoint: {clip(path)}")


# --- one connection ------------------------------------------------------------------------------
class _Writer:
    """What a connection writes to: a StreamWriter, or an in-memory buffer for the sans-IO entry."""

    def __init__(self, stream: asyncio.StreamWriter | None) -> None:
        self.stream = stream
        self.sent = bytearray()

    async def write(self, data: bytes, timeout: float) -> None:
        if self.stream is None:
            self.sent += data
            return
        self.stream.write(data)
        try:
            async with asyncio.timeout(timeout):
                await self.stream.drain()
        except (TimeoutError, ConnectionError, OSError):
            raise _Gone() from None


class _Connection:
    """One client connection: requests read and answered in turn until one of them must close it."""

    def __init__(self, app: RestApp, reader: asyncio.StreamReader, writer: _Writer, peer: PeerIdentity) -> None:
        self.app = app
        self.limits = app.limits
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.buf = bytearray()
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=app.limits.max_header_bytes + 4)
        self.deadline = 0.0
        self.body_left = 0
        self.keep = True

    async def run(self) -> None:
        """Serve requests until the client leaves, a request must close the connection, or it stays idle."""
        try:
            while self.keep and await self._wait_for_request():
                await self._one()
                if self.keep and self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                    self.h11.start_next_cycle()
                else:
                    self.keep = False
                    await self._linger()
        except _Gone:
            pass

    async def _linger(self) -> None:
        """Read and drop what the client still sends (bounded) before closing, so that the answer just sent
        is not destroyed by a TCP reset over unread input (what nginx calls a lingering close)."""
        taken = 0
        try:
            async with asyncio.timeout(LINGER_S):
                while taken < LINGER_BYTES:
                    data = await self.reader.read(READ_CHUNK)
                    if not data:
                        return
                    taken += len(data)
        except (TimeoutError, ConnectionError, OSError):
            pass

    async def _wait_for_request(self) -> bool:
        """Wait (idle timeout) for the first byte of the next request; False when the client left or idled."""
        loop = asyncio.get_running_loop()
        if not self.buf:
            try:
                async with asyncio.timeout(self.limits.request_timeout_s):
                    data = await self.reader.read(READ_CHUNK)
            except (TimeoutError, ConnectionError, OSError):
                return False
            if not data:
                return False
            self.buf += data
        self.deadline = loop.time() + self.limits.request_timeout_s
        return True

    async def _fill(self) -> None:
        """Read more bytes before the request's deadline: 408 past it, _Gone if the client closed."""
        try:
            async with asyncio.timeout_at(self.deadline):
                data = await self.reader.read(READ_CHUNK)
        except TimeoutError:
            raise HttpRefusal(408, f"request not received within {self.limits.request_timeout_s:g} s") from None
        except (ConnectionError, OSError):
            raise _Gone() from None
        if not data:
            raise HttpRefusal(400, "the connection ended before the request was complete")
        self.buf += data

    async def _one(self) -> None:
        """Read, check, run and answer one request, inside one guarded (audited, counted) call."""
        self.body_left = 0
        try:
            with self.app.guard.call("rest", "http-parse", self.peer) as call:
                status, payload = 200, await self._handle(call)
            if self.body_left:
                self.keep = False  # a body that was never read: no request may follow it
        except _Gone:
            self.keep = False
            raise
        except Exception as exc:
            status, message = http_status(exc)
            payload = strict_json.dumps({"error": message})
            if isinstance(exc, HttpRefusal | TooLarge) or self.body_left:
                self.keep = False  # the stream holds bytes that are not a request: no request may follow
        await self._send(status, payload)

    async def _head(self) -> h11.Request:
        """The request head, bounded, strictly framed, parsed by h11."""
        while self.buf[:2] == b"\r\n":  # RFC 9112 2.2: empty lines before a request line are ignored
            del self.buf[:2]
        start = 0
        while True:
            found = _HEAD_END.search(self.buf, max(0, start - 3))
            if found is not None:
                end = found.end()
                break
            line = self.buf.find(b"\n")
            if (line if line >= 0 else len(self.buf)) > self.limits.max_target_bytes + 32:
                raise HttpRefusal(414, f"request line longer than {self.limits.max_target_bytes} bytes")
            if len(self.buf) > self.limits.max_header_bytes:
                raise HttpRefusal(431, f"request head larger than {self.limits.max_header_bytes} bytes")
            start = len(self.buf)
            await self._fill()
        head = bytes(self.buf[:end])
        del self.buf[:end]
        line = head.find(b"\r\n")
        if line > self.limits.max_target_bytes + 32:
            raise HttpRefusal(414, f"request line longer than {self.limits.max_target_bytes} bytes")
        if len(head) > self.limits.max_header_bytes:
            raise HttpRefusal(431, f"request head larger than {self.limits.max_header_bytes} bytes")
        if _BARE_LF.search(head) or _BARE_CR.search(head):
            raise HttpRefusal(400, "lines of a request head must end with CRLF")
        if b"\r\n " in head or b"\r\n\t" in head:
            raise HttpRefusal(400, "folded header lines (obs-fold) are not accepted")
        try:
            self.h11.receive_data(head)
            event = self.h11.next_event()
        except h11.RemoteProtocolError as exc:
            raise HttpRefusal(exc.error_status_hint, f"malformed request: {clip(exc)}") from None
        if not isinstance(event, h11.Request):
            raise HttpRefusal(400, "malformed request head")
        if event.http_version not in (b"1.1", b"1.0"):
            raise HttpRefusal(505, "only HTTP/1.1 and HTTP/1.0 are served")
        if len(event.target) > self.limits.max_target_bytes:
            raise HttpRefusal(414, f"request target longer than {self.limits.max_target_bytes} bytes")
        return event

    async def _handle(self, call: Call) -> bytes:
        """Everything between the head and the answer; returns the response body of a 200."""
        request = await self._head()
        lengths = [int(v) for k, v in request.headers if k == b"content-length"]
        self.body_left = lengths[0] if lengths else 0
        if any(k == b"transfer-encoding" for k, _ in request.headers):
            self.body_left = 1  # framing unknown to this server: nothing after this head can be trusted
            raise HttpRefusal(501, "Transfer-Encoding is not supported: send the body with a Content-Length")
        method = request.method
        if method not in (b"GET", b"POST"):
            raise HttpRefusal(405, "only GET and POST are served")
        call.method = "Predict" if method == b"POST" else "GetModelStatus"
        target = request.target.decode("ascii", "replace")
        route, m = match(method, target.split("?", 1)[0])
        call.method = route.name
        name = m["name"]
        call.model = name
        version = parse_version(m["version"]) if m["version"] else None
        app = self.app
        app.guard.authorize(call, header_pairs(request.headers), route.action, name)
        return await getattr(self, route.handler)(call, name, version)

    async def _status(self, call: Call, name: str, version: int | None) -> bytes:
        """TF Serving's GetModelStatus of an authorized request."""
        if not self.body_left:  # h11 still expects the (empty) body's end before the next request
            await self._body()
        return model_status(self.app.dataplane, name, version)

    async def _predict(self, call: Call, name: str, version: int | None) -> bytes:
        """TF Serving's predict of an authorized request: a slot, the body, then the data plane."""
        app = self.app
        dataplane = app.dataplane
        served = dataplane.model(name, version)
        call.version = str(served.version)
        if self.body_left > self.limits.max_body_bytes:
            raise TooLarge(f"request body of {self.body_left} bytes exceeds the limit of {self.limits.max_body_bytes}")
        with app.slots.hold(self.peer.thumbprint or ""):
            raw = await self._body()
            off_loop = len(raw) > INLINE_BODY_BYTES or not dataplane.inline(served)
            return await dataplane.off_loop(app.predict, served, raw, when=off_loop)

    async def _body(self) -> bytes:
        """Exactly the declared Content-Length of body bytes, before the request's deadline."""
        if self.h11.they_are_waiting_for_100_continue:
            await self.writer.write(self.h11.send(h11.InformationalResponse(status_code=100)), self._left())
        while len(self.buf) < self.body_left:
            await self._fill()
        raw = bytes(self.buf[: self.body_left])
        del self.buf[: self.body_left]
        self.body_left = 0
        try:
            if raw:  # h11 reads b"" as the end of the stream
                self.h11.receive_data(raw)
            while not isinstance(self.h11.next_event(), h11.EndOfMessage):
                pass
        except h11.RemoteProtocolError as exc:  # cannot happen for a body of exactly Content-Length bytes
            raise HttpRefusal(400, f"malformed request body framing: {clip(exc)}") from None
        return raw

    def _left(self) -> float:
        return max(0.1, self.deadline - asyncio.get_running_loop().time())

    async def _send(self, status: int, payload: bytes) -> None:
        """Send one JSON answer through h11; `Connection: close` (and close) unless the connection goes on."""
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
        ]
        if not self.keep:
            headers.append((b"connection", b"close"))
        try:
            data = self.h11.send(h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b"")))
            data = (data or b"") + (self.h11.send(h11.Data(data=payload)) or b"")
            data += self.h11.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:  # h11 cannot frame an answer in this state: close without one
            self.keep = False
            return
        await self.writer.write(data, self.limits.request_timeout_s)


class RestApp:
    """The REST application over any byte stream: what the TLS listener runs on each connection."""

    def __init__(
        self, manager: ModelManager, guard: Guard, limits: RestLimits | None = None, dataplane: DataPlane | None = None
    ) -> None:
        """Serve `manager`'s models through `dataplane` (one is made when not given), guarded by `guard`."""
        self.manager = manager
        self.dataplane = dataplane or DataPlane(manager)
        self.guard = guard
        self.limits = limits or RestLimits()
        self.slots = Slots(self.limits.max_concurrent, self.limits.max_concurrent_per_peer)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None, peer: PeerIdentity
    ) -> bytes:
        """Serve one connection to its end; returns what was written when `writer` is None (in memory)."""
        out = _Writer(writer)
        await _Connection(self, reader, out, peer).run()
        return bytes(out.sent)

    def predict(self, served: ServedModel, raw: bytes) -> bytes:
        """TF Serving's predict of a request body, run on the data plane (in the calling thread)."""
        return predict(served, raw, self.limits.max_json_depth, self.dataplane.infer_now)

    def respond(self, data: bytes, peer: PeerIdentity = ANONYMOUS) -> bytes:
        """Sans-IO: raw request bytes (then end of stream) in, every byte the server would write out."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()

        async def one() -> bytes:
            reader = asyncio.StreamReader()
            reader.feed_data(data)
            reader.feed_eof()
            return await self.serve(reader, None, peer)

        return self._loop.run_until_complete(one())


# --- the TLS listener ----------------------------------------------------------------------------
class RestServer:
    """The REST listener on the gateway's event loop: `await start()`, `await stop()`."""

    def __init__(
        self,
        address: str,
        manager: ModelManager,
        guard: Guard,
        ssl_context: ssl.SSLContext | None,
        limits: RestLimits,
        dataplane: DataPlane | None = None,
    ) -> None:
        """Listen on `address` (host:port) with `ssl_context` (None: plain TCP, tests of framing only)."""
        host, _, port = address.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.app = RestApp(manager, guard, limits, dataplane)
        self.guard = guard
        self.limits = limits
        self.ssl_context = ssl_context
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._per_peer: dict[str, int] = {}

    async def start(self) -> None:
        """Bind and start accepting (OSError if the address is taken)."""
        self._server = await asyncio.start_server(self._accept, self.host, self.port, limit=READ_CHUNK)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def connections(self) -> int:
        """Connections open now (handshaking included)."""
        return len(self._tasks)

    async def stop(self) -> None:
        """Stop accepting, then end every open connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    def _refuse(self, method: str, peer: PeerIdentity, exc: SealgateError) -> None:
        """Audit and count a connection refused before any request (its record, then nothing else)."""
        try:
            with self.guard.call("rest", method, peer):
                raise exc
        except SealgateError:
            pass

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One TCP connection: the caps, the handshake, the per-peer cap, then requests."""
        task = asyncio.current_task()
        if len(self._tasks) >= self.limits.max_connections:
            self._refuse("connection", ANONYMOUS, Overloaded(f"more than {self.limits.max_connections} connections"))
            writer.transport.abort()
            return
        assert task is not None
        self._tasks.add(task)
        counted: str | None = None
        try:
            peer = ANONYMOUS
            if self.ssl_context is not None:
                try:
                    await writer.start_tls(self.ssl_context, ssl_handshake_timeout=self.limits.handshake_timeout_s)
                except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
                    refusal = Unauthenticated(f"TLS handshake failed: {clip(exc)}", reason="tls")
                    self._refuse("tls-handshake", ANONYMOUS, refusal)
                    return
                ssl_object = writer.get_extra_info("ssl_object")
                der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
                peer = peer_from_cert(der) if der else ANONYMOUS
            key = peer.thumbprint or ""
            if self._per_peer.get(key, 0) >= self.limits.max_connections_per_peer:
                refusal = Overloaded(f"more than {self.limits.max_connections_per_peer} connections from this client")
                self._refuse("connection", peer, refusal)
                await _Writer(writer).write(_refusal_bytes(429, str(refusal)), 1.0)
                return
            self._per_peer[key] = self._per_peer.get(key, 0) + 1
            counted = key
            await self.app.serve(reader, writer, peer)
        except (_Gone, ConnectionError, OSError, TimeoutError):
            pass
        except Exception:  # nothing a client sends may end the listener; this is logged, never shown
            log.exception("REST connection ended with an unexpected error")
        finally:
            self._tasks.discard(task)
            if counted is not None:
                left = self._per_peer.get(counted, 1) - 1
                if left > 0:
                    self._per_peer[counted] = left
                else:
                    self._per_peer.pop(counted, None)
            _close(writer)


def _refusal_bytes(status: int, message: str) -> bytes:
    """A complete `Connection: close` JSON answer sent before any request was read."""
    conn = h11.Connection(h11.SERVER)
    payload = strict_json.dumps({"error": message})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close"),
    ]
    out = conn.send(h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b""))) or b""
    return out + (conn.send(h11.Data(data=payload)) or b"") + (conn.send(h11.EndOfMessage()) or b"")


def _close(writer: asyncio.StreamWriter) -> None:
    """Close a connection without waiting on the client (a TLS close_notify is best effort)."""
    try:
        writer.close()
    except (ConnectionError, OSError, RuntimeError):
        pass


def header_pairs(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, bytes]]:
    """h11's (name, value) byte pairs as the (str, bytes) metadata the Authorizer reads."""
    return [(k.decode("latin-1"), v) for k, v in headers]
