"""`inference.GRPCInferenceService`: the Open Inference Protocol (KServe V2 / Triton) over grpc.aio.

A front end only: each method declares its guard (gateway.server.guard: `@guarded` with the scope and the
request field naming the model, or `@public`), converts the request, calls the DataPlane and converts the
answer. Authorization happens in the declared wrapper because interceptors cannot see the client certificate.

Triton's extensions: ModelConfig and ModelStatistics (scope `infer` on the model), RepositoryModelLoad and
RepositoryModelUnload (`admin`): a load makes a stored, verified version the default and an unload moves
the default to the highest earlier one, both through the manager's explicit, persisted rollback (pin).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from gateway.auth import policy
from gateway.backends.dtypes import BYTES
from gateway.errors import InvalidInput, NotFound, PermissionDenied, clip
from gateway.protos.inference import grpc_service_pb2 as pb
from gateway.protos.inference import grpc_service_pb2_grpc as pb_grpc
from gateway.protos.inference import model_config_pb2 as mc
from gateway.server.dataplane import DataPlane, ModelStats, parse_version, version_to_load
from gateway.server.dataplane import ModelConfig as Configuration
from gateway.server.guard import Call, Guard, PeerCache, guarded, guarded_stream, public
from gateway.server.limits import Slots
from gateway.server.tensors import decode_inputs, decode_off_loop, encode_outputs
from gateway.serving.manager import ModelManager
from gateway.serving.repository import NAME_PATTERN

__all__ = ["EXTENSIONS", "SERVER_NAME", "SERVER_VERSION", "InferenceService", "PeerCache", "parse_version"]

SERVER_NAME = "sealgate"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ("model_repository", "model_configuration", "statistics", "binary_tensor_data", "sealed_artifacts")
_TENSOR = pb.ModelMetadataResponse.TensorMetadata
_INDEX = pb.RepositoryIndexResponse.ModelIndex
REPOSITORY = "models"  # the one repository: RepositoryIndex, load and unload take it or ""
LOAD_PARAMETERS = frozenset({"config"})
UNLOAD_PARAMETERS = frozenset({"unload_dependents"})  # sealgate models have no dependents: accepted, no effect


def _stream_error(message: str) -> pb.ModelStreamInferResponse:
    """How a refused or failed message of an inference stream is answered, in the stream."""
    return pb.ModelStreamInferResponse(error_message=message)


def _data_type(datatype: str) -> str:
    """Triton's DataType name of an Open Inference Protocol datatype ("FP32" -> TYPE_FP32, BYTES -> TYPE_STRING)."""
    return "TYPE_STRING" if datatype == BYTES else f"TYPE_{datatype}"


def _model_config(config: Configuration) -> mc.ModelConfig:
    """The ModelConfig message of a served version's configuration (dynamic_batching for a batched model)."""
    message = mc.ModelConfig(
        name=config.name,
        platform=config.platform,
        version_policy=mc.ModelVersionPolicy(specific=mc.ModelVersionPolicy.Specific(versions=config.versions)),
        max_batch_size=config.max_batch_size,
        input=[mc.ModelInput(name=t.name, data_type=_data_type(t.datatype), dims=t.shape) for t in config.inputs],
        output=[mc.ModelOutput(name=t.name, data_type=_data_type(t.datatype), dims=t.shape) for t in config.outputs],
    )
    if (policy := config.batching) is not None:
        message.dynamic_batching.preferred_batch_size.extend(policy.preferred_batch_sizes)
        message.dynamic_batching.max_queue_delay_microseconds = policy.max_queue_delay_us
        message.dynamic_batching.default_queue_policy.max_queue_size = policy.max_queue_size
    return message


def _duration(count: int, ns: int) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=count, ns=ns)


def _model_statistics(name: str, version: int, s: ModelStats) -> pb.ModelStatistics:
    """One version's statistics as Triton reports them: one execution per request, phases of successes."""
    return pb.ModelStatistics(
        name=name,
        version=str(version),
        last_inference=s.last_inference_ms,
        inference_count=s.success,
        execution_count=s.success,
        inference_stats=pb.InferStatistics(
            success=_duration(s.success, s.success_ns),
            fail=_duration(s.failure, s.failure_ns),
            queue=_duration(s.success, s.queue_ns),
            compute_input=_duration(s.success, s.compute_input_ns),
            compute_infer=_duration(s.success, s.compute_infer_ns),
            compute_output=_duration(s.success, s.compute_output_ns),
            cache_hit=_duration(0, 0),
            cache_miss=_duration(0, 0),
        ),
    )


def _repository(name: str) -> None:
    """Refuse any repository but the one sealgate has ("" means it too)."""
    if name and name != REPOSITORY:
        raise NotFound(f"repository '{clip(name, 64)}' not found: the only one is '{REPOSITORY}'")


