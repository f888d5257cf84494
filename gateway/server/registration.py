"""Registers a servicer on the gRPC server so that each declared unary-request method is admitted on its
metadata before its request message is read.

grpc.aio runs a unary-request handler only once the request message has arrived, while gRPC counts the
call (`maximum_concurrent_rpcs`) from its headers: a client that sends headers and never the message held
a call that no check had seen. Registered here as a request stream instead (the same bytes on the wire,
so every client works unchanged), the method's guard runs at the headers (gateway/server/guard.py: the
token, a slot), then reads the one message itself, within `[server] message_timeout_s`.

Every service is added as a generic handler only, not by registered method name: grpc.aio's server keeps one
pending request per registered method and waits on all of them (asyncio.wait) for every call it accepts, so
the cost of a call grew with the number of methods (27 here: 10-24 µs a call, measured). A generic handler
is one pending request and one dictionary lookup per call.

A unary answer goes to gRPC one event-loop turn after the handler returns it: when a dynamic batch finishes,
each of its calls first ends its own work (encoding, audit), then all answers are sent back to back, and the
client and both event loops handle the wave in fewer wake-ups (an A/B on the 2-core VM with the bench's
tritonclient load at concurrency 64: isolated + batching at 5 ms 2,924 -> 3,242 req/s; unbatched 2,524 and
2,506, no change).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc

from gateway.server.guard import UNREAD, declaration


class _Capture:
    """Stands in for the server while a generated `add_*Servicer_to_server` hands over its method handlers."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """The same handlers again, as a generic handler: `add_registered_method_handlers` has them by name."""

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]) -> None:
        self.service, self.handlers = service, dict(handlers)


def register(server: grpc.aio.Server, add: Callable[[Any, Any], None], servicer: object) -> None:
    """`add(servicer, server)`, with every declared unary-request method turned into a request stream, as one
    generic handler (see the module's docstring for why not by registered name)."""
    capture = _Capture()
    add(servicer, capture)
    if not capture.service:
        raise RuntimeError(f"{add.__name__} registered no method handlers by name")
    handlers = {name: _admitted_first(handler) for name, handler in capture.handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(capture.service, handlers),))


def _admitted_first(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A unary-request handler whose behaviour carries a guard declaration, as a request-stream handler."""
    if handler.request_streaming:
        return handler
    behaviour = handler.unary_stream if handler.response_streaming else handler.unary_unary
    if declaration(behaviour) is None:  # not guarded (nothing of ours is): leave it as gRPC made it
        return handler
    make = grpc.stream_stream_rpc_method_handler if handler.response_streaming else grpc.stream_unary_rpc_method_handler
    return make(_unread(behaviour), handler.request_deserializer, handler.response_serializer)


def _unread(behaviour: Any) -> Any:
    """Call the guarded method with UNREAD for its request (it reads it once admitted), as gRPC expects."""
    if inspect.isasyncgenfunction(behaviour):

        async def answers(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for answer in behaviour(UNREAD, context):
                yield answer

        return answers

    async def answer(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        result = await behaviour(UNREAD, context)
        await asyncio.sleep(0)  # the rest of a finished batch ends its work first: the answers leave together
        return result

    return answer
