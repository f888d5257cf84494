"""The public gRPC services, gRPC Health and server reflection: no token, but mutual TLS with a client
certificate that verifies and is not revoked, checked, audited and counted like every other call.

Health answers only for the whole server (service ""): any other name is NOT_FOUND, exactly as an unknown one,
so no model name can be probed. Reflection describes the gateway's fixed services, never models.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as reflection_pb

from gateway.errors import NotFound
from gateway.server.guard import Guard, PeerCache, public

_STATUS = health_pb2.HealthCheckResponse
SERVER = ""  # the only health service name answered: the gateway as a whole
UNKNOWN_SERVICE = "unknown service"


class PublicHealth(health_aio.HealthServicer):  # type: ignore[misc]  # grpcio-health-checking is untyped
    """grpc.health.v1.Health for the whole server only, behind the peer check."""

    def __init__(self, guard: Guard, peers: PeerCache) -> None:
        """Serve health with `guard` for the checks and records and `peers` to read client certificates."""
        super().__init__()
        self.guard = guard
        self.peers = peers

    @public("Health.Check")
    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> health_pb2.HealthCheckResponse:
        """The server's status; NOT_FOUND for any other service name, known to the servicer or not."""
        if request.service != SERVER:
            raise NotFound(UNKNOWN_SERVICE)
        return _STATUS(status=self._server_status.get(SERVER, _STATUS.SERVICE_UNKNOWN))

    @public("Health.Watch")
    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        """Stream the server's status; any other name gets SERVICE_UNKNOWN (as an unknown one would) and waits."""
        if request.service == SERVER:
            await super().Watch(request, context)
            return
        await context.write(_STATUS(status=_STATUS.SERVICE_UNKNOWN))
        await asyncio.get_running_loop().create_future()  # until the client goes away


class PublicReflection(reflection.aio.ReflectionServicer):  # type: ignore[misc]
    """Server reflection over the gateway's fixed services, behind the peer check (one record per stream)."""

    def __init__(
        self, service_names: Iterable[str], guard: Guard, peers: PeerCache, pool: DescriptorPool | None = None
    ) -> None:
        """Describe `service_names` (from `pool`), checking and recording each stream through `guard`."""
        super().__init__(tuple(service_names), pool=pool)
        self.guard = guard
        self.peers = peers

    @public("Reflection.Info")
    async def ServerReflectionInfo(
        self, request_iterator: AsyncIterator[reflection_pb.ServerReflectionRequest], context: Any
    ) -> AsyncIterator[reflection_pb.ServerReflectionResponse]:
        """Answer as upstream does, once the peer's certificate has passed (before any request is read)."""
        async for response in super().ServerReflectionInfo(request_iterator, context):
            yield response
