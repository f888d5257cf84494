"""Generated gRPC/protobuf modules for sealgate's contracts (sources in protos/, regenerate with
`python -m gateway.protos.generate`).

Modules: `gateway.protos.inference.grpc_service_pb2{,_grpc}` (Open Inference Protocol, Triton's
wire format) and `gateway.protos.sealgate.v1.release_pb2{,_grpc}` (sealgate.v1.Release). Their
descriptors live in `gateway.protos.pool.POOL`, not the default pool, so they coexist with
`tritonclient.grpc` (which defines the same `inference.*` symbols) in one process.
"""
