"""sealgate's own protobuf descriptor pool, which every generated module here registers into.

Why not the default pool: `tritonclient.grpc` registers Triton's `inference.*` messages in the
default pool, and protobuf refuses a second file defining the same symbols. A private pool lets the
gateway and stock Triton clients share one process (the test suite does exactly that). Sealgate's
protos therefore import nothing outside protos/: a well-known type such as Timestamp would become a
second, incompatible class here. For server reflection, mirror the other services' files into this
pool and hand it over: `mirror(health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR)`, then
`reflection.enable_server_reflection(names, server, pool=POOL)`.
"""

from __future__ import annotations

from google.protobuf.descriptor import FileDescriptor
from google.protobuf.descriptor_pool import DescriptorPool

POOL = DescriptorPool()


def mirror(*files: FileDescriptor) -> None:
    """Add files from another pool (and their dependencies first) to POOL; files already there are kept."""
    for file in files:
        try:
            POOL.FindFileByName(file.name)
            continue
        except KeyError:
            pass
        mirror(*file.dependencies)
        POOL.AddSerializedFile(file.serialized_pb)
