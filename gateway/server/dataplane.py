"""The protocol-neutral data plane under every front end: model lookup, dispatch, statistics.

Front ends (OIP gRPC in inference.py, TF Serving REST in rest.py) only translate wire formats: they decode
a request into `dict[str, np.ndarray]` (tensors.py for gRPC, strict_json for REST), call the DataPlane, and
encode its answer. Versions follow the one rule of gateway.versions; whether a model runs on the event
loop or in a worker thread is its backend's declaration (`registry.runs_inline`), never a front end's.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from gateway import versions
from gateway.auth.authorizer import Principal
from gateway.backends import registry
from gateway.backends.base import TensorSpec
from gateway.errors import InvalidInput, NotFound, RollbackRefused, SealgateError, clip
from gateway.monitor.live import DriftMonitor
from gateway.server import strict_json
from gateway.server.phase_metrics import PhaseHistograms
from gateway.serving.batching import BatchingModel, BatchPolicy
from gateway.serving.manager import ModelManager
from gateway.serving.status import ModelState, ModelStatus, ServedModel

if TYPE_CHECKING:
    from gateway.server.tracing import Tracing

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ModelMetadata:
    """What any protocol says about a served model: its versions, platform and tensor signatures."""

    name: str
    version: int
    versions: tuple[int, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class ModelConfig:
    """A model version's configuration as Triton reports it (ModelConfig over gRPC, `/config` over REST).

    A model the gateway batches ([batching]) reports Triton's way: `max_batch_size` and `batching` are its
    policy's, and each tensor's dims leave out the batch dimension. Any other model: `max_batch_size` 0,
    `batching` None, dims the full shape (-1 for a variable dimension), as Triton says of a non-batching model.
    """

    name: str
    version: int
    versions: tuple[int, ...]
    platform: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: BatchPolicy | None = None  # the dynamic batcher's knobs, for a batched model only


STABLE = "stable"
CANARY = "canary"
LABELS = (STABLE, CANARY)
_STORED_OK = (ModelState.SERVING, ModelState.AVAILABLE, ModelState.RETIRED)


@dataclass
class ModelStats:
    """Counts and cumulative durations of one model version's inferences (Triton's statistics shape).

    The phase durations (queue, compute input / infer / output) add up successful requests only, so each
    one's count is `success`; a request that went through `infer_now` alone counts its run as compute_infer.
    """

    success: int = 0
    failure: int = 0
    success_ns: int = 0
    failure_ns: int = 0
    last_inference_ms: int = 0
    queue_ns: int = 0  # waiting for a worker thread before the model ran
    compute_input_ns: int = 0  # decoding the request's tensors
    compute_infer_ns: int = 0  # the model's own run
    compute_output_ns: int = 0  # encoding the answer's tensors


@dataclass(frozen=True, slots=True)
class Phases:
    """Where one successful request spent its time, in nanoseconds."""

    queue_ns: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0


@dataclass
class Statistics:
    """Per (model, version) inference statistics; `record` is the hook every inference passes through."""

    models: dict[tuple[str, int], ModelStats] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, name: str, version: int, elapsed_ns: int, ok: bool, phases: Phases | None = None) -> None:
        """Count one inference of `name` v`version` that took `elapsed_ns` and succeeded or not; a success
        adds its `phases` (None: all of `elapsed_ns` was the model's run)."""
        with self._lock:
            stats = self.models.get((name, version))
            if stats is None:
                stats = self.models[(name, version)] = ModelStats()
            if ok:
                stats.success += 1
                stats.success_ns += elapsed_ns
                if phases is None:
                    stats.compute_infer_ns += elapsed_ns
                else:
                    stats.queue_ns += phases.queue_ns
                    stats.compute_input_ns += phases.input_ns
                    stats.compute_infer_ns += phases.infer_ns
                    stats.compute_output_ns += phases.output_ns
            else:
                stats.failure += 1
                stats.failure_ns += elapsed_ns
            stats.last_inference_ms = int(time.time() * 1000)

    def snapshot(self) -> dict[tuple[str, int], ModelStats]:
        """A copy of every model version's statistics."""
        with self._lock:
            return {key: ModelStats(**vars(value)) for key, value in self.models.items()}


def _timed(fn: Callable[..., T], *args: Any) -> tuple[T, int]:
    """`fn(*args)` and the nanoseconds it took."""
    started = time.perf_counter_ns()
    result = fn(*args)
    return result, time.perf_counter_ns() - started


def _timed_from(fn: Callable[..., T], *args: Any) -> tuple[T, int, int]:
    """`fn(*args)`, when it started (perf_counter_ns) and the nanoseconds it took (to time a worker's queue)."""
    started = time.perf_counter_ns()
    result = fn(*args)
    return result, started, time.perf_counter_ns() - started


def version_to_load(config: str) -> int | None:
    """The version a Triton load's `config` parameter (JSON) asks for; None: the highest that can serve.

    A sealed model serves as it was signed, so the only setting taken is the version: `{"version_policy":
    {"specific": {"versions": [N]}}}` (one version) or `{"version_policy": {"latest": {"num_versions": 1}}}`;
    `name` may repeat the model's. Anything else is InvalidInput, never silently ignored.
    """
    try:
        doc = strict_json.loads(config.encode("utf-8"), max_depth=8)
    except InvalidInput as exc:
        raise InvalidInput(f"load parameter 'config': {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("load parameter 'config' must be a JSON object")
    extra = sorted(set(doc) - {"name", "version_policy"})
    if extra:
        raise InvalidInput(
            f"load parameter 'config' sets '{clip(extra[0], 64)}': a sealed model serves as it was signed, "
            "so a load may choose only its version (version_policy)"
        )
    policy = doc.get("version_policy", {"latest": {"num_versions": 1}})
    if policy == {"latest": {"num_versions": 1}}:
        return None
    versions_doc = policy.get("specific") if isinstance(policy, dict) and len(policy) == 1 else None
    chosen = versions_doc.get("versions") if isinstance(versions_doc, dict) and len(versions_doc) == 1 else None
    if not isinstance(chosen, list) or len(chosen) != 1:
        raise InvalidInput(
            'load parameter \'config\': version_policy must be {"specific": {"versions": [N]}} (one version) '
            'or {"latest": {"num_versions": 1}}'
        )
    value = chosen[0]
    return versions.parse_version(value, field="version") if isinstance(value, str) else versions.check_version(value)


def parse_version(text: str, field_name: str = "model_version") -> int | None:
    """'' means the default version; otherwise the one version rule (gateway.versions): 1-18 ASCII digits, >= 1."""
    if not text:
        return None
    return versions.parse_version(text, field=field_name)


class DataPlane:
    """One data plane for every front end, in front of the model manager."""

    def __init__(self, manager: ModelManager) -> None:
        """Serve the models of `manager`, recording statistics in `self.stats`."""
        self.manager = manager
        self.stats = Statistics()
        self.monitor: DriftMonitor | None = None  # set by the gateway when [monitor] is enabled
        self.histograms = PhaseHistograms()  # per-model queue / compute histograms, on the gateway's /metrics
        self.tracing: Tracing | None = None  # set by the gateway when [tracing] is enabled: the phases as spans

    # --- lookup ---------------------------------------------------------------------------------
    def ready(self) -> bool:
        """Whether the server as a whole is ready (every configured model serving)."""
        return self.manager.ready()

    def model(self, name: str, version: int | None = None) -> ServedModel:
        """The served model `name` at `version` (None: the default one); NotFound / Unavailable otherwise."""
        return self.manager.get(name, version)

    def model_ready(self, name: str, version: int | None = None) -> ServedModel | None:
        """The served model if it is ready, None if it is not (unknown, loading, refused)."""
        try:
            return self.manager.get(name, version)
        except SealgateError:
            return None

    def metadata(self, name: str, version: int | None = None) -> ModelMetadata:
        """The metadata of a served model version."""
        served = self.manager.get(name, version)
        model = served.model
        return ModelMetadata(
            served.name,
            served.version,
            tuple(self.manager.versions(served.name)),
            model.platform,
            tuple(model.inputs),
            tuple(model.outputs),
        )

    def status(self, name: str | None = None) -> list[ModelStatus]:
        """Every stored version's status (of one model when `name` is given)."""
        return self.manager.status(name)

    def index(self, principal: Principal, ready_only: bool = False) -> list[ModelStatus]:
        """The versions a principal may see (it may infer or fetch the model), serving ones only if asked."""
        return [
            st
            for st in self.manager.status()
            if (principal.can("infer", st.name) or principal.can("fetch", st.name))
            and not (ready_only and st.state.name != "SERVING")
        ]

    def config(self, name: str, version: int | None = None) -> ModelConfig:
        """The Triton-style configuration of a served model version (see ModelConfig)."""
        meta = self.metadata(name, version)
        model = self.manager.get(meta.name, meta.version).model
        if not isinstance(model, BatchingModel):
            return ModelConfig(meta.name, meta.version, meta.versions, meta.platform, 0, meta.inputs, meta.outputs)
        inputs, outputs = (tuple(replace(t, shape=t.shape[1:]) for t in specs) for specs in (meta.inputs, meta.outputs))
        size = model.policy.max_batch_size  # batched models have a leading -1 everywhere (batching.batchable)
        return ModelConfig(meta.name, meta.version, meta.versions, meta.platform, size, inputs, outputs, model.policy)

    def label_version(self, name: str, label: str) -> int:
        """The version a TF Serving version label names: `stable` is the default serving version, `canary`
        the highest serving version above it (none while routing serves nothing above the default)."""
        if label not in LABELS:
            raise NotFound(f"unknown version label '{clip(label, 64)}': use {' or '.join(LABELS)}")
        default = self.manager.default_version(name)
        if default is None:
            raise self._miss(name)
        if label == STABLE:
            return default
        above = [v for v in self.manager.versions(name) if v > default]
        if not above:
            raise NotFound(f"model {name!r} has no canary version: no serving version is above the default {default}")
        return max(above)

    def statistics(
        self, name: str | None = None, version: int | None = None, principal: Principal | None = None
    ) -> list[tuple[str, int, ModelStats]]:
        """Statistics of serving versions (zeros for unused ones): of `name` (at `version`), or of every model
        `principal` may infer on; NotFound / Unavailable for a named model or version that does not serve."""
        if name is not None and version is not None:
            keys = [(name, self.model(name, version).version)]
        elif name is not None:
            self.model(name)  # NotFound / Unavailable when nothing serves
            keys = [(name, v) for v in self.manager.versions(name)]
        else:
            keys = [
                (st.name, st.version)
                for st in self.manager.status()
                if st.state is ModelState.SERVING and (principal is None or principal.can("infer", st.name))
            ]
        snapshot = self.stats.snapshot()
        return [(n, v, snapshot.get((n, v), ModelStats())) for n, v in keys]

    # --- repository control (Triton's RepositoryModelLoad / Unload), through the manager's rollback ------
    def load(self, name: str, version: int | None, reason: str) -> int:
        """Make a stored, verified version serve; returns it. Blocking (may load a model): run off the loop.

        A version already serving is left as it is; any other is pinned as the default by an explicit,
        persisted rollback (the manager's only way to choose a version; the next push ends the pin). No
        version: the highest stored one the gateway can serve.
        """
        serving = self.manager.versions(name)
        if version is not None:
            if version in serving:
                return version
            self.manager.rollback(name, version, reason)
            return version
        candidates = self._stored_versions(name)
        error: SealgateError = NotFound(f"model {name!r} has no stored version the gateway can serve")
        for candidate in candidates:
            if candidate in serving:
                return candidate
            try:
                self.manager.rollback(name, candidate, reason)
            except RollbackRefused as exc:  # e.g. stored for fetch only: try the next one down
                error = exc
                continue
            return candidate
        raise error

    def unload(self, name: str, version: int | None, reason: str) -> int | None:
        """Stop serving the default version (or `version`, which must be the default); returns the new default.

        Done by pinning the highest earlier version that can serve (an explicit, persisted rollback), so
        only the unloaded version leaves the routes. A version that does not serve is left alone (None).
        RollbackRefused when no earlier version can take its place, or for a serving non-default version:
        stopping one of those needs its file removed from the repository.
        """
        candidates = self._stored_versions(name)
        default = self.manager.default_version(name)
        if version is not None and version not in candidates and version not in self.manager.versions(name):
            raise NotFound(f"model {name!r} has no version {version}")
        target = default if version is None else version
        if target is None or target not in self.manager.versions(name):
            return None
        if target != default:
            raise RollbackRefused(
                f"model {name!r} version {target} serves beside the default version {default}: sealgate stops "
                "serving a version by pinning an earlier default; remove its file to stop serving it"
            )
        error: SealgateError = RollbackRefused(
            f"model {name!r} version {target} cannot be unloaded: no earlier verified version can serve in its "
            "place (remove its file from the repository to stop serving the model)"
        )
        for candidate in (v for v in candidates if v < target):
            try:
                self.manager.rollback(name, candidate, reason)
            except RollbackRefused as exc:
                error = exc
                continue
            return candidate
        raise error

    def _stored_versions(self, name: str) -> list[int]:
        """Stored, verified versions of `name`, highest first; NotFound for a model with none stored."""
        statuses = self.manager.status(name)
        if not statuses:
            raise NotFound(f"model {name!r} not found")
        return sorted((st.version for st in statuses if st.state in _STORED_OK), reverse=True)

    def _miss(self, name: str) -> SealgateError:
        """The error for a model with no default version (NotFound or Unavailable, as `model` raises)."""
        try:
            self.manager.get(name)
        except SealgateError as exc:
            return exc
        return NotFound(f"model {name!r} not found")

    # --- dispatch -------------------------------------------------------------------------------
    def inline(self, served: ServedModel) -> bool:
        """Whether `served` runs on the event loop (its backend says so) rather than in a worker thread."""
        model = served.model  # an isolated model (runs_inline False) waits on its worker process: off the loop
        inline = registry.runs_inline(model.platform) and not isinstance(model, BatchingModel)
        return inline and getattr(model, "runs_inline", True) is not False

    def infer_now(
        self, served: ServedModel, inputs: Mapping[str, np.ndarray], requested: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run one inference in the calling thread and record it in the statistics."""
        started = time.perf_counter_ns()
        try:
            outputs = served.model.infer(inputs, requested)
        except BaseException as exc:
            self.stats.record(served.name, served.version, time.perf_counter_ns() - started, False)
            self.manager.observe(served, (time.perf_counter_ns() - started) / 1e9, exc)  # rollout / failover
            raise
        took = time.perf_counter_ns() - started
        self.stats.record(served.name, served.version, took, True)
        self.manager.observe(served, took / 1e9, None, inputs, outputs)  # canary judging, shadow mirroring
        self.histograms.observe_infer(served.name, served.version, took)
        if self.tracing is not None:
            self.tracing.phases(served.name, served.version, started, started + took, Phases(infer_ns=took))
        return outputs

    async def run(
        self,
        served: ServedModel,
        decode: Callable[[], Mapping[str, np.ndarray]],
        encode: Callable[[dict[str, np.ndarray]], R],
        requested: Sequence[str] | None = None,
        *,
        decode_off_loop: bool = False,
    ) -> R:
        """Decode, run (on the loop or in a worker, as the backend says) and encode one request, each phase
        timed into the statistics; a failure anywhere is counted once, as a failed inference."""
        clock = time.perf_counter_ns
        started = clock()
        try:  # the common case (small request, inline backend) times its phases here, with no extra calls
            if decode_off_loop:
                inputs, input_ns = await asyncio.to_thread(_timed, decode)
            else:
                inputs = decode()
                input_ns = clock() - started
            if self.inline(served):
                queue_ns = 0
                began = clock()
                outputs = served.model.infer(inputs, requested)
                infer_ns = clock() - began
            else:
                submitted = clock()
                infer_async = getattr(served.model, "infer_async", None)  # BatchingModel, IsolatedModel
                if infer_async is not None:  # queued for a dynamic batch or awaiting a worker: no thread held
                    outputs, began, infer_ns = await infer_async(inputs, requested)
                else:
                    outputs, began, infer_ns = await asyncio.to_thread(
                        _timed_from, served.model.infer, inputs, requested
                    )
                queue_ns = max(0, began - submitted)
            began = clock()
            answer = encode(outputs)
            output_ns = clock() - began
        except BaseException as exc:
            self.stats.record(served.name, served.version, time.perf_counter_ns() - started, False)
            self.manager.observe(served, (time.perf_counter_ns() - started) / 1e9, exc)  # rollout / failover
            raise
        phases = Phases(queue_ns, input_ns, infer_ns, output_ns)
        self.stats.record(served.name, served.version, time.perf_counter_ns() - started, True, phases)
        self.manager.observe(served, infer_ns / 1e9, None, inputs, outputs)  # canary judging, shadow mirroring
        if self.monitor is not None:  # drift: the monitor samples the inputs the model accepted
            self.monitor.observe(served, inputs)
        self.histograms.observe(served.name, served.version, phases)
        if self.tracing is not None:  # began: when encode began
            self.tracing.phases(served.name, served.version, started, began + output_ns, phases)
        return answer

    async def infer(
        self, served: ServedModel, inputs: Mapping[str, np.ndarray], requested: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run one inference where its backend says: on the loop (runs_inline) or in a worker thread."""
        if self.inline(served):
            return self.infer_now(served, inputs, requested)
        return await asyncio.to_thread(self.infer_now, served, inputs, requested)

    @staticmethod
    async def off_loop(fn: Callable[..., T], *args: object, when: bool = True) -> T:
        """Run `fn(*args)` in a worker thread when `when` (a large payload to decode), else right here."""
        if when:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)
