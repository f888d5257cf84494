"""`inference.GRPCInferenceService`: the Open Inference Protocol (KServe V2 / Triton) over grpc.aio.

Every call but health is authorized in the handler (interceptors cannot see the client certificate),
then audited and measured by the Guard. A model whose backend declares `runs_inline` (ONNX: a small
model costs microseconds and ONNX Runtime is thread-safe) runs on the event loop, as a bare server would;
others (TensorFlow) run in a worker thread so a slow graph does not stall other calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from gateway import versions
from gateway.auth.peer import PeerIdentity, peer_from_auth_context
from gateway.backends import registry
from gateway.errors import SealgateError
from gateway.protos.inference import grpc_service_pb2 as pb
from gateway.protos.inference import grpc_service_pb2_grpc as pb_grpc
from gateway.server.guard import Call, Guard
from gateway.server.limits import Slots
from gateway.server.status_map import grpc_status
from gateway.server.tensors import decode_inputs, decode_off_loop, encode_outputs
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
    """'' means the default version; otherwise the one version rule (gateway.versions): 1-18 ASCII digits, >= 1."""
    if not text:
        return None
    return versions.parse_version(text, field="model_version")


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The V2 inference service in front of the model manager.

    Every method authenticates (and, for a model, authorizes) first, then takes one of `slots` for the
    caller's certificate, then reads the request's fields; a stream does so on its metadata before its
    first message and holds its slot until it ends.
    """

    def __init__(
        self, manager: ModelManager, guard: Guard, peers: PeerCache | None = None, slots: Slots | None = None
    ) -> None:
        self.manager = manager
        self.guard = guard
        self.peers = peers or PeerCache()
        self.slots = slots if slots is not None else Slots(0, 0)

    async def _handle(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        action: str | None,
        model: str,
        body: Callable[[Call], T | Awaitable[T]],
    ) -> T:
        """Authorize `action` on `model`, hold a slot, run `body`; map any error to its code and a one-line message."""
        try:
            with self.guard.call("grpc", method, self.peers.get(context), model) as call:
                key = self.guard.admit(call, context.invocation_metadata(), self.slots, action, model)
                try:
                    result = body(call)
                    if asyncio.iscoroutine(result):
                        result = await result
                finally:
                    self.slots.release(key)
                return result  # type: ignore[return-value]
        except Exception as exc:
            code, message = grpc_status(exc)
        await context.abort(code, message)
        raise AssertionError("unreachable")  # context.abort always raises

    # --- server-level ---------------------------------------------------------------------------
    async def _public(self, method: str, context: grpc.aio.ServicerContext, answer: Callable[[], T]) -> T:
        """A public call (OIP live/ready, for probes and balancers): no token, only the certificate check."""
        try:
            with self.guard.call("grpc", method, self.peers.get(context)) as call:
                self.guard.check_peer(call)
                return answer()
        except Exception as exc:
            code, message = grpc_status(exc)
        await context.abort(code, message)
        raise AssertionError("unreachable")  # context.abort always raises

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return await self._public("ServerLive", context, lambda: pb.ServerLiveResponse(live=True))

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return await self._public("ServerReady", context, lambda: pb.ServerReadyResponse(ready=self.manager.ready()))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        def body(call: Call) -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=list(EXTENSIONS))

        return await self._handle("ServerMetadata", context, None, "", body)

    # --- model-level ----------------------------------------------------------------------------
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        def body(call: Call) -> pb.ModelReadyResponse:
            version = parse_version(request.version)
            try:
                served = self.manager.get(request.name, version)
            except SealgateError:
                return pb.ModelReadyResponse(ready=False)
            call.version = str(served.version)
            return pb.ModelReadyResponse(ready=True)

        return await self._handle("ModelReady", context, "infer", request.name, body)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        def body(call: Call) -> pb.ModelMetadataResponse:
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

        return await self._handle("ModelMetadata", context, "infer", request.name, body)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        # the hot path: written out rather than through _handle (no closure, no coroutine check)
        try:
            with self.guard.call("grpc", "ModelInfer", self.peers.get(context), request.model_name) as call:
                key = self.guard.admit(call, context.invocation_metadata(), self.slots, "infer", request.model_name)
                try:
                    return await self._infer(call, request)
                finally:
                    self.slots.release(key)
        except Exception as exc:
            code, message = grpc_status(exc)
        await context.abort(code, message)
        raise AssertionError("unreachable")  # context.abort always raises

    async def _infer(self, call: Call, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """Run one authorized request: resolve the version, decode (off the loop when large), infer, encode."""
        served = self.manager.get(request.model_name, parse_version(request.model_version))
        call.version = version = str(served.version)
        if decode_off_loop(request):
            inputs = await asyncio.to_thread(decode_inputs, request)
        else:
            inputs = decode_inputs(request)
        requested = [o.name for o in request.outputs] if request.outputs else None
        model = served.model
        if registry.runs_inline(model.platform):
            outputs = model.infer(inputs, requested)
        else:
            outputs = await asyncio.to_thread(model.infer, inputs, requested)
        response = pb.ModelInferResponse(model_name=served.name, model_version=version, id=request.id)
        encode_outputs(response, outputs, requested or [t.name for t in model.outputs if t.name in outputs])
        return response

    async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> Any:
        """Bidirectional streaming inference: each request answered in order; errors reported in-stream.

        The stream is authenticated on its metadata before its first message is read (no token, a bad one
        or a revoked certificate: UNAUTHENTICATED at once, audited) and then holds one slot of its caller
        until it ends; each request is then authorized for its own model.
        """
        metadata = context.invocation_metadata()
        try:
            peer = self.peers.get(context)
            key = self.guard.open_stream("grpc", "ModelStreamInfer", peer, metadata, self.slots)
        except Exception as exc:
            code, message = grpc_status(exc)
            await context.abort(code, message)
        try:
            async for request in request_iterator:
                try:
                    with self.guard.call("grpc", "ModelStreamInfer", peer, request.model_name) as call:
                        self.guard.authorize(call, metadata, "infer", request.model_name)
                        response = await self._infer(call, request)
                    yield pb.ModelStreamInferResponse(infer_response=response)
                except Exception as exc:
                    _, message = grpc_status(exc)
                    yield pb.ModelStreamInferResponse(error_message=message)
        finally:
            self.slots.release(key)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        def body(call: Call) -> pb.RepositoryIndexResponse:
            principal = call.principal
            assert principal is not None  # set by admit
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

        return await self._handle("RepositoryIndex", context, None, "", body)
