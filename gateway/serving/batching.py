"""Dynamic batching with Triton's semantics: concurrent requests to one model run as one batch.

A `BatchingModel` wraps any loaded model behind the same `infer(inputs, requested)` interface (so it composes
with any backend, in-process or isolated). Requests whose inputs have the same datatypes and the same shape
beyond the batch (first) dimension, asking for the same outputs, are concatenated along axis 0 up to
`max_batch_size` rows and run as one call. A batch is dispatched when it is full, when it reaches one of the
`preferred_batch_sizes`, or when its oldest request has waited `max_queue_delay_us`; its outputs are split back
exactly per request. A failing batch fails each of its requests with the same typed error. Each request is
validated against the model before it is queued, so one bad request never fails the others. The queue is
bounded: beyond `max_queue_size` waiting requests a call is refused with Overloaded (RESOURCE_EXHAUSTED).

Only models whose every input and output has a dynamic leading dimension are batchable: a batch of N rows
must give N rows back. Batching assumes rows are independent (true of an MLP or a CNN, false of a model that
normalizes across its batch): that is why it is opt-in per model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.backends.base import LoadedModel, TensorSpec
from gateway.backends.validation import validate_inputs, validate_outputs
from gateway.errors import ConfigError, Overloaded, SealgateError, Unavailable

log = logging.getLogger(__name__)

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
QUEUE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
MAX_BATCH_SIZE_LIMIT = 1 << 16
CLOSE_WAIT_S = 10.0

Result = tuple[dict[str, np.ndarray], int, int]  # outputs, when the batch began (perf_counter_ns), its run in ns


@dataclass(frozen=True)
class BatchPolicy:
    """Triton's dynamic-batcher knobs for one model, plus the bound on waiting requests."""

    max_batch_size: int = 32  # rows in one batch; a request with more rows runs alone
    max_queue_delay_us: int = 500  # the longest the oldest request waits for a fuller batch
    preferred_batch_sizes: tuple[int, ...] = ()  # dispatch at once when a batch of one of these sizes can be formed
    max_queue_size: int = 1024  # requests waiting; beyond: Overloaded

    def check(self, where: str = "[batching]") -> BatchPolicy:
        """Refuse values that cannot work, naming the key; returns self."""
        if not 1 <= self.max_batch_size <= MAX_BATCH_SIZE_LIMIT:
            raise ConfigError(f"{where} max_batch_size must be between 1 and {MAX_BATCH_SIZE_LIMIT}")
        if not 0 <= self.max_queue_delay_us <= 10_000_000:
            raise ConfigError(f"{where} max_queue_delay_us must be between 0 and 10000000 (10 s)")
        for size in self.preferred_batch_sizes:
            if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= self.max_batch_size:
                raise ConfigError(f"{where} preferred_batch_sizes must be integers between 1 and max_batch_size")
        if self.max_queue_size < 1:
            raise ConfigError(f"{where} max_queue_size must be >= 1")
        return self


def batchable(model: LoadedModel) -> bool:
    """Whether every input and output of `model` has a known rank and a dynamic leading dimension."""
    tensors = (*model.inputs, *model.outputs)
    return bool(model.inputs) and all(t.rank_known and t.shape and t.shape[0] == -1 for t in tensors)


