"""`inference.GRPCInferenceService`: the Open Inference Protocol (KServe V2 / Triton) over grpc.aio.

A front end only: each method declares its guard (gateway.server.guard: `@guarded` with the scope and the
request field naming the model, or `@public`), converts the request, calls the DataPlane and converts the
answer. Authorization happens in the declared wrapper because interceptors cannot see the client certificate.
"""

from __future__ import annotations

from typing import Any

from gateway.protos.inference import grpc_service_pb2 as pb
from gateway.protos.inference import grpc_service_pb2_grpc as pb_grpc
from gateway.server.dataplane import DataPlane, parse_version
from gateway.server.guard import Call, Guard, PeerCache, guarded, guarded_stream, public
from gateway.server.limits import Slots
from gateway.server.tensors import decode_inputs, decode_off_loop, encode_outputs
from gateway.serving.manager import ModelManager

__all__ = ["EXTENSIONS", "SERVER_NAME", "SERVER_VERSION", "InferenceService", "PeerCache", "parse_version"]

SERVER_NAME = "sealgate"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ("model_repository", "binary_tensor_data", "sealed_artifacts")
_TENSOR = pb.ModelMetadataResponse.TensorMetadata
_INDEX = pb.RepositoryIndexResponse.ModelIndex


def _stream_error(message: str) -> pb.ModelStreamInferResponse:
    """How a refused or failed message of an inference stream is answered, in the stream."""
    return pb.ModelStreamInferResponse(error_message=message)


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The V2 inference service over the data plane; every method's guard is declared on it."""

    def __init__(
        self,
        manager: ModelManager,
        guard: Guard,
        peers: PeerCache | None = None,
        slots: Slots | None = None,
        dataplane: DataPlane | None = None,
    ) -> None:
        """Serve `manager`'s models through `dataplane` (one is made when not given), guarded by `guard`."""
        self.manager = manager
        self.dataplane = dataplane or DataPlane(manager)
        self.guard = guard
        self.peers = peers or PeerCache()
        self.slots = slots if slots is not None else Slots(0, 0)

    # --- server-level ---------------------------------------------------------------------------
    @public("ServerLive")
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        """Liveness, for probes and balancers."""
        return pb.ServerLiveResponse(live=True)

    @public("ServerReady")
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        """Readiness of the whole server, for probes and balancers."""
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    @guarded(None)
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, call: Call) -> pb.ServerMetadataResponse:
        """The server's name, version and extensions, to any authenticated caller."""
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=list(EXTENSIONS))

    # --- model-level ----------------------------------------------------------------------------
    @guarded("infer", model="name")
    async def ModelReady(self, request: pb.ModelReadyRequest, call: Call) -> pb.ModelReadyResponse:
        """Whether a model version the caller may infer on is ready."""
        served = self.dataplane.model_ready(request.name, parse_version(request.version))
        if served is not None:
            call.version = str(served.version)
        return pb.ModelReadyResponse(ready=served is not None)

    @guarded("infer", model="name")
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, call: Call) -> pb.ModelMetadataResponse:
        """A model version's platform, versions and tensor signatures."""
        meta = self.dataplane.metadata(request.name, parse_version(request.version))
        call.version = str(meta.version)
        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=[str(v) for v in meta.versions],
            platform=meta.platform,
            inputs=[_TENSOR(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in meta.inputs],
            outputs=[_TENSOR(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in meta.outputs],
        )

    @guarded("infer", model="model_name")
    async def ModelInfer(self, request: pb.ModelInferRequest, call: Call) -> pb.ModelInferResponse:
        """One inference (the same as each message of a stream)."""
        return await self._infer(request, call)

    async def _infer(self, request: pb.ModelInferRequest, call: Call) -> pb.ModelInferResponse:
        """Resolve the version, decode (off the loop when large), run on the data plane, encode."""
        dataplane = self.dataplane
        served = dataplane.model(request.model_name, parse_version(request.model_version))
        call.version = version = str(served.version)
        inputs = await dataplane.off_loop(decode_inputs, request, when=decode_off_loop(request))
        requested = [o.name for o in request.outputs] if request.outputs else None
        outputs = await dataplane.infer(served, inputs, requested)
        response = pb.ModelInferResponse(model_name=served.name, model_version=version, id=request.id)
        encode_outputs(response, outputs, requested or [t.name for t in served.model.outputs if t.name in outputs])
        return response

    @guarded_stream("infer", model="model_name", error=_stream_error)
    async def ModelStreamInfer(self, request: pb.ModelInferRequest, call: Call) -> pb.ModelStreamInferResponse:
        """Bidirectional streaming inference: each message answered in order, errors reported in-stream."""
        return pb.ModelStreamInferResponse(infer_response=await self._infer(request, call))

    @guarded(None)
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, call: Call) -> pb.RepositoryIndexResponse:
        """The model versions the caller may infer on or fetch (only the "models" repository exists)."""
        assert call.principal is not None  # set by the guard before the handler runs
        if request.repository_name and request.repository_name != "models":
            return pb.RepositoryIndexResponse()
        models = [
            _INDEX(name=st.name, version=str(st.version), state=st.state.name, reason=st.reason)
            for st in self.dataplane.index(call.principal, ready_only=request.ready)
        ]
        return pb.RepositoryIndexResponse(models=models)
