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
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from gateway import versions
from gateway.auth.authorizer import Principal
from gateway.backends import registry
from gateway.backends.base import TensorSpec
from gateway.errors import SealgateError
from gateway.serving.manager import ModelManager
from gateway.serving.status import ModelStatus, ServedModel

T = TypeVar("T")


@dataclass(frozen=True)
class ModelMetadata:
    """What any protocol says about a served model: its versions, platform and tensor signatures."""

    name: str
    version: int
    versions: tuple[int, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass
class ModelStats:
    """Counts and cumulative durations of one model version's inferences (Triton's statistics shape)."""

    success: int = 0
    failure: int = 0
    success_ns: int = 0
    failure_ns: int = 0
    last_inference_ms: int = 0


@dataclass
class Statistics:
    """Per (model, version) inference statistics; `record` is the hook every inference passes through."""

    models: dict[tuple[str, int], ModelStats] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, name: str, version: int, elapsed_ns: int, ok: bool) -> None:
        """Count one inference of `name` v`version` that took `elapsed_ns` and succeeded or not."""
        with self._lock:
            stats = self.models.get((name, version))
            if stats is None:
                stats = self.models[(name, version)] = ModelStats()
            if ok:
                stats.success += 1
                stats.success_ns += elapsed_ns
            else:
                stats.failure += 1
                stats.failure_ns += elapsed_ns
            stats.last_inference_ms = int(time.time() * 1000)

    def snapshot(self) -> dict[tuple[str, int], ModelStats]:
        """A copy of every model version's statistics."""
        with self._lock:
            return {key: ModelStats(**vars(value)) for key, value in self.models.items()}


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

    # --- dispatch -------------------------------------------------------------------------------
    def inline(self, served: ServedModel) -> bool:
        """Whether `served` runs on the event loop (its backend says so) rather than in a worker thread."""
        return registry.runs_inline(served.model.platform)

    def infer_now(
        self, served: ServedModel, inputs: Mapping[str, np.ndarray], requested: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run one inference in the calling thread and record it in the statistics."""
        started = time.perf_counter_ns()
        try:
            outputs = served.model.infer(inputs, requested)
        except BaseException:
            self.stats.record(served.name, served.version, time.perf_counter_ns() - started, False)
            raise
        self.stats.record(served.name, served.version, time.perf_counter_ns() - started, True)
        return outputs

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
