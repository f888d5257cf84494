"""The dynamic batcher over real ONNX Runtime models: exact splitting, dispatch rules, errors, bounds."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper

from gateway.backends import BackendConfig, LoadedModel, load_model
from gateway.errors import InvalidInput, Overloaded, Unavailable
from gateway.serving.batching import Batching, BatchingModel, BatchPolicy, batchable
from tests.models import ONNX_OPSET, make_onnx_gather, make_onnx_mlp

ONE_THREAD = BackendConfig(intra_op_threads=1)


@pytest.fixture(scope="module")
def mlp() -> Iterator[LoadedModel]:
    model = load_model(make_onnx_mlp(16, (32,), 3, seed=2), ONE_THREAD)
    yield model
    model.close()


def _batcher(inner: LoadedModel, **policy: Any) -> BatchingModel:
    """A batcher that never closes `inner` (shared by the module's tests), by Triton's rules (`idle_wait`: a
    lone request waits its delay, so requests submitted one after another batch) unless `policy` says not."""

    class Keep:
        platform, inputs, outputs = inner.platform, inner.inputs, inner.outputs
        infer = staticmethod(inner.infer)

        def close(self) -> None:
            pass

    return BatchingModel("m", Keep(), BatchPolicy(**{"idle_wait": True, **policy}))


def _rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def test_concurrent_requests_are_batched_and_split_back_byte_identical(mlp: LoadedModel) -> None:
    batcher = _batcher(mlp, max_batch_size=16, max_queue_delay_us=20_000)
    inputs = [_rows(1 + i % 4, i) for i in range(24)]
    try:
        with ThreadPoolExecutor(12) as pool:
            got = list(pool.map(lambda x: batcher.infer({"input": x}), inputs))
    finally:
        batcher.close()
    for x, out in zip(inputs, got, strict=True):
        assert out["output"].tobytes() == mlp.infer({"input": x})["output"].tobytes()
        assert out["output"].shape == (x.shape[0], 3)
    sizes = batcher._stats.batch_sizes("m")
    assert sum(sizes.values()) < len(inputs)  # requests were merged
    assert max(sizes) > 4  # a batch larger than any single request ran


def test_a_lone_request_waits_at_most_the_queue_delay(mlp: LoadedModel) -> None:
    batcher = _batcher(mlp, max_batch_size=8, max_queue_delay_us=30_000)
    try:
        started = time.perf_counter_ns()
        _, began, _ = batcher.submit({"input": _rows(1, 0)}).result(5)
    finally:
        batcher.close()
    waited = (began - started) / 1e6
    assert 25 <= waited < 250, waited


def _waited_ms(batcher: BatchingModel, seed: int) -> float:
    """Milliseconds one request (submitted alone, awaited) spent in the queue before its batch began."""
    started = time.perf_counter_ns()
    _, began, _ = batcher.submit({"input": _rows(1, seed)}).result(5)
    return (began - started) / 1e6


@pytest.mark.parametrize("path", ["thread", "loop"])
def test_a_calm_models_lone_requests_run_at_once_and_wait_again_once_requests_overlap(
    mlp: LoadedModel, path: str
) -> None:
    """The default (`idle_wait = false`): one caller at a time pays no queue delay, since nothing is coming to
    join its request; the first overlap makes the model wait for fuller batches again, for CALM_NS."""
    batcher = _batcher(mlp, max_batch_size=8, max_queue_delay_us=30_000, idle_wait=False)

    async def lone(seed: int) -> float:
        started = time.perf_counter_ns()
        _, began, _ = await batcher.infer_async({"input": _rows(1, seed)})
        return (began - started) / 1e6

    async def on_loop() -> tuple[list[float], list[Any], float]:
        calm = [await lone(i) for i in range(5)]
        pair = await asyncio.gather(*(batcher.infer_async({"input": _rows(1, i)}) for i in (5, 6)))
        return calm, [began for _, began, _ in pair], await lone(7)

    started = time.perf_counter_ns()
    try:
        if path == "loop":
            calm, pair, after = asyncio.run(on_loop())
        else:
            calm = [_waited_ms(batcher, i) for i in range(5)]
            with batcher._cond:  # both queued before the scheduler thread looks: they overlap
                futures = [batcher.submit({"input": _rows(1, i)}) for i in (5, 6)]
            pair = [f.result(5)[1] for f in futures]
            after = _waited_ms(batcher, 7)
    finally:
        batcher.close()
    assert max(calm) < 10, calm  # no 30 ms delay while calls came one at a time
    assert (max(pair) - started) / 1e6 >= 25  # the second of an overlapping pair waited for company
    assert after >= 25, after  # within CALM_NS of an overlap, a lone request waits for company again


def test_a_full_or_preferred_batch_goes_at_once(mlp: LoadedModel) -> None:
    for policy in ({"max_batch_size": 4}, {"max_batch_size": 8, "preferred_batch_sizes": (4,)}):
        batcher = _batcher(mlp, max_queue_delay_us=5_000_000, **policy)
        try:
            started = time.monotonic()
            futures = [batcher.submit({"input": _rows(1, i)}) for i in range(4)]
            results = [f.result(3) for f in futures]
        finally:
            batcher.close()
        assert time.monotonic() - started < 2.0
        assert len({began for _, began, _ in results}) == 1  # one batch


def test_a_failing_batch_fails_each_request_with_the_same_typed_error() -> None:
    gather = load_model(make_onnx_gather(4))
    batcher = BatchingModel("g", gather, BatchPolicy(max_batch_size=8, max_queue_delay_us=200_000, idle_wait=True))
    good = batcher.submit({"index": np.array([1, 2], dtype=np.int64)})
    bad = batcher.submit({"index": np.array([99], dtype=np.int64)})  # passes the spec, fails in ORT
    errors = []
    for future in (good, bad):
        with pytest.raises(InvalidInput) as caught:
            future.result(5)
        errors.append(caught.value)
    assert errors[0] is not errors[1] and str(errors[0]) == str(errors[1])
    alone = batcher.infer({"index": np.array([3], dtype=np.int64)})  # the next batch is unaffected
    assert alone["value"].tolist() == [3.0]
    batcher.close()
    with pytest.raises(Unavailable):
        batcher.infer({"index": np.array([0], dtype=np.int64)})


def test_a_bad_request_is_refused_alone_before_it_is_queued(mlp: LoadedModel) -> None:
    batcher = _batcher(mlp, max_batch_size=8, max_queue_delay_us=100_000)
    try:
        good = batcher.submit({"input": _rows(2, 1)})
        with pytest.raises(InvalidInput, match="dimension 1 must be 16"):
            batcher.submit({"input": np.zeros((1, 5), dtype=np.float32)})
        with pytest.raises(InvalidInput, match="unknown output"):
            batcher.submit({"input": _rows(1, 2)}, ["nope"])
        assert good.result(5)[0]["output"].shape == (2, 3)
    finally:
        batcher.close()


def test_the_queue_is_bounded(mlp: LoadedModel) -> None:
    batcher = _batcher(mlp, max_batch_size=64, max_queue_delay_us=2_000_000, max_queue_size=2)
    try:
        first = [batcher.submit({"input": _rows(1, i)}) for i in range(2)]
        with pytest.raises(Overloaded, match="queue"):
            batcher.submit({"input": _rows(1, 9)})
    finally:
        batcher.close()  # close runs what is queued
    assert all(f.result(5)[0]["output"].shape == (1, 3) for f in first)


def test_groups_by_shape_and_runs_oversized_requests_alone() -> None:
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "k"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "k"])],
    )
    files = {
        "model.onnx": helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)]).SerializeToString()
    }
    batcher = BatchingModel(
        "r", load_model(files), BatchPolicy(max_batch_size=4, max_queue_delay_us=50_000, idle_wait=True)
    )
    shapes = [(1, 3), (2, 5), (1, 3), (9, 3), (1, 5)]
    xs = [np.random.default_rng(i).standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)]
    barrier = threading.Barrier(len(xs))

    def call(x: np.ndarray) -> np.ndarray:
        barrier.wait()
        return batcher.infer({"x": x})["y"]

    with ThreadPoolExecutor(len(xs)) as pool:
        got = list(pool.map(call, xs))
    batcher.close()
    for x, y in zip(xs, got, strict=True):
        assert y.tobytes() == np.maximum(x, 0).tobytes()


def test_only_models_with_a_dynamic_leading_dimension_are_wrapped(mlp: LoadedModel) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    files = {
        "model.onnx": helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)]).SerializeToString()
    }
    fixed = load_model(files)
    assert batchable(mlp) and not batchable(fixed)
    batching = Batching(BatchPolicy(), frozenset({"mlp"}))
    assert batching.wrap("fixed", fixed) is fixed
    assert batching.wrap("other", mlp) is mlp  # not opted in
    wrapped = batching.wrap("mlp", mlp)
    assert isinstance(wrapped, BatchingModel) and isinstance(wrapped, LoadedModel)
    assert wrapped.platform == mlp.platform and wrapped.inputs == mlp.inputs
    wrapped._closed = True  # stop its scheduler without closing the shared model
    with wrapped._cond:
        wrapped._cond.notify_all()
    fixed.close()


def test_batching_section_is_validated_and_off_by_default() -> None:
    from gateway.config import Config
    from gateway.errors import ConfigError

    assert Config().batching.enabled is False
    good = Config().replaced(batching={"enabled": True, "models": ["mlp"], "preferred_batch_sizes": [8, 16]})
    assert Batching.of(good.batching).models == frozenset({"mlp"})
    for bad in ({"preferred_batch_sizes": [64]}, {"max_batch_size": 0}, {"max_queue_delay_us": -1}, {"models": [""]}):
        with pytest.raises(ConfigError, match=r"\[batching\]"):
            Config().replaced(batching={"enabled": True, **bad})
    with pytest.raises(ConfigError, match="unknown key"):
        Config().replaced(batching={"max_delay": 5})


def test_per_model_tables_set_each_models_policy(tmp_path: Any) -> None:
    """[batching.per_model.NAME] tables (Triton's per-model dynamic_batching): own knobs, opt-in, opt-out."""
    from gateway.config import BatchingSection, ConfigError, load_config

    text = """
[batching]
enabled = true
models = ["mlp"]
max_batch_size = 32
[batching.per_model.heavy]
max_batch_size = 8
max_queue_delay_us = 100
preferred_batch_sizes = [4, 8]
[batching.per_model.mlp]
max_queue_delay_us = 0
[batching.per_model.raw]
enabled = false
"""
    path = tmp_path / "sealgate.toml"
    path.write_text(text)
    batching = Batching.of(load_config(path).batching)
    assert batching.policy_of("heavy") == BatchPolicy(8, 100, (4, 8), 1024)  # opted in by its table
    assert batching.policy_of("mlp") == BatchPolicy(32, 0, (), 1024)  # listed, one key overridden
    assert batching.policy_of("raw") is None and batching.policy_of("other") is None
    everyone = Batching.of(BatchingSection(enabled=True, per_model={"raw": {"enabled": False}}))
    assert everyone.policy_of("any") == BatchPolicy() and everyone.policy_of("raw") is None
    for bad, match in (
        ("[batching.per_model.heavy]\nmax_batch_size = 0\n", r"\[batching\]"),
        ("[batching.per_model.heavy]\npreferred_batch_sizes = [64]\nmax_batch_size = 8\n", "preferred"),
        ("[batching.per_model.heavy]\nmax_delay = 1\n", r"unknown key 'max_delay' in \[batching.per_model.heavy\]"),
        ("[batching.per_model.heavy]\nmodels = ['x']\n", "unknown key 'models'"),
        ('[batching.per_model."../x"]\nmax_batch_size = 8\n', "not a model name"),
    ):
        path.write_text("[batching]\nenabled = true\n" + bad)
        with pytest.raises(ConfigError, match=match):
            load_config(path)


# --- the event loop's path (what the data plane awaits) ------------------------------------------


class _Counted:
    """An inner model that counts its calls and its close, and offers `infer_async` like an isolated model."""

    def __init__(self, inner: LoadedModel, parallel: int = 1) -> None:
        self.platform, self.inputs, self.outputs = inner.platform, inner.inputs, inner.outputs
        self.inner, self.parallel_calls = inner, parallel
        self.calls: list[int] = []
        self.entered: list[int] = []  # when each batch reached the model (perf_counter_ns)
        self.closed_after: list[int] = []
        self.threads: set[str] = set()

    async def infer_async(self, inputs: Any, outputs: Any = None) -> tuple[dict[str, np.ndarray], int, int]:
        self.threads.add(threading.current_thread().name)
        self.calls.append(next(iter(inputs.values())).shape[0])
        self.entered.append(time.perf_counter_ns())
        await asyncio.sleep(0.002)  # a worker process's call: the loop serves others meanwhile
        began = time.perf_counter_ns()
        return self.inner.infer(inputs, outputs), began, time.perf_counter_ns() - began

    def infer(self, inputs: Any, outputs: Any = None) -> dict[str, np.ndarray]:
        return self.inner.infer(inputs, outputs)

    def close(self) -> None:
        self.closed_after.append(len(self.calls))


def test_awaited_requests_batch_on_the_loop_and_split_back_byte_identical(mlp: LoadedModel) -> None:
    inner = _Counted(mlp)
    batcher = BatchingModel("m", inner, BatchPolicy(max_batch_size=16, max_queue_delay_us=2_000, idle_wait=True))
    inputs = [_rows(1 + i % 3, i) for i in range(40)]

    async def run() -> list[Any]:
        return await asyncio.gather(*(batcher.infer_async({"input": x}) for x in inputs))

    try:
        got = asyncio.run(run())
    finally:
        batcher.close()
    for x, (out, began, ran) in zip(inputs, got, strict=True):
        assert out["output"].tobytes() == mlp.infer({"input": x})["output"].tobytes()
        assert began > 0 and ran > 0
    assert sum(inner.calls) == sum(x.shape[0] for x in inputs)
    assert len(inner.calls) < len(inputs) and max(inner.calls) > 3  # merged into batches
    assert all(rows <= 16 for rows in inner.calls)
    assert inner.threads == {"MainThread"}  # awaited on the loop: no thread hop per request or batch
    assert inner.closed_after == [len(inner.calls)]


def test_awaited_requests_run_in_order_one_batch_per_free_slot(mlp: LoadedModel) -> None:
    """With one run slot, requests that arrive while a batch runs form the next one (no delay to wait out)."""
    inner = _Counted(mlp, parallel=1)
    batcher = BatchingModel("m", inner, BatchPolicy(max_batch_size=64, max_queue_delay_us=0))

    async def run() -> None:
        first = asyncio.ensure_future(batcher.infer_async({"input": _rows(1, 0)}))
        await asyncio.sleep(0)  # the first batch (one row) is running
        rest = [batcher.infer_async({"input": _rows(1, i)}) for i in range(1, 9)]
        await asyncio.gather(first, *rest)

    try:
        asyncio.run(run())
    finally:
        batcher.close()
    assert inner.calls == [1, 8]


def test_close_runs_the_awaited_queue_then_closes_the_model(mlp: LoadedModel) -> None:
    inner = _Counted(mlp)
    batcher = BatchingModel("m", inner, BatchPolicy(max_batch_size=64, max_queue_delay_us=5_000_000, idle_wait=True))

    async def run() -> list[Any]:
        calls = [asyncio.ensure_future(batcher.infer_async({"input": _rows(1, i)})) for i in range(5)]
        await asyncio.sleep(0.05)
        assert inner.calls == []  # still waiting for a fuller batch (5 s delay)
        batcher.close()  # from the loop's thread, as the manager may
        assert inner.closed_after == []  # not while the queue still has requests
        return await asyncio.gather(*calls)

    got = asyncio.run(run())
    assert [out["output"].shape for out, _, _ in got] == [(1, 3)] * 5
    assert inner.calls == [5] and inner.closed_after == [1]

    async def late() -> None:
        await batcher.infer_async({"input": _rows(1, 0)})

    with pytest.raises(Unavailable):
        asyncio.run(late())


def test_the_awaited_queue_is_bounded_and_a_failure_fails_its_batch_only(mlp: LoadedModel) -> None:
    gather = load_model(make_onnx_gather(4))
    batcher = BatchingModel(
        "g", gather, BatchPolicy(max_batch_size=8, max_queue_delay_us=50_000, max_queue_size=2, idle_wait=True)
    )

    async def run() -> tuple[list[Any], Any]:
        queued = [asyncio.ensure_future(batcher.infer_async({"index": np.array([i], dtype=np.int64)})) for i in (1, 99)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="queue"):
            await batcher.infer_async({"index": np.array([2], dtype=np.int64)})
        results = await asyncio.gather(*queued, return_exceptions=True)
        after = await batcher.infer_async({"index": np.array([3], dtype=np.int64)})
        return results, after

    try:
        results, after = asyncio.run(run())
    finally:
        batcher.close()
    assert all(isinstance(r, InvalidInput) for r in results)  # index 99 fails the batch it ran in
    assert results[0] is not results[1]
    assert after[0]["value"].tolist() == [3.0]  # the next batch is unaffected


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_lone_awaited_request_waits_out_its_delay_without_spinning_the_loop(mlp: LoadedModel, loop: str) -> None:
    """uvloop's timers are whole milliseconds, rounded (0.4 ms is 0): a batcher that re-checked its clock when the
    timer fired re-armed a zero timer and spun the loop until the delay had passed; one that trusted the timer
    dispatched at once. Armed for whole milliseconds rounded up, the head waits its delay, no less, no spin."""
    from gateway.server.loops import loop_factory

    inner = _Counted(mlp)
    batcher = BatchingModel("m", inner, BatchPolicy(max_batch_size=8, max_queue_delay_us=400, idle_wait=True))
    picks = 0
    pick = batcher._pick

    def counted(*args: Any) -> Any:
        nonlocal picks
        picks += 1
        return pick(*args)

    batcher._pick = counted  # type: ignore[method-assign]

    waits: list[int] = []

    async def run() -> float:
        began = time.perf_counter()
        for i in range(20):  # one at a time: each waits out its delay alone
            submitted = time.perf_counter_ns()
            await batcher.infer_async({"input": _rows(1, i)})
            waits.append(inner.entered[-1] - submitted)
        return time.perf_counter() - began

    try:
        with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
            elapsed = runner.run(run())
    finally:
        batcher.close()
    assert inner.calls == [1] * 20
    assert picks <= 20 * 3, f"{picks} picks for 20 lone requests: the loop spun while a head waited"
    assert elapsed < 20 * (0.002 + 0.0004) + 1.0  # never waits much longer than the delay (plus the run)
    # never shorter either: uvloop rounds 0.4 ms to a timer of 0 ms, which dispatched at once and batched nothing
    assert min(waits) >= 400_000, f"a lone request went after {min(waits) / 1e3:.0f} us, before its 400 us delay"
