"""The REST API over mutual TLS, on h11 (a strict HTTP/1.1 state machine) and asyncio streams.

Two protocols, one route table (ROUTES, plus the public PUBLIC_ROUTES): the Open Inference Protocol
(`/v2/...`, KServe V2 / Triton HTTP, documents in oip_rest.py) and TF Serving's REST API (`/v1/models/...`,
documents in tfs_rest.py). Each route declares its audit name and scope; the same Guard as gRPC authorizes,
audits and counts every request, refused or served (HTTP-level refusals under the method "http-parse";
refused connections under "connection"). The order of work bounds what a client can take:

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
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import h11
import numpy as np

from gateway.auth.peer import ANONYMOUS, PeerIdentity, peer_from_cert
from gateway.config import ExplainConfig, ServerConfig
from gateway.errors import (
    ConfigError,
    InvalidInput,
    NotFound,
    Overloaded,
    SealgateError,
    TooLarge,
    Unauthenticated,
    Unavailable,
    clip,
)
from gateway.explain.engine import Explainer
from gateway.server import explain_rest, oip_rest, strict_json, tfs_rest
from gateway.server.dataplane import DataPlane, version_to_load
from gateway.server.guard import Call, Guard
from gateway.server.inference import EXTENSIONS, SERVER_NAME, SERVER_VERSION
from gateway.server.limits import Slots
from gateway.server.status_map import HttpRefusal, http_status
from gateway.server.tfs_rest import model_status, predict
from gateway.serving.manager import ModelManager
from gateway.serving.status import ServedModel
from gateway.versions import parse_version

__all__ = ["PUBLIC_ROUTES", "ROUTES", "RestApp", "RestLimits", "RestServer", "Route", "model_status", "predict"]

log = logging.getLogger("sealgate.rest")
JSON = b"application/json"
LOAD_PARAMETERS = frozenset({"config"})
UNLOAD_PARAMETERS = frozenset({"unload_dependents"})  # sealgate models have no dependents: accepted, no effect
BINARY = b"application/octet-stream"
_BARE_LF = re.compile(rb"(?<!\r)\n")
_BARE_CR = re.compile(rb"\r(?!\n)")
_HEAD_END = re.compile(rb"\n\r?\n")  # the empty line; CRLF-only is checked once the head is whole
INLINE_BODY_BYTES = 64 << 10
READ_CHUNK = 64 << 10
LISTEN_BACKLOG = 100  # asyncio.start_server's default
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
    415: b"Unsupported Media Type",
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


# --- the route table: every REST route, its audit name, its scope and its handler --------------------
@dataclass(frozen=True)
class Route:
    """One REST route: HTTP method, path pattern (named groups `name`, `version`, `label`), audit name,
    scope (None: any valid token; a public route needs none), handler.

    `example` is a path of this route, `{name}` standing for a model (the guard-walk test calls each through it).
    """

    method: bytes
    pattern: re.Pattern[str]
    name: str
    action: str | None
    handler: str
    example: str


@dataclass(frozen=True)
class Reply:
    """A 200 answer: its body, content type and any extra headers."""

    body: bytes
    content_type: bytes = JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()


_NAME = r"(?P<name>[A-Za-z0-9._-]+)"
_TFS = rf"/v1/models/{_NAME}(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[A-Za-z0-9._-]+))?"
_OIP = rf"/v2/models/{_NAME}(?:/versions/(?P<version>[0-9]+))?"
_REPO = rf"/v2/repository/models/{_NAME}(?:/versions/(?P<version>[0-9]+))?"


def _route(method: bytes, path: str, name: str, action: str | None, handler: str, example: str) -> Route:
    return Route(method, re.compile(path), name, action, handler, example)


ROUTES: tuple[Route, ...] = (
    # TF Serving
    _route(b"GET", _TFS, "GetModelStatus", "infer", "_status", "/v1/models/{name}"),
    _route(b"GET", _TFS + "/metadata", "GetModelMetadata", "infer", "_tfs_metadata", "/v1/models/{name}/metadata"),
    _route(b"POST", _TFS + ":predict", "Predict", "infer", "_predict", "/v1/models/{name}:predict"),
    _route(b"POST", _TFS + ":classify", "Classify", "infer", "_classify", "/v1/models/{name}:classify"),
    _route(b"POST", _TFS + ":regress", "Regress", "infer", "_regress", "/v1/models/{name}:regress"),
    _route(b"POST", _TFS + ":explain", "Explain", "explain", "_explain", "/v1/models/{name}:explain"),  # KServe V1
    # the Open Inference Protocol
    _route(b"GET", "/v2", "ServerMetadata", None, "_server_metadata", "/v2"),
    _route(b"GET", "/v2/models/stats", "ModelStatisticsAll", None, "_stats", "/v2/models/stats"),
    _route(b"GET", _OIP, "ModelMetadata", "infer", "_metadata", "/v2/models/{name}"),
    _route(b"GET", _OIP + "/ready", "ModelReady", "infer", "_model_ready", "/v2/models/{name}/ready"),
    _route(b"GET", _OIP + "/config", "ModelConfig", "infer", "_config", "/v2/models/{name}/config"),
    _route(b"GET", _OIP + "/stats", "ModelStatistics", "infer", "_stats", "/v2/models/{name}/stats"),
    _route(b"POST", _OIP + "/infer", "ModelInfer", "infer", "_infer", "/v2/models/{name}/infer"),
    _route(b"POST", "/v2/repository/index", "RepositoryIndex", None, "_index", "/v2/repository/index"),
    _route(b"POST", _REPO + "/load", "RepositoryModelLoad", "admin", "_load", "/v2/repository/models/{name}/load"),
    _route(
        b"POST", _REPO + "/unload", "RepositoryModelUnload", "admin", "_unload", "/v2/repository/models/{name}/unload"
    ),
)
# answered with a client certificate that verifies and no token, like gRPC's ServerLive / ServerReady: for
# probes and load balancers; they say only whether the server is up and ready
PUBLIC_ROUTES: tuple[Route, ...] = (
    _route(b"GET", "/v2/health/live", "ServerLive", None, "_live", "/v2/health/live"),
    _route(b"GET", "/v2/health/ready", "ServerReady", None, "_ready", "/v2/health/ready"),
)


def match(method: bytes, path: str) -> tuple[Route, re.Match[str]]:
    """The route of a request and its path's match; NotFound (404, path clipped) when there is none, 405
    for a path that takes another method."""
    allowed: list[bytes] = []
    for route in (*PUBLIC_ROUTES, *ROUTES):
        m = route.pattern.fullmatch(path)
        if m is not None:
            if route.method == method:
                return route, m
            allowed.append(route.method)
    if allowed:
        raise HttpRefusal(405, f"use {' or '.join(sorted({a.decode() for a in allowed}))} for {clip(path)}")
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
        self.head_only = False  # the request in hand is a HEAD
        self.headers: Sequence[tuple[bytes, bytes]] = ()

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
                status, reply = 200, await self._handle(call)
            if self.body_left:
                self.keep = False  # a body that was never read: no request may follow it
        except _Gone:
            self.keep = False
            raise
        except Exception as exc:
            status, message = http_status(exc)
            reply = Reply(strict_json.dumps({"error": message}))
            if isinstance(exc, HttpRefusal | TooLarge) or self.body_left:
                self.keep = False  # the stream holds bytes that are not a request: no request may follow
        await self._send(status, reply)

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

    async def _handle(self, call: Call) -> Reply:
        """Everything between the head and the answer: route, guard, then the route's handler."""
        self.head_only = False
        request = await self._head()
        self.headers = request.headers
        self.head_only = request.method == b"HEAD"  # its answer has headers, and no body (RFC 9110 9.3.2)
        lengths = [int(v) for k, v in request.headers if k == b"content-length"]
        self.body_left = lengths[0] if lengths else 0
        if any(k == b"transfer-encoding" for k, _ in request.headers):
            self.body_left = 1  # framing unknown to this server: nothing after this head can be trusted
            raise HttpRefusal(501, "Transfer-Encoding is not supported: send the body with a Content-Length")
        method = request.method
        if method not in (b"GET", b"POST"):
            raise HttpRefusal(405, "only GET and POST are served")
        encoding = self._header(b"content-encoding")
        if encoding is not None and encoding.strip().lower() != b"identity":
            raise HttpRefusal(415, "compressed request bodies (Content-Encoding) are not accepted")
        call.method = "Predict" if method == b"POST" else "GetModelStatus"
        target = request.target.decode("ascii", "replace")
        route, m = match(method, target.split("?", 1)[0])
        call.method = route.name
        groups = m.groupdict()
        name = groups.get("name") or ""
        call.model = name
        version = parse_version(groups["version"]) if groups.get("version") else None
        guard = self.app.guard
        if route in PUBLIC_ROUTES:
            guard.check_peer(call)
        else:
            guard.authorize(call, header_pairs(request.headers), route.action, name)
        label = groups.get("label")
        if label is not None:
            version = self.app.dataplane.label_version(name, label)
        if version is not None:
            call.version = str(version)
        handler: Callable[[Call, str, int | None], Awaitable[Reply]] = getattr(self, route.handler)
        return await handler(call, name, version)

    def _header(self, name: bytes) -> bytes | None:
        """The value of request header `name` (lowercase), None when absent."""
        return next((v for k, v in self.headers if k == name), None)

    async def _no_body(self) -> None:
        """End a request that takes no body (h11 still expects the empty body's end before the next one)."""
        if not self.body_left:
            await self._body()

    async def _payload(self) -> bytes:
        """The request body, after its declared length was checked against the limit (413 before reading)."""
        if self.body_left > self.limits.max_body_bytes:
            raise TooLarge(f"request body of {self.body_left} bytes exceeds the limit of {self.limits.max_body_bytes}")
        return await self._body()

    def _slot(self) -> AbstractContextManager[None]:
        """One of the caller's concurrency slots, held while its body is read and run."""
        return self.app.slots.hold(self.peer.thumbprint or "")

    def _served(self, call: Call, name: str, version: int | None) -> ServedModel:
        """The served model a request runs on, its version noted in the audit record."""
        served = self.app.dataplane.model(name, version)
        call.version = str(served.version)
        return served

    # --- TF Serving ---------------------------------------------------------------------------------
    async def _status(self, call: Call, name: str, version: int | None) -> Reply:
        """TF Serving's GetModelStatus."""
        await self._no_body()
        return Reply(model_status(self.app.dataplane, name, version))

    async def _tfs_metadata(self, call: Call, name: str, version: int | None) -> Reply:
        """TF Serving's GetModelMetadata."""
        await self._no_body()
        meta = self.app.dataplane.metadata(name, version)
        call.version = str(meta.version)
        return Reply(tfs_rest.metadata(meta))

    async def _predict(self, call: Call, name: str, version: int | None) -> Reply:
        """TF Serving's predict: a slot, the body, then the data plane (off the loop when large or slow)."""
        return await self._run_tfs(call, name, version, self.app.predict)

    async def _classify(self, call: Call, name: str, version: int | None) -> Reply:
        """TF Serving's classify, for a model that declares a classification output (see tfs_rest)."""
        return await self._run_tfs(call, name, version, self.app.classify)

    async def _regress(self, call: Call, name: str, version: int | None) -> Reply:
        """TF Serving's regress, for a model that declares a regression output (see tfs_rest)."""
        return await self._run_tfs(call, name, version, self.app.regress)

    async def _explain(self, call: Call, name: str, version: int | None) -> Reply:
        """KServe V1 explain (explain_rest.py): a slot, the body, then the explainer (it runs off the loop)."""
        served = self._served(call, name, version)
        with self._slot():
            query = explain_rest.parse(await self._payload(), self.limits.max_json_depth)
            subject = call.principal.subject if call.principal is not None else ""
            result = await self.app.explainer.explain(served, query, subject)
        return Reply(explain_rest.document(served.name, served.version, result))

    async def _run_tfs(
        self, call: Call, name: str, version: int | None, run: Callable[[ServedModel, bytes], bytes]
    ) -> Reply:
        """Read the body under a slot and run one TF Serving document through the data plane."""
        dataplane = self.app.dataplane
        served = self._served(call, name, version)
        with self._slot():
            raw = await self._payload()
            off_loop = len(raw) > INLINE_BODY_BYTES or not dataplane.inline(served)
            return Reply(await dataplane.off_loop(run, served, raw, when=off_loop))

    # --- the Open Inference Protocol ----------------------------------------------------------------
    async def _live(self, call: Call, name: str, version: int | None) -> Reply:
        """Liveness, public (probes): the server answers."""
        await self._no_body()
        return Reply(strict_json.dumps({"live": True}))

    async def _ready(self, call: Call, name: str, version: int | None) -> Reply:
        """Readiness, public (probes): 200 once every model was looked at and none is loading, else 503."""
        await self._no_body()
        if not self.app.dataplane.ready():
            raise Unavailable("the server is not ready: models are still loading")
        return Reply(strict_json.dumps({"ready": True}))

    async def _server_metadata(self, call: Call, name: str, version: int | None) -> Reply:
        """The server's name, version and extensions, to any authenticated caller."""
        await self._no_body()
        return Reply(strict_json.dumps({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}))

    async def _metadata(self, call: Call, name: str, version: int | None) -> Reply:
        """A model version's platform, versions and tensor signatures."""
        await self._no_body()
        meta = self.app.dataplane.metadata(name, version)
        call.version = str(meta.version)
        return Reply(oip_rest.metadata_doc(meta))

    async def _model_ready(self, call: Call, name: str, version: int | None) -> Reply:
        """200 when the model version serves; 404 unknown, 503 known but not serving."""
        await self._no_body()
        self._served(call, name, version)
        return Reply(strict_json.dumps({"name": name, "ready": True}))

    async def _config(self, call: Call, name: str, version: int | None) -> Reply:
        """The model version's configuration, as Triton writes it."""
        await self._no_body()
        config = self.app.dataplane.config(name, version)
        call.version = str(config.version)
        return Reply(oip_rest.config_doc(config))

    async def _stats(self, call: Call, name: str, version: int | None) -> Reply:
        """Inference statistics of one model (or version), or of every model the caller may infer on."""
        await self._no_body()
        entries = self.app.dataplane.statistics(name or None, version, call.principal)
        return Reply(oip_rest.stats_doc(entries))

    async def _infer(self, call: Call, name: str, version: int | None) -> Reply:
        """One inference: JSON tensors, or a JSON header then binary tensors (Inference-Header-Content-Length);
        decode, run and encode timed into the statistics by the data plane."""
        dataplane = self.app.dataplane
        served = self._served(call, name, version)
        header = self._header(oip_rest.HEADER_LENGTH)
        with self._slot():
            raw = await self._payload()
            length = oip_rest.header_length(header, len(raw))
            decoded: list[oip_rest.InferRequest] = []

            def decode() -> dict[str, np.ndarray]:
                decoded.append(oip_rest.decode_infer(raw, length, self.limits.max_json_depth))
                return decoded[0].inputs

            def encode(outputs: dict[str, np.ndarray]) -> tuple[bytes, int | None]:
                request = decoded[0]
                order = request.outputs or tuple(t.name for t in served.model.outputs if t.name in outputs)
                return oip_rest.encode_infer(served.name, served.version, request, outputs, order)

            body, head = await dataplane.run(served, decode, encode, decode_off_loop=len(raw) > INLINE_BODY_BYTES)
        if head is None:
            return Reply(body)
        return Reply(body, BINARY, ((oip_rest.HEADER_LENGTH, str(head).encode()),))

    async def _index(self, call: Call, name: str, version: int | None) -> Reply:
        """The model versions the caller may infer on or fetch (`{"ready": true}`: serving ones only)."""
        assert call.principal is not None  # set by the guard before the handler runs
        with self._slot():
            ready = oip_rest.index_request(await self._payload(), self.limits.max_json_depth)
        return Reply(oip_rest.index_doc(self.app.dataplane.index(call.principal, ready_only=ready)))

    async def _load(self, call: Call, name: str, version: int | None) -> Reply:
        """Admin: make a stored, verified version serve (DataPlane.load: an audited, persisted pin); the
        version comes from the path or from a `config` parameter's version_policy, as over gRPC."""
        with self._slot():
            params = oip_rest.control_request(await self._payload(), LOAD_PARAMETERS, self.limits.max_json_depth)
            config = params.get("config")
            if config is not None:
                if not isinstance(config, str):
                    raise InvalidInput("load parameter 'config' must be a string of JSON")
                if version is not None:
                    raise InvalidInput("name the version in the path or in the config, not both")
                version = version_to_load(config)
            loaded = await asyncio.to_thread(self.app.dataplane.load, name, version, self._reason(call))
        call.version = str(loaded)
        return Reply(strict_json.dumps({"name": name, "version": str(loaded)}))

    async def _unload(self, call: Call, name: str, version: int | None) -> Reply:
        """Admin: stop serving the default version (DataPlane.unload: pins the highest earlier one)."""
        with self._slot():
            oip_rest.control_request(
                await self._payload(), frozenset({"unload_dependents"}), self.limits.max_json_depth
            )
            default = await asyncio.to_thread(self.app.dataplane.unload, name, version, self._reason(call))
        return Reply(strict_json.dumps({"name": name, "version": None if default is None else str(default)}))

    @staticmethod
    def _reason(call: Call) -> str:
        """The reason recorded in the ledger's rollback history for a repository load or unload."""
        subject = call.principal.subject if call.principal is not None else "?"
        return f"{call.method} over REST by {clip(subject, 64)}"

    async def _body(self) -> bytes:
        """Exactly the declared Content-Length of body bytes, before the request's deadline."""
        if self.h11.they_are_waiting_for_100_continue:
            await self.writer.write(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])), self._left())
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

    async def _send(self, status: int, reply: Reply) -> None:
        """Send one answer through h11; `Connection: close` (and close) unless the connection goes on."""
        payload = reply.body
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", reply.content_type),
            (b"content-length", str(len(payload)).encode()),
            *reply.headers,
        ]
        if not self.keep:
            headers.append((b"connection", b"close"))
        try:
            data = self.h11.send(h11.Response(status_code=status, headers=headers, reason=_REASONS.get(status, b"")))
            if not self.head_only:
                data = (data or b"") + (self.h11.send(h11.Data(data=payload)) or b"")
            data = (data or b"") + (self.h11.send(h11.EndOfMessage()) or b"")
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
        self.explainer = Explainer(ExplainConfig())  # the Gateway sets its own (shared with gRPC: one rate limit)
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

    def classify(self, served: ServedModel, raw: bytes) -> bytes:
        """TF Serving's classify of a request body, run on the data plane (in the calling thread)."""
        return tfs_rest.classify(served, raw, self.dataplane.infer_now, self.limits.max_json_depth)

    def regress(self, served: ServedModel, raw: bytes) -> bytes:
        """TF Serving's regress of a request body, run on the data plane (in the calling thread)."""
        return tfs_rest.regress(served, raw, self.dataplane.infer_now, self.limits.max_json_depth)

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
        self._sock: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._per_peer: dict[str, int] = {}
        self.reuse_port = False  # SO_REUSEPORT: several front-end workers share the port

    async def start(self) -> None:
        """Bind and start accepting (OSError if the address is taken)."""
        loop = asyncio.get_running_loop()
        family, _, _, _, addr = (
            await loop.getaddrinfo(self.host or None, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        )[0]
        sock = socket.create_server(addr, family=family, backlog=LISTEN_BACKLOG, reuse_port=self.reuse_port)
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._acceptor = loop.create_task(self._accept_loop(sock))

    @property
    def connections(self) -> int:
        """Connections open now (handshaking included)."""
        return len(self._tasks)

    async def stop(self) -> None:
        """Stop accepting, then end every open connection."""
        if self._acceptor is not None:
            self._acceptor.cancel()
        if self._sock is not None:
            self._sock.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    async def _accept_loop(self, sock: socket.socket) -> None:
        """Accept TCP connections: beyond `max_connections` close at once, else one task per connection."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:  # out of descriptors, a connection reset while queued: go on accepting
                log.warning("REST accept failed: %s", exc)
                await asyncio.sleep(0.05)
                continue
            if len(self._tasks) >= self.limits.max_connections:  # closed at once, before TLS
                self._refuse(
                    "connection", ANONYMOUS, Overloaded(f"more than {self.limits.max_connections} connections")
                )
                conn.close()
                continue
            self._tasks.add(loop.create_task(self._accept(conn)))

    def _refuse(self, method: str, peer: PeerIdentity, exc: SealgateError) -> None:
        """Audit and count a connection refused before any request (its record, then nothing else)."""
        try:
            with self.guard.call("rest", method, peer):
                raise exc
        except SealgateError:
            pass

    async def _open(self, conn: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter | None]:
        """Streams over an accepted socket, TLS from its first byte (a bounded handshake); no writer if it failed.

        The loop wraps the socket before reading anything: a TLS upgrade of an already-reading stream
        (StreamWriter.start_tls) loses the bytes read before it under uvloop (MagicStack/uvloop#707)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_CHUNK, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        timeout = self.limits.handshake_timeout_s if self.ssl_context is not None else None
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=self.ssl_context, ssl_handshake_timeout=timeout
            )
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
            if self.ssl_context is not None:
                self._refuse("tls-handshake", ANONYMOUS, Unauthenticated(f"TLS handshake failed: {clip(exc)}", "tls"))
            return reader, None
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def _accept(self, conn: socket.socket) -> None:
        """One accepted TCP connection (counted in `_tasks`): the handshake, the per-peer cap, then requests."""
        counted: str | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await self._open(conn)
            if writer is None:
                return
            peer = ANONYMOUS
            if self.ssl_context is not None:
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
        except (_Gone, ConnectionError, OSError, TimeoutError, asyncio.CancelledError):
            pass  # CancelledError: stop() ends an idle keep-alive connection; the task then ends quietly
        except Exception:  # nothing a client sends may end the listener; this is logged, never shown
            log.exception("REST connection ended with an unexpected error")
        finally:
            self._tasks.discard(asyncio.current_task())
            if counted is not None:
                left = self._per_peer.get(counted, 1) - 1
                if left > 0:
                    self._per_peer[counted] = left
                else:
                    self._per_peer.pop(counted, None)
            if writer is not None:
                _close(writer)
            else:
                conn.close()


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
