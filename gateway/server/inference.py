"""`inference.GRPCInferenceService`: the Open Inference Protocol (KServe V2 / Triton) over grpc.aio.

Every call but health is authorized in the handler (interceptors cannot see the client certificate),
then audited and measured by the Guard. ONNX models run inline on the event loop, as a bare server
would (a small model costs microseconds and ONNX Runtime is thread-safe); TensorFlow models run in a
worker thread so a slow graph does not stall other calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from gateway.auth.peer import PeerIdentity, peer_from_auth_context
from gateway.errors import InvalidInput, grpc_status
from gateway.protos.inference import grpc_service_pb2 as pb
from gateway.protos.inference import grpc_service_pb2_grpc as pb_grpc
from gateway.server.guard import Call, Guard
from gateway.server.tensors import decode_inputs, encode_outputs
from gateway.serving.manager import ModelManager

SERVER_NAME = "sealgate"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ("model_repository", "binary_tensor_data", "sealed_artifacts")
T = TypeVar("T")


class PeerCache:
    """Parse each distinct client certificate once (connections reuse the same PEM bytes)."""

    def __init__(self, size: int = 1024) -> None:
        self._cache: dict[bytes, PeerIdentity] = {}
        self._size = size

    def get(self, context: grpc.aio.ServicerContext) -> PeerIdentity:
        auth = context.auth_context()
        pem = (auth.get("x509_pem_cert") or [b""])[0]
        peer = self._cache.get(pem)
        if peer is None:
            peer = peer_from_auth_context(auth)
            if len(self._cache) >= self._size:
                self._cache.clear()
            self._cache[pem] = peer
        return peer


def parse_version(text: str) -> int | None:
    """'' means the default version; otherwise a positive integer."""
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise InvalidInput(f"model_version must be a positive integer, got {text!r}")
    return int(text)


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The V2 inference service in front of the model manager."""

    def __init__(self, manager: ModelManager, guard: Guard, peers: PeerCache | None = None) -> None:
        self.manager = manager
        self.guard = guard
        self.peers = peers or PeerCache()

    async def _handle(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        model: str,
        body: Callable[[Call], T | Awaitable[T]],
    ) -> T:
        """Run `body` inside the guard; map any error to its status code and a one-line message."""
        try:
            with self.guard.call("grpc", method, self.peers.get(context), model) as call:
                result = body(call)
                if asyncio.iscoroutine(result):
                    result = await result
                return result  # type: ignore[return-value]
        except Exception as exc:
            code, message = grpc_status(exc)
        await context.abort(code, message)
        raise AssertionError("unreachable")  # context.abort always raises

    # --- server-level ---------------------------------------------------------------------------
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        def body(call: Call) -> pb.ServerLiveResponse:
            self.guard.authorize(call, context.invocation_metadata(), None)
            return pb.ServerLiveResponse(live=True)

        return await self._handle("ServerLive", context, "", body)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        def body(call: Call) -> pb.ServerReadyResponse:
            self.guard.authorize(call, context.invocation_metadata(), None)
            return pb.ServerReadyResponse(ready=self.manager.ready())

        return await self._handle("ServerReady", context, "", body)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        def body(call: Call) -> pb.ServerMetadataResponse:
            self.guard.authorize(call, context.invocation_metadata(), None)
            return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=list(EXTENSIONS))

        return await self._handle("ServerMetadata", context, "", body)

    # --- model-level ----------------------------------------------------------------------------
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        def body(call: Call) -> pb.ModelReadyResponse:
            self.guard.authorize(call, context.invocation_metadata(), "infer", request.name)
            version = parse_version(request.version)
            try:
                served = self.manager.get(request.name, version)
            except Exception:
                return pb.ModelReadyResponse(ready=False)
            call.version = str(served.version)
            return pb.ModelReadyResponse(ready=True)

        return await self._handle("ModelReady", context, request.name, body)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        def body(call: Call) -> pb.ModelMetadataResponse:
            self.guard.authorize(call, context.invocation_metadata(), "infer", request.name)
            served = self.manager.get(request.name, parse_version(request.version))
            call.version = str(served.version)
            model = served.model
            meta = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=served.name,
                versions=[str(v) for v in self.manager.versions(served.name)],
                platform=model.platform,
                inputs=[meta(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in model.inputs],
                outputs=[meta(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in model.outputs],
            )

        return await self._handle("ModelMetadata", context, request.name, body)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        # the hot path: written out rather than through _handle (no closure, no coroutine check)
        try:
            with self.guard.call("grpc", "ModelInfer", self.peers.get(context), request.model_name) as call:
                return await self._infer(call, request, context.invocation_metadata())
        except Exception as exc:
            code, message = grpc_status(exc)
        await context.abort(code, message)
        raise AssertionError("unreachable")  # context.abort always raises

    async def _infer(self, call: Call, request: pb.ModelInferRequest, metadata: Any) -> pb.ModelInferResponse:
        self.guard.authorize(call, metadata, "infer", request.model_name)
        served = self.manager.get(request.model_name, parse_version(request.model_version))
        call.version = version = str(served.version)
        inputs = decode_inputs(request)
        requested = [o.name for o in request.outputs] if request.outputs else None
        model = served.model
        if model.platform.startswith("onnx"):
            outputs = model.infer(inputs, requested)
        else:
            outputs = await asyncio.to_thread(model.infer, inputs, requested)
        response = pb.ModelInferResponse(model_name=served.name, model_version=version, id=request.id)
        encode_outputs(response, outputs, requested or [t.name for t in model.outputs if t.name in outputs])
        return response

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> Any:
        """Bidirectional streaming inference: each request answered in order; errors reported in-stream."""
        metadata = context.invocation_metadata()
        peer = self.peers.get(context)
        async for request in request_iterator:
            try:
                with self.guard.call("grpc", "ModelStreamInfer", peer, request.model_name) as call:
                    response = await self._infer(call, request, metadata)
                yield pb.ModelStreamInferResponse(infer_response=response)
            except Exception as exc:
                _, message = grpc_status(exc)
                yield pb.ModelStreamInferResponse(error_message=message)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        def body(call: Call) -> pb.RepositoryIndexResponse:
            principal = self.guard.authorize(call, context.invocation_metadata(), None)
            index = pb.RepositoryIndexResponse.ModelIndex
            models = []
            for st in self.manager.status():
                if request.repository_name and request.repository_name != "models":
                    continue
                if not (principal.can("infer", st.name) or principal.can("fetch", st.name)):
                    continue
                if request.ready and st.state.name != "SERVING":
                    continue
                models.append(index(name=st.name, version=str(st.version), state=st.state.name, reason=st.reason))
            return pb.RepositoryIndexResponse(models=models)

        return await self._handle("RepositoryIndex", context, "", body)
