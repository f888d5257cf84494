"""The explainer of served models: checks a request, rations it, then computes it off the event loop.

Order of work: the request's own bounds (method, nsamples, instance count: INVALID_ARGUMENT), then the
model (one floating-point input with a batch dimension, the output and column explained) and its reference
(FAILED_PRECONDITION without one), then one of the `max_concurrent` places and the caller's rate (both
RESOURCE_EXHAUSTED), and only then the model runs, in a worker thread, in bounded chunks.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.config import ExplainConfig
from gateway.errors import InvalidInput, NotExplainable, clip
from gateway.explain.limits import RateLimiter, Running
from gateway.explain.methods import Attribution, BatchFn, kernel_shap, occlusion
from gateway.explain.reference import load_reference
from gateway.serving.status import ServedModel

KERNEL_SHAP = "kernel_shap"
OCCLUSION = "occlusion"
METHODS = (KERNEL_SHAP, OCCLUSION)
FLOAT_INPUTS = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
CHUNK_BYTES = 256 << 10  # input bytes per model call: big batches are split (a worker's buffer is bounded)
CACHED_REFERENCES = 16
MAX_SYNTH_VALUES = 8 << 20  # KernelSHAP holds nsamples x background rows x features float64s (64 MiB here)


@dataclass(frozen=True)
class Query:
    """What a caller asks: instances (each any nesting of numbers), method and nsamples ('' / 0: the
    defaults), the output tensor ('' : the first) and column (None: the instance's highest-scoring one)."""

    instances: Sequence[Any]
    method: str = ""
    nsamples: int = 0
    output: str = ""
    target: int | None = None


@dataclass(frozen=True)
class Result:
    """An answer: the method used, the output explained, one instance's shape, the attributions, model rows run."""

    method: str
    output: str
    feature_shape: tuple[int, ...]
    explanations: tuple[Attribution, ...]
    evaluations: int


@dataclass(frozen=True)
class _Plan:
    """A checked request, ready to compute."""

    served: ServedModel
    method: str
    nsamples: int
    input_name: str
    dtype: Any
    output: str
    feature_shape: tuple[int, ...]
    rows: np.ndarray  # [instances, M] float64
    background: np.ndarray  # [n, M] float64
    target: int | None


class Explainer:
    """Explains served models under `[explain]`'s bounds; `computed` and `evaluations` count what it did."""

    def __init__(self, config: ExplainConfig) -> None:
        self.config = config
        self.limiter = RateLimiter(config.max_per_minute)
        self.running = Running(config.max_concurrent)
        self.computed = 0  # instances explained
        self.evaluations = 0  # model rows run for explanations
        self._references: OrderedDict[tuple[str, int, float], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    async def explain(self, served: ServedModel, query: Query, subject: str) -> Result:
        """Check `query` against the bounds and `served`, charge `subject`'s rate, compute in a worker thread."""
        plan = self.plan(served, query)
        self.running.acquire()  # first: a call refused for lack of a place spends none of the rate
        try:
            self.limiter.take(subject, len(plan.rows))
        except BaseException:
            self.running.release()
            raise
        work = asyncio.ensure_future(asyncio.to_thread(self._compute_then_release, plan))
        work.add_done_callback(_retrieve)
        return await asyncio.shield(work)  # a cancelled call leaves the computation to end (and free its place)

    def _compute_then_release(self, plan: _Plan) -> Result:
        """`compute`, then give back the place `explain` took, however it ends."""
        try:
            return self.compute(plan)
        finally:
            self.running.release()

    # --- checks -------------------------------------------------------------------------------------------
    def plan(self, served: ServedModel, query: Query) -> _Plan:
        """Everything about a request that can be refused, checked before any model run."""
        cfg = self.config
        method = query.method or cfg.method
        if method not in METHODS:
            raise InvalidInput(f"unknown explanation method {clip(method, 64)!r}: use {' or '.join(METHODS)}")
        nsamples = query.nsamples or cfg.default_nsamples
        if not 1 <= nsamples <= cfg.max_nsamples:
            raise InvalidInput(f"nsamples {nsamples} is out of range: 1 to {cfg.max_nsamples} ([explain] max_nsamples)")
        count = len(query.instances)
        if not 1 <= count <= cfg.max_instances:
            raise InvalidInput(f"{count} instances: send 1 to {cfg.max_instances} ([explain] max_instances)")
        model = served.model
        if len(model.inputs) != 1 or model.inputs[0].datatype not in FLOAT_INPUTS:
            raise NotExplainable("explanations need a model with one floating-point input (FP16, FP32 or FP64)")
        spec = model.inputs[0]
        if spec.rank_known and (len(spec.shape) < 2 or spec.shape[0] != -1):
            raise NotExplainable(f"input {spec.name!r} has no batch dimension: shape {list(spec.shape)}")
        background = self._reference(served)
        feature_shape = tuple(int(d) for d in background.shape[1:])
        wanted = spec.shape[1:] if spec.rank_known else feature_shape
        fits = len(wanted) == len(feature_shape)
        fits = fits and all(w in (-1, f) for w, f in zip(wanted, feature_shape, strict=True))
        if not fits:
            raise NotExplainable(
                f"reference.npz rows are {list(feature_shape)}, the input {spec.name!r} takes {list(wanted)}"
            )
        output = query.output or model.outputs[0].name
        found = [t for t in model.outputs if t.name == output]
        if not found or found[0].datatype == "BYTES":
            raise InvalidInput(f"output {clip(output, 64)!r} is not a numeric output of the model")
        rows = np.stack([_instance(value, feature_shape, i) for i, value in enumerate(query.instances)])
        flat = background.reshape(len(background), -1)
        features = flat.shape[1]
        coalitions = min(nsamples, 2**features - 2) if features < 31 else nsamples  # shap enumerates small M
        if method == KERNEL_SHAP and coalitions * len(flat) * features > MAX_SYNTH_VALUES:
            most = MAX_SYNTH_VALUES // (len(flat) * features)
            raise InvalidInput(
                f"nsamples {nsamples} x {len(flat)} reference rows x {features} features is over the explainer's "
                f"memory bound: use nsamples <= {most} (or occlusion)"
            )
        return _Plan(
            served, method, nsamples, spec.name, FLOAT_INPUTS[spec.datatype], output, feature_shape,
            rows.reshape(count, -1), flat, query.target,
        )  # fmt: skip

    def _reference(self, served: ServedModel) -> np.ndarray:
        """The model version's background rows, parsed once per loaded version (a small bounded cache)."""
        key = (served.name, served.version, served.loaded_at)
        with self._lock:
            found = self._references.get(key)
            if found is not None:
                self._references.move_to_end(key)
                return found
        rows = load_reference(served.kept)
        with self._lock:
            self._references[key] = rows
            while len(self._references) > CACHED_REFERENCES:
                self._references.popitem(last=False)
        return rows

    # --- computing (in a worker thread) --------------------------------------------------------------------
    def compute(self, plan: _Plan) -> Result:
        """Explain every instance of a checked plan; blocking, so run off the event loop."""
        run = _Runner(plan)
        explanations = []
        for x in plan.rows:
            scores = run.all_columns(x[None, :])[0]
            target = plan.target if plan.target is not None else (int(np.argmax(scores)) if len(scores) > 1 else 0)
            if not 0 <= target < len(scores):
                raise InvalidInput(f"target {target} is out of range: output {plan.output!r} has {len(scores)} columns")
            fn = run.column(target)
            if plan.method == KERNEL_SHAP:
                base, values = kernel_shap(fn, x, plan.background, plan.nsamples)
            else:
                base, values = occlusion(fn, x, plan.background)
            output = float(scores[target])
            if not (np.isfinite(values).all() and np.isfinite([base, output]).all()):
                raise InvalidInput("the model's output is not finite around this instance: nothing to explain")
            explanations.append(Attribution(base, values, output, target))
        with self._lock:
            self.computed += len(explanations)
            self.evaluations += run.rows
        return Result(plan.method, plan.output, plan.feature_shape, tuple(explanations), run.rows)


class _Runner:
    """The served model as batch functions of flat float64 rows, run in chunks of at most CHUNK_BYTES."""

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        itemsize = np.dtype(plan.dtype).itemsize
        self.chunk = max(1, CHUNK_BYTES // (itemsize * max(1, plan.rows.shape[1])))
        self.rows = 0

    def all_columns(self, rows: np.ndarray) -> np.ndarray:
        """The explained output for `rows` [n, M], as [n, columns]."""
        plan = self.plan
        parts = []
        for start in range(0, len(rows), self.chunk):
            part = rows[start : start + self.chunk].astype(plan.dtype).reshape((-1, *plan.feature_shape))
            out = plan.served.model.infer({plan.input_name: part}, [plan.output])[plan.output]
            parts.append(np.asarray(out, dtype=np.float64).reshape(len(part), -1))
            self.rows += len(part)
        return np.concatenate(parts)

    def column(self, target: int) -> BatchFn:
        """A batch function giving column `target` of the output: what the methods explain."""

        def fn(rows: np.ndarray) -> np.ndarray:
            return self.all_columns(np.asarray(rows, dtype=np.float64))[:, target]

        return fn


def _retrieve(task: asyncio.Future[Result]) -> None:
    """Read the outcome of a computation whose caller may have gone, so it is never reported as unretrieved."""
    if not task.cancelled():
        task.exception()


def _instance(value: Any, feature_shape: tuple[int, ...], index: int) -> np.ndarray:
    """One instance as float64 of `feature_shape` (given flat or nested), finite; InvalidInput otherwise."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInput(f"instance {index}: not numbers of a regular shape") from None
    size = int(np.prod(feature_shape))
    if array.size != size or array.shape not in ((size,), feature_shape):
        raise InvalidInput(
            f"instance {index}: shape {list(array.shape)} does not fit the input: {list(feature_shape)} "
            f"(or {size} values flat)"
        )
    if not np.isfinite(array).all():
        raise InvalidInput(f"instance {index}: NaN or infinite values")
    return array.reshape(feature_shape)
