"""Server reflection v1 (`grpc.reflection.v1.ServerReflection`) beside v1alpha, public like it.

grpcio-reflection implements only v1alpha (grpc/grpc#38576). The v1 protocol is the same messages under a
new package name, field for field (protos/reflection/v1/reflection.proto; a test compares the two), so each
v1 request is re-read as a v1alpha one, answered by upstream's servicer over the same fixed service list and
descriptor pool, and the answer re-read as v1. Nothing is reimplemented, so both versions always agree.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb

from gateway.protos.reflection.v1 import reflection_pb2 as v1_pb
from gateway.protos.reflection.v1 import reflection_pb2_grpc as v1_grpc
from gateway.server.guard import Guard, PeerCache, public

SERVICE_NAME = v1_pb.DESCRIPTOR.services_by_name["ServerReflection"].full_name


async def _as_v1alpha(
    requests: AsyncIterator[v1_pb.ServerReflectionRequest],
) -> AsyncIterator[v1alpha_pb.ServerReflectionRequest]:
    """Each v1 request, re-read as the wire-identical v1alpha message."""
    async for request in requests:
        yield v1alpha_pb.ServerReflectionRequest.FromString(request.SerializeToString())


class PublicReflectionV1(v1_grpc.ServerReflectionServicer):
    """grpc.reflection.v1 over the gateway's fixed services, behind the peer check (one record per stream)."""

    def __init__(
        self, service_names: Iterable[str], guard: Guard, peers: PeerCache, pool: DescriptorPool | None = None
    ) -> None:
        """Describe `service_names` (from `pool`), checking and recording each stream through `guard`."""
        self._upstream = reflection.aio.ReflectionServicer(tuple(service_names), pool=pool)
        self.guard = guard
        self.peers = peers

    @public("ReflectionV1.Info")
    async def ServerReflectionInfo(
        self, request_iterator: AsyncIterator[v1_pb.ServerReflectionRequest], context: Any
    ) -> AsyncIterator[v1_pb.ServerReflectionResponse]:
        """Answer as upstream's v1alpha servicer does, once the peer's certificate has passed."""
        async for answer in self._upstream.ServerReflectionInfo(_as_v1alpha(request_iterator), context):
            yield v1_pb.ServerReflectionResponse.FromString(answer.SerializeToString())
