"""Dynamic batching with Triton's semantics: concurrent requests to one model run as one batch.

A `BatchingModel` wraps any loaded model behind the same `infer(inputs, requested)` interface (so it composes
with any backend, in-process or isolated). Requests whose inputs have the same datatypes and the same shape
beyond the batch (first) dimension, asking for the same outputs, are concatenated along axis 0 up to
`max_batch_size` rows and run as one call. A batch is dispatched when it is full, when it reaches one of the
`preferred_batch_sizes`, or when its oldest request has waited `max_queue_delay_us`; its outputs are split back
exactly per request. A failing batch fails each of its requests with the same typed error. Each request is
validated against the model before it is queued, so one bad request never fails the others. The queue is
bounded: beyond `max_queue_size` waiting requests a call is refused with Overloaded (RESOURCE_EXHAUSTED).

One departure from Triton, on by default (`idle_wait = false`): while a model's requests have not overlapped
for CALM_NS (200 ms), a request runs at once instead of waiting out the delay, since no other request is coming
to join it: one caller at a time pays no queue delay. The first overlap turns the wait back on, and under load
a long `max_queue_delay_us` then gathers each wave of concurrent calls into one batch.

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
CALM_NS = 200_000_000  # no request overlapping another this long: a model's lone requests run at once

Result = tuple[dict[str, np.ndarray], int, int]  # outputs, when the batch began (perf_counter_ns), its run in ns


@dataclass(frozen=True)
class BatchPolicy:
    """Triton's dynamic-batcher knobs for one model, plus the bound on waiting requests."""

    max_batch_size: int = 32  # rows in one batch; a request with more rows runs alone
    max_queue_delay_us: int = 500  # the longest the oldest request waits for a fuller batch
    preferred_batch_sizes: tuple[int, ...] = ()  # dispatch at once when a batch of one of these sizes can be formed
    max_queue_size: int = 1024  # requests waiting; beyond: Overloaded
    idle_wait: bool = False  # True: a lone request waits out the delay even when no other is coming (Triton)

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
    future: Any  # concurrent.futures.Future (threads) or asyncio.Future (the loop's path)


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
        self._running = 0  # batches the scheduler thread runs (0 or 1)
        # when a request last came while another of this model was queued or running (perf_counter_ns)
        self._overlap_ns = time.perf_counter_ns() - CALM_NS
        self._cond = threading.Condition()
        self._closed = False
        self._loops: dict[asyncio.AbstractEventLoop, _LoopBatcher] = {}  # the async path's queue per event loop
        self._draining = 0  # loops still running batches after close
        linger = getattr(inner, "linger", None)  # an isolated model: its worker stays awake through the delay
        if callable(linger) and policy.idle_wait:  # (otherwise a lone call is sent at once)
            linger(policy.max_queue_delay_us)
        self._thread = threading.Thread(target=self._loop, name=f"sealgate-batcher-{name}", daemon=True)
        self._thread.start()

    def __getattr__(self, attr: str) -> Any:
        """Anything else a backend's model offers (providers, ...) comes from the wrapped model."""
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    # --- calls ----------------------------------------------------------------------------------
    def _request(self, inputs: Mapping[str, np.ndarray], requested: Sequence[str] | None, future: Any) -> _Request:
        """One validated request with its group key (InvalidInput before anything is queued)."""
        validate_inputs(self.inputs, inputs, self._specs)
        names = validate_outputs(self.outputs, requested)
        sizes = {value.shape[0] for value in inputs.values()}
        rows = next(iter(sizes))
        key: tuple[Any, ...] | None = None
        if len(sizes) == 1 and 0 < rows < self.policy.max_batch_size:
            key = (names, *((n, v.dtype.str, v.shape[1:]) for n, v in sorted(inputs.items())))
        return _Request(inputs, names, rows, key, time.perf_counter_ns(), future)

    def submit(
        self, inputs: Mapping[str, np.ndarray], requested: Sequence[str] | None = None
    ) -> concurrent.futures.Future[Result]:
        """Validate and queue one request for the scheduler thread; its future gives (outputs, batch start ns,
        batch run ns)."""
        future: concurrent.futures.Future[Result] = concurrent.futures.Future()
        request = self._request(inputs, requested, future)
        with self._cond:
            if self._closed:
                raise Unavailable("model is closed")
            if len(self._queue) >= self.policy.max_queue_size:
                raise Overloaded(f"the batch queue of model {self.name!r} is full ({self.policy.max_queue_size})")
            if self._queue or self._running:
                self._overlap_ns = request.queued_ns
            self._queue.append(request)
            self._cond.notify()
        return future

    def infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run one request as part of a batch, blocking this thread until its batch ran."""
        return self.submit(inputs, outputs).result()[0]

    async def infer_async(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> Result:
        """Run one request as part of a batch formed on this event loop (no thread, no cross-thread wake-up per
        request); (outputs, batch start ns, run ns)."""
        loop = asyncio.get_running_loop()
        batcher = self._loops.get(loop)
        if batcher is None:
            with self._cond:
                if self._closed:
                    raise Unavailable("model is closed")
                batcher = self._loops.setdefault(loop, _LoopBatcher(self, loop))
        request = self._request(inputs, outputs, loop.create_future())
        if self._closed:
            raise Unavailable("model is closed")
        batcher.submit(request)
        result: Result = await request.future
        return result

    def close(self) -> None:
        """Run what is queued, stop the scheduler, then close the wrapped model (after the last batch any event
        loop still runs); later calls: Unavailable."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            loops = list(self._loops.values())
        if threading.current_thread() is not self._thread:
            self._thread.join(CLOSE_WAIT_S)
        busy = [batcher for batcher in loops if batcher.close()]
        with self._cond:
            self._draining = len(busy)
            if self._draining:
                return  # the last loop to drain closes the wrapped model
        self.inner.close()

    def _drained(self) -> None:
        """One event loop ran its last batch after close: the last one closes the wrapped model."""
        with self._cond:
            self._draining -= 1
            last = self._draining == 0
        if last:
            self.inner.close()

    # --- scheduler ------------------------------------------------------------------------------
    def _take(self) -> list[_Request] | None:
        """Under the lock: the next batch to run, or None if the head may still wait; removes it from the queue."""
        batch, self._queue = self._pick(self._queue, self._closed)
        return batch

    def _pick(
        self, queue: list[_Request], closing: bool, due: bool = False
    ) -> tuple[list[_Request] | None, list[_Request]]:
        """The next batch from `queue` by the policy (None if its head may still wait) and what stays queued;
        `due`: the head's delay is over (a loop timer said so), whatever this clock reads."""
        head = queue[0]
        if head.key is None:
            return [head], queue[1:]
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
        if not full and not closing:
            if preferred_at:
                picked = picked[:preferred_at]
            elif not due and self._may_wait(head):
                return None, queue
        if len(picked) == len(queue):
            return queue, []
        chosen = set(picked)
        return [queue[i] for i in picked], [request for i, request in enumerate(queue) if i not in chosen]

    def _may_wait(self, head: _Request) -> bool:
        """Whether the head may wait on for a fuller batch: its delay is not over, and either `idle_wait` or this
        model's requests overlapped within CALM_NS (one caller at a time: no other request is coming to join)."""
        now = time.perf_counter_ns()
        if now - head.queued_ns >= self._delay_ns:
            return False
        return self.policy.idle_wait or now - self._overlap_ns < CALM_NS

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
                        self._running = 1
                        break
                    waited = time.perf_counter_ns() - self._queue[0].queued_ns
                    self._cond.wait(max(0.0, (self._delay_ns - waited) / 1e9))
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._running = 0

    def _run(self, batch: list[_Request]) -> None:
        """Run one batch and hand each request its rows, or the batch's error."""
        began = time.perf_counter_ns()
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            parts = self._parts(live, self.inner.infer(*self._joined(live)))
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
    def _joined(live: Sequence[_Request]) -> tuple[Mapping[str, np.ndarray], tuple[str, ...]]:
        """One batch's inputs (each request's rows, in order, concatenated) and the outputs it asks for."""
        if len(live) == 1:
            return live[0].inputs, live[0].outputs
        return {name: np.concatenate([r.inputs[name] for r in live]) for name in live[0].inputs}, live[0].outputs

    def _parts(self, live: Sequence[_Request], outputs: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Each request's share of one batch's outputs."""
        if len(live) == 1:
            return [dict(outputs)]
        return self._split(outputs, [r.rows for r in live])

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


class _LoopBatcher:
    """The async path on one event loop: requests queue on the loop, batches form and run there (a worker
    process's call is awaited; an in-process model runs in a thread, one hop per batch), and each request's
    future is settled on the loop. Up to the wrapped model's `parallel_calls` batches run at once (an isolated
    model's worker slots); requests arriving meanwhile form the next batch."""

    def __init__(self, owner: BatchingModel, loop: asyncio.AbstractEventLoop) -> None:
        self.owner = owner
        self.loop = loop
        self.queue: list[_Request] = []
        self.running = 0
        self.limit = max(1, int(getattr(owner.inner, "parallel_calls", 1)))
        self.awaitable = getattr(owner.inner, "infer_async", None)  # an isolated model: no thread per batch
        self.loaded = getattr(owner.inner, "loaded", None)
        self.timer: asyncio.TimerHandle | None = None  # armed while the head waits out its delay
        # uvloop's timers count whole milliseconds, rounded to the nearest: a 0.5 ms delay would fire at once
        # and batch nothing; armed for whole milliseconds, rounded up, it never fires before the delay is over
        self.tick_ns = 1_000_000 if type(loop).__module__.startswith("uvloop") else 1
        self.closing = False
        self.tasks: set[asyncio.Task[None]] = set()  # running batches (the loop keeps only weak references)

    def submit(self, request: _Request) -> None:
        """Queue one request (Overloaded past the bound) and dispatch what can run now."""
        if len(self.queue) >= self.owner.policy.max_queue_size:
            raise Overloaded(
                f"the batch queue of model {self.owner.name!r} is full ({self.owner.policy.max_queue_size})"
            )
        if self.queue or self.running:
            self.owner._overlap_ns = request.queued_ns
        self.queue.append(request)
        if self.running < self.limit:
            self.pump()

    def _expired(self) -> None:
        """The head's delay is over by the loop's timer: its batch goes now. A loop's clock and this one may
        disagree by a tick; checking the clock again here could re-arm a zero timer and spin the loop (as it
        did under uvloop, whose timers round to whole milliseconds) until the delay had passed."""
        self.timer = None
        self.pump(due=True)

    def pump(self, due: bool = False) -> None:
        """Dispatch batches while a run slot is free; if the head may still wait, wake up when its delay ends."""
        while self.queue and self.running < self.limit:
            batch, self.queue = self.owner._pick(self.queue, self.closing, due)
            due = False
            if batch is None:  # wake up when the head's delay ends
                if self.timer is None:
                    left_ns = max(self.queue[0].queued_ns + self.owner._delay_ns - time.perf_counter_ns(), 0)
                    left_ns = -(-left_ns // self.tick_ns) * self.tick_ns
                    self.timer = self.loop.call_later(left_ns / 1e9, self._expired)
                return
            live = [r for r in batch if not r.future.done()]  # callers that went away are dropped
            if (len(live) > 1 or self.queue) and self.loaded is not None:
                self.loaded()  # concurrent requests: an isolated model's worker must not spin between calls
            if live:
                self.running += 1
                task = self.loop.create_task(self.run(live))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        if self.closing and not self.queue and not self.running:
            self.closing = False
            self.owner._drained()

    async def run(self, live: list[_Request]) -> None:
        """Run one batch and settle each request with its rows, or with the batch's error."""
        owner = self.owner
        began = time.perf_counter_ns()
        ran = -1
        try:
            joined, names = owner._joined(live)
            if self.awaitable is not None:  # an isolated model says when its run began and how long it took
                outputs, began, ran = await self.awaitable(joined, names)
            else:
                outputs = await asyncio.to_thread(owner.inner.infer, joined, names)
            parts = owner._parts(live, outputs)
        except Exception as exc:  # every request of the batch gets the batch's typed error
            for request in live:
                if not request.future.done():
                    request.future.set_exception(_copy_error(exc))
            return
        finally:
            self.running -= 1
            self.loop.call_soon(self.pump)
        if ran < 0:
            ran = time.perf_counter_ns() - began
        owner._stats.observe(owner.name, sum(r.rows for r in live), [(began - r.queued_ns) / 1e9 for r in live])
        for request, part in zip(live, parts, strict=True):
            if not request.future.done():
                request.future.set_result((part, began, ran))

    def close(self) -> bool:
        """From any thread, at close: run what is queued at once; True while this loop still has batches to run
        (it then calls the model's `_drained` when done)."""
        if not self.queue and not self.running:
            return False
        try:
            self.loop.call_soon_threadsafe(self._close_now)
        except RuntimeError:  # the loop is closed: its requests can never be answered
            return False
        return True

    def _close_now(self) -> None:
        self.closing = True
        self.pump()


@dataclass(frozen=True)
class Batching:
    """Which models are batched and how: wraps a freshly loaded model when batching applies to it."""

    policy: BatchPolicy
    models: frozenset[str] = frozenset()  # empty: every batchable model
    stats: BatchStats = field(default_factory=BatchStats)
    per_model: Mapping[str, BatchPolicy | None] = field(default_factory=dict)  # None: that model is not batched

    @classmethod
    def of(cls, section: Any) -> Batching:
        """Batching as a config's `[batching]` section (gateway.config.BatchingSection) sets it, with each
        [batching.per_model.NAME] table's policy (a model with a table is opted in)."""
        per_model = {}
        for name in section.per_model:
            own = section.for_model(name)
            per_model[name] = _policy(own).check(f"[batching.per_model.{name}]") if own.enabled else None
        models = frozenset(section.models) | frozenset(section.per_model) if section.models else frozenset()
        return cls(_policy(section).check(), models, per_model=per_model)

    def policy_of(self, name: str) -> BatchPolicy | None:
        """The policy model `name` is batched by, or None if it is not opted in."""
        if name in self.per_model:
            return self.per_model[name]
        return self.policy if not self.models or name in self.models else None

    def wrap(self, name: str, model: LoadedModel) -> LoadedModel:
        """`model` behind a dynamic batcher if it is opted in and batchable, else `model` itself."""
        policy = self.policy_of(name)
        if policy is None:
            return model
        if not batchable(model):
            if self.models or name in self.per_model:
                log.warning("model %s is listed in [batching] but has no dynamic leading dimension", name)
            return model
        return BatchingModel(name, model, policy, self.stats)


def _policy(section: Any) -> BatchPolicy:
    """The BatchPolicy of a [batching] section (or one model's settings)."""
    return BatchPolicy(
        section.max_batch_size,
        section.max_queue_delay_us,
        tuple(section.preferred_batch_sizes),
        section.max_queue_size,
        section.idle_wait,
    )