class BatchStats:
    """Batch sizes (rows per executed batch) and queue times (per request) by model; a prometheus collector.

    Labels are model names of batched models only: models the operator opted in and the manager loaded.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sizes: dict[str, list[float]] = {}
        self._queue: dict[str, list[float]] = {}

    @staticmethod
    def _add(table: dict[str, list[float]], bounds: Sequence[float], model: str, value: float, n: int = 1) -> None:
        hist = table.get(model)
        if hist is None:
            hist = table[model] = [0.0] * (len(bounds) + 2)  # per-bucket counts (+Inf last), then the sum
        hist[bisect_left(bounds, value)] += n
        hist[-1] += value * n

    def observe(self, model: str, rows: int, queue_seconds: Sequence[float]) -> None:
        """Count one executed batch of `rows` rows and the queue time of each of its requests."""
        with self._lock:
            self._add(self._sizes, BATCH_SIZE_BUCKETS, model, rows)
            for seconds in queue_seconds:
                self._add(self._queue, QUEUE_BUCKETS, model, seconds)

    def batch_sizes(self, model: str) -> dict[float, int]:
        """Executed batches of `model` by their upper bucket bound (rows), for tests and the bench."""
        with self._lock:
            hist = list(self._sizes.get(model, ()))
        bounds = [*map(float, BATCH_SIZE_BUCKETS), float("inf")]
        return {bound: int(count) for bound, count in zip(bounds, hist[:-1], strict=False) if count}

    def collect(self) -> Iterator[Any]:
        """The histograms as metric families (called by the registry at each scrape)."""
        from prometheus_client.metrics_core import HistogramMetricFamily

        with self._lock:
            tables = [(k, list(v)) for k, v in self._sizes.items()], [(k, list(v)) for k, v in self._queue.items()]
        specs = (
            ("sealgate_batch_size", "Rows per executed dynamic batch, by model.", BATCH_SIZE_BUCKETS),
            ("sealgate_batch_queue_seconds", "Time a request waited in the dynamic batcher, by model.", QUEUE_BUCKETS),
        )
        for (name, doc, bounds), rows in zip(specs, tables, strict=True):
            family = HistogramMetricFamily(name, doc, labels=("model",))
            labels = [repr(float(b)) for b in bounds] + ["+Inf"]
            for model, counts in rows:
                running, cumulative = 0.0, []
                for label, n in zip(labels, counts[:-1], strict=True):
                    running += n
                    cumulative.append((label, running))
                family.add_metric([model], cumulative, sum_value=counts[-1])
            yield family


@dataclass(eq=False)
class _Request:
    """One queued request: validated inputs, its group key, its row count and its future."""

    inputs: Mapping[str, np.ndarray]
    outputs: tuple[str, ...]
    rows: int
    key: tuple[Any, ...] | None  # None: runs alone (too many rows, or inputs disagree on the batch size)
    queued_ns: int
    future: concurrent.futures.Future[Result] = field(default_factory=concurrent.futures.Future)


def _copy_error(exc: BaseException) -> BaseException:
    """A fresh instance of a typed error for each request of a failed batch (tracebacks stay apart)."""
    if isinstance(exc, SealgateError):
        try:
            return type(exc)(*exc.args)
        except Exception:  # an error class with another constructor: share the instance
            return exc
    return exc


class BatchingModel:
    """A loaded model behind a dynamic batcher; `infer` blocks its thread, `infer_async` awaits on a loop."""

    def __init__(self, name: str, inner: LoadedModel, policy: BatchPolicy, stats: BatchStats | None = None) -> None:
        """Batch calls to `inner` (a model named `name`) by `policy`; one scheduler thread runs the batches."""
        self.name = name
        self.inner = inner
        self.policy = policy.check()
        self.platform: str = inner.platform
        self.inputs: tuple[TensorSpec, ...] = tuple(inner.inputs)
        self.outputs: tuple[TensorSpec, ...] = tuple(inner.outputs)
        self._specs = {spec.name: spec for spec in self.inputs}
        self._stats = stats if stats is not None else BatchStats()
        self._delay_ns = policy.max_queue_delay_us * 1000
        self._preferred = frozenset(policy.preferred_batch_sizes)
        self._queue: list[_Request] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"sealgate-batcher-{name}", daemon=True)
        self._thread.start()

    def __getattr__(self, attr: str) -> Any:
        """Anything else a backend's model offers (providers, ...) comes from the wrapped model."""
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    # --- calls ----------------------------------------------------------------------------------
    def submit(
        self, inputs: Mapping[str, np.ndarray], requested: Sequence[str] | None = None
    ) -> concurrent.futures.Future[Result]:
        """Validate and queue one request; its future gives (outputs, batch start ns, batch run ns)."""
        validate_inputs(self.inputs, inputs, self._specs)
        names = validate_outputs(self.outputs, requested)
        sizes = {value.shape[0] for value in inputs.values()}
        rows = next(iter(sizes))
        key: tuple[Any, ...] | None = None
        if len(sizes) == 1 and 0 < rows < self.policy.max_batch_size:
            key = (names, *((n, v.dtype.str, v.shape[1:]) for n, v in sorted(inputs.items())))
        request = _Request(inputs, names, rows, key, time.perf_counter_ns())
        with self._cond:
            if self._closed:
                raise Unavailable("model is closed")
            if len(self._queue) >= self.policy.max_queue_size:
                raise Overloaded(f"the batch queue of model {self.name!r} is full ({self.policy.max_queue_size})")
            self._queue.append(request)
            self._cond.notify()
        return request.future

    def infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run one request as part of a batch, blocking this thread until its batch ran."""
        return self.submit(inputs, outputs).result()[0]

    async def infer_async(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> Result:
        """Run one request as part of a batch without holding a thread; (outputs, batch start ns, run ns)."""
        return await asyncio.wrap_future(self.submit(inputs, outputs))

    def close(self) -> None:
        """Run what is queued, stop the scheduler, then close the wrapped model; later calls: Unavailable."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(CLOSE_WAIT_S)
        self.inner.close()

    # --- scheduler ------------------------------------------------------------------------------
    def _take(self) -> list[_Request] | None:
        """Under the lock: the next batch to run, or None if the head may still wait; removes it from the queue."""
        queue = self._queue
        head = queue[0]
        if head.key is None:
            del queue[0]
            return [head]
        limit = self.policy.max_batch_size
        picked: list[int] = []
        rows = 0
        full = False
        preferred_at = 0  # the longest prefix whose rows are a preferred size
        for index, request in enumerate(queue):
            if request.key != head.key:
                continue
            if rows + request.rows > limit:
                full = True
                break
            picked.append(index)
            rows += request.rows
            if rows in self._preferred:
                preferred_at = len(picked)
            if rows == limit:
                full = True
                break
        if not full and not self._closed:
            if preferred_at:
                picked = picked[:preferred_at]
            elif time.perf_counter_ns() - head.queued_ns < self._delay_ns:
                return None
        chosen = set(picked)
        batch = [queue[i] for i in picked]
        self._queue = [request for i, request in enumerate(queue) if i not in chosen]
        return batch

    def _loop(self) -> None:
        """Form batches and run them, one at a time, until closed and drained."""
        while True:
            with self._cond:
                while True:
                    if not self._queue:
                        if self._closed:
                            return
                        self._cond.wait()
                        continue
                    batch = self._take()
                    if batch is not None:
                        break
                    waited = time.perf_counter_ns() - self._queue[0].queued_ns
                    self._cond.wait(max(0.0, (self._delay_ns - waited) / 1e9))
            self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        """Run one batch and hand each request its rows, or the batch's error."""
        began = time.perf_counter_ns()
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            if len(live) == 1:
                outputs = self.inner.infer(live[0].inputs, live[0].outputs)
                parts = [outputs]
            else:
                joined = {name: np.concatenate([r.inputs[name] for r in live]) for name in live[0].inputs}
                outputs = self.inner.infer(joined, live[0].outputs)
                parts = self._split(outputs, [r.rows for r in live])
        except BaseException as exc:  # every request of the batch gets the batch's typed error
            for request in live:
                request.future.set_exception(_copy_error(exc))
            if not isinstance(exc, Exception):
                raise
            return
        ran = time.perf_counter_ns() - began
        self._stats.observe(self.name, sum(r.rows for r in live), [(began - r.queued_ns) / 1e9 for r in live])
        for request, part in zip(live, parts, strict=True):
            request.future.set_result((part, began, ran))

    @staticmethod
    def _split(outputs: Mapping[str, np.ndarray], rows: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """Each request's rows of every output; a model that does not give one row per input row is an error."""
        total = sum(rows)
        offsets = np.cumsum(rows)[:-1]
        parts: list[dict[str, np.ndarray]] = [{} for _ in rows]
        for name, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != total:
                raise RuntimeError(
                    f"output {name!r} has {value.shape[0] if value.ndim else 0} rows for a batch of {total}: "
                    "this model cannot be batched (take it out of [batching] models)"
                )
            for part, piece in zip(parts, np.split(value, offsets), strict=True):
                part[name] = piece
        return parts


@dataclass(frozen=True)
class Batching:
    """Which models are batched and how: wraps a freshly loaded model when batching applies to it."""

    policy: BatchPolicy
    models: frozenset[str] = frozenset()  # empty: every batchable model
    stats: BatchStats = field(default_factory=BatchStats)

    @classmethod
    def of(cls, section: Any) -> Batching:
        """Batching as a config's `[batching]` section (gateway.config.BatchingSection) sets it."""
        policy = BatchPolicy(
            section.max_batch_size,
            section.max_queue_delay_us,
            tuple(section.preferred_batch_sizes),
            section.max_queue_size,
        )
        return cls(policy.check(), frozenset(section.models))

    def wrap(self, name: str, model: LoadedModel) -> LoadedModel:
        """`model` behind a dynamic batcher if it is opted in and batchable, else `model` itself."""
        if self.models and name not in self.models:
            return model
        if not batchable(model):
            if self.models:
                log.warning("model %s is listed in [batching] models but has no dynamic leading dimension", name)
            return model
        return BatchingModel(name, model, self.policy, self.stats)