def _parameters(
    parameters: Mapping[str, pb.ModelRepositoryParameter], allowed: frozenset[str]
) -> dict[str, pb.ModelRepositoryParameter]:
    """The load/unload parameters, refusing any not in `allowed` (files, for instance: nothing but sealed,
    verified versions from the repository is ever served)."""
    for key in parameters:
        if key not in allowed:
            raise InvalidInput(
                f"parameter '{clip(key, 64)}' is not accepted: sealgate serves only sealed, verified versions "
                f"from its repository (accepted here: {', '.join(sorted(allowed))})"
            )
    return dict(parameters)


def _config_text(parameters: Mapping[str, pb.ModelRepositoryParameter]) -> str | None:
    """The load's `config` parameter (a JSON string), None when absent."""
    param = parameters.get("config")
    if param is None:
        return None
    if param.WhichOneof("parameter_choice") != "string_param":
        raise InvalidInput("parameter 'config' must be a string (a JSON model configuration)")
    return param.string_param


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
        """Resolve the version, then decode (off the loop when large), run and encode on the data plane."""
        served = self.dataplane.model(request.model_name, parse_version(request.model_version))
        call.version = version = str(served.version)
        requested = [o.name for o in request.outputs] if request.outputs else None

        def encode(outputs: dict[str, np.ndarray]) -> pb.ModelInferResponse:
            response = pb.ModelInferResponse(model_name=served.name, model_version=version, id=request.id)
            names = requested or [t.name for t in served.model.outputs if t.name in outputs]
            encode_outputs(response, outputs, names)
            return response

        decode = functools.partial(decode_inputs, request)
        return await self.dataplane.run(served, decode, encode, requested, decode_off_loop=decode_off_loop(request))

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

    # --- Triton's extensions --------------------------------------------------------------------
    @guarded("infer", model="name")
    async def ModelConfig(self, request: pb.ModelConfigRequest, call: Call) -> pb.ModelConfigResponse:
        """A model version's configuration: platform, batching ([batching]'s policy, if any), tensors' dims."""
        config = self.dataplane.config(request.name, parse_version(request.version, "version"))
        call.version = str(config.version)
        return pb.ModelConfigResponse(config=_model_config(config))

    @guarded(None)
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, call: Call) -> pb.ModelStatisticsResponse:
        """Counts and durations per serving version: of the named model (scope infer on it) or, with no
        name, of every model the caller may infer on (as RepositoryIndex lists them)."""
        assert call.principal is not None  # set by the guard before the handler runs
        if request.name:
            self._require(call, "infer", request.name)
            entries = self.dataplane.statistics(request.name, parse_version(request.version, "version"))
        elif request.version:
            raise InvalidInput("a model version needs a model name")
        else:
            entries = self.dataplane.statistics(principal=call.principal)
        return pb.ModelStatisticsResponse(model_stats=[_model_statistics(n, v, s) for n, v, s in entries])

    @guarded("admin", model="model_name")
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, call: Call
    ) -> pb.RepositoryModelLoadResponse:
        """Serve a stored, verified version (the `config` parameter's version_policy, else the highest) as the
        default: a version already serving is left as it is, any other is pinned by an explicit rollback."""
        _repository(request.repository_name)
        config = _config_text(_parameters(request.parameters, LOAD_PARAMETERS))
        version = version_to_load(config) if config is not None else None
        reason = self._reason(call, "RepositoryModelLoad")
        loaded = await self.dataplane.off_loop(self.dataplane.load, request.model_name, version, reason)
        call.version = str(loaded)
        return pb.RepositoryModelLoadResponse()

    @guarded("admin", model="model_name")
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, call: Call
    ) -> pb.RepositoryModelUnloadResponse:
        """Stop serving the default version by pinning the highest earlier one that can serve (an explicit
        rollback); FAILED_PRECONDITION when there is none, so a model is never left without a version."""
        _repository(request.repository_name)
        _parameters(request.parameters, UNLOAD_PARAMETERS)
        previous = self.dataplane.manager.default_version(request.model_name)
        reason = self._reason(call, "RepositoryModelUnload")
        now = await self.dataplane.off_loop(self.dataplane.unload, request.model_name, None, reason)
        call.version = str(previous or "")
        if now is not None:
            call.reason = f"unloaded v{previous}: default now v{now}"
        return pb.RepositoryModelUnloadResponse()

    def _require(self, call: Call, action: str, name: str) -> None:
        """Authorize `action` on `name` inside a call declared for any valid token, as the guard would:
        NotFound for a name no model can have, PermissionDenied (counted) without the scope."""
        assert call.principal is not None
        call.model = name
        if not NAME_PATTERN.fullmatch(name):
            raise NotFound(f"model '{clip(name)}' not found")
        try:
            policy.authorize(call.principal, action, name)
        except PermissionDenied as exc:
            self.guard.metrics.auth_failures.labels(exc.reason).inc()
            raise

    @staticmethod
    def _reason(call: Call, method: str) -> str:
        """The rollback reason a load or unload leaves in the ledger: the method and who called it."""
        assert call.principal is not None
        return f"{method} by {clip(call.principal.subject, 64)}"
