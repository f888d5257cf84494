"""`GET /metrics` on a listener of its own (plain HTTP, loopback by default: `[server] metrics_address`).

Operators scrape it; clients of the model API never reach it, so the mTLS + JWT REST port answers
/metrics with 404. Bounded like the REST port, on h11: a few connections at a time, one request per
connection, a small head, a short deadline. Anything but `GET /metrics` is refused (400/404/405/408/
431/501), audited and counted under protocol "metrics", method "http-parse"; each scrape is
audited too (method "Scrape").
"""

from __future__ import annotations

import asyncio
import logging

import h11

from gateway.auth.peer import ANONYMOUS
from gateway.errors import ConfigError, NotFound, SealgateError, clip
from gateway.server import strict_json
from gateway.server.guard import Call, Guard
from gateway.server.status_map import HttpRefusal, http_status

log = logging.getLogger("sealgate.metrics")
MAX_CONNECTIONS = 16
MAX_HEAD_BYTES = 8192
DEADLINE_S = 10.0
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def split_address(address: str, key: str = "[server] metrics_address") -> tuple[str, int]:
    """host and port of 'host:port'; ConfigError naming `key` otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{key} {clip(address)!r} must be host:port (or '' to turn it off)")
    return host.strip("[]"), int(port)


class MetricsServer:
    """The metrics listener on the gateway's event loop: `await start()`, `await stop()`."""

    def __init__(self, address: str, guard: Guard) -> None:
        self.host, self.port = split_address(address)
        self.guard = guard
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind and start accepting (OSError if the address is taken)."""
        try:
            self._server = await asyncio.start_server(self._accept, self.host, self.port, limit=MAX_HEAD_BYTES)
        except OSError as exc:
            where = f"{self.host}:{self.port}"
            raise OSError(exc.errno, f"metrics listener {where}: {exc.strerror} ([server] metrics_address)") from None
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting and end open connections."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)

    def render(self) -> bytes:
        """Every pending call record written first, then the exposition text."""
        self.guard.recorder.flush()
        return self.guard.metrics.render()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection, one request, then close."""
        task = asyncio.current_task()
        if task is None or len(self._tasks) >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self._tasks.add(task)
        try:
            async with asyncio.timeout(DEADLINE_S):
                status, ctype, payload = await self._answer(reader)
                writer.write(_response(status, ctype, payload))
                await writer.drain()
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
        """Read and check the one request; the metrics text, or a refusal that is audited."""
        try:
            with self.guard.call("metrics", "http-parse", ANONYMOUS) as call:
                return 200, CONTENT_TYPE, await self._scrape(reader, call)
        except SealgateError as exc:
            status, message = http_status(exc)
            return status, b"application/json", strict_json.dumps({"error": message})

    async def _scrape(self, reader: asyncio.StreamReader, call: Call) -> bytes:
        """Parse the head with h11 within the deadline; only `GET /metrics` (any query) is answered."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise HttpRefusal(exc.error_status_hint, f"malformed request: {clip(exc)}") from None
            if isinstance(event, h11.Request):
                break
            if event is h11.NEED_DATA:
                try:
                    async with asyncio.timeout(DEADLINE_S):
                        data = await reader.read(MAX_HEAD_BYTES)
                except TimeoutError:
                    raise HttpRefusal(408, "request not received in time") from None
                if not data:
                    raise HttpRefusal(400, "the connection ended before the request was complete")
                conn.receive_data(data)
                continue
            raise HttpRefusal(400, "malformed request")
        if any(k in (b"transfer-encoding",) for k, _ in event.headers):
            raise HttpRefusal(501, "Transfer-Encoding is not supported")
        if event.method != b"GET":
            raise HttpRefusal(405, "only GET is served")
        if event.target.split(b"?", 1)[0] != b"/metrics":
            raise NotFound("no such endpoint: only /metrics")
        call.method = "Scrape"
        return await asyncio.to_thread(self.render)


def _response(status: int, content_type: bytes, payload: bytes) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection."""
    conn = h11.Connection(h11.SERVER)
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close"),
    ]
    out = conn.send(h11.Response(status_code=status, headers=headers)) or b""
    return out + (conn.send(h11.Data(data=payload)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
