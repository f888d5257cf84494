"""The explainer's parts without a server: reading reference.npz (untrusted even when signed), the rate and
concurrency bounds, the two methods' maths, and the checks made before any model run (on real ONNX models).
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest

from gateway.backends import BackendConfig, load_model
from gateway.config import ExplainConfig
from gateway.errors import InvalidInput, NotExplainable, Overloaded, RateLimited
from gateway.explain import reference
from gateway.explain.engine import Explainer, Query
from gateway.explain.limits import RateLimiter, Running
from gateway.explain.methods import kernel_shap, occlusion
from gateway.release import reference as release_reference
from gateway.serving.status import ServedModel, kept_files
from tests.models import make_onnx_mlp, make_onnx_string_identity


def npz(**arrays: object) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def served(files: dict[str, bytes], name: str = "m") -> ServedModel:
    """A real ONNX model loaded by its backend, with the side files the serving layer keeps."""
    return ServedModel(name, 1, load_model(files, BackendConfig()), {}, time.time(), kept_files(files))


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (None, "carries no reference.npz"),
        (b"not a zip file", "not an npz (zip) archive"),
        (npz(y=np.zeros((3, 2))), "has no array 'x'"),
        (npz(x=np.array([{"a": 1}], dtype=object)), "must be numbers"),  # a pickle: never unpickled
        (npz(x=np.array([[1.0, np.nan]])), "NaN or infinite"),
        (npz(x=np.arange(4.0)), "shape [rows, features"),
        (npz(x=np.array([["a", "b"]])), "must be numbers"),
    ],
)
def test_unusable_references_are_refused(data: bytes | None, why: str) -> None:
    """Each way a reference.npz can be unusable is NotExplainable (FAILED_PRECONDITION), saying why."""
    files = {} if data is None else {reference.REFERENCE_FILE: data}
    with pytest.raises(NotExplainable) as info:
        reference.load_reference(files)
    assert why in str(info.value)


def test_reference_size_is_checked_before_decompressing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The uncompressed size is read from the zip directory first: a small file that inflates is refused."""
    compressed = io.BytesIO()
    np.savez_compressed(compressed, x=np.zeros((100, 100)))
    monkeypatch.setattr(reference, "MAX_UNCOMPRESSED", 50_000)
    with pytest.raises(NotExplainable, match="over 50000"):
        reference.load_reference({reference.REFERENCE_FILE: compressed.getvalue()})


def test_large_references_are_thinned_evenly() -> None:
    """More than MAX_ROWS rows: evenly spaced rows are kept, first and last included."""
    x = np.arange(500 * 3, dtype=np.float32).reshape(500, 3)
    rows = reference.load_reference({reference.REFERENCE_FILE: release_reference.encode(x)})
    assert rows.shape == (reference.MAX_ROWS, 3) and rows.dtype == np.float64
    assert rows[0].tolist() == x[0].tolist() and rows[-1].tolist() == x[-1].tolist()


def test_release_sample_is_seeded_and_bounded() -> None:
    """The release path's sample: the same rows for the same seed, never more than asked, refused if not finite."""
    x = np.random.default_rng(0).normal(size=(200, 4))
    a, b = release_reference.sample(x, 50, seed=3), release_reference.sample(x, 50, seed=3)
    assert a.shape == (50, 4) and a.dtype == np.float32 and np.array_equal(a, b)
    assert release_reference.sample(x[:10], 50).shape == (10, 4)
    with pytest.raises(Exception, match="NaN"):
        release_reference.sample(np.array([[np.inf, 1.0]]))


def test_rate_limiter_refills_and_refusals_spend_nothing() -> None:
    """per_minute at once, then refused; one more every 60/per_minute s; a refusal spends nothing."""
    now = [1000.0]
    limiter = RateLimiter(3, clock=lambda: now[0])
    for _ in range(3):
        limiter.take("alice")
    with pytest.raises(RateLimited, match="retry in 20 s"):
        limiter.take("alice")
    limiter.take("bob", 3)  # subjects are independent
    now[0] += 20.0
    limiter.take("alice")  # one refilled
    with pytest.raises(RateLimited):
        limiter.take("alice")
    with pytest.raises(RateLimited, match="4 instances is over it"):
        limiter.take("carol", 4)
    limiter.take("carol", 3)  # the refused 4 spent nothing


def test_running_refuses_beyond_its_limit() -> None:
    """max_concurrent explanations at once; one more is Overloaded (RESOURCE_EXHAUSTED), never queued."""
    running = Running(1)
    running.acquire()
    with pytest.raises(Overloaded):
        running.acquire()
    running.release()
    running.acquire()
    assert running.now == 1


def test_a_cancelled_call_keeps_its_place_until_the_computation_ends() -> None:
    """Cancelling the caller does not free the place while the worker thread still computes; its end does."""
    import asyncio
    import threading

    gate = threading.Event()
    explainer = Explainer(ExplainConfig(max_concurrent=1))
    model = served({**make_onnx_mlp(8, (4,), 3, seed=1), "reference.npz": release_reference.encode(np.ones((5, 8)))})
    compute = explainer.compute

    def slow(plan: object) -> object:
        gate.wait(10)
        return compute(plan)  # type: ignore[arg-type]

    explainer.compute = slow  # type: ignore[method-assign]

    async def scenario() -> None:
        call = asyncio.ensure_future(explainer.explain(model, Query([[0.5] * 8], method="occlusion"), "a"))
        await asyncio.sleep(0.2)
        call.cancel()
        await asyncio.sleep(0.1)
        with pytest.raises(Overloaded):  # the computation still holds the only place
            await explainer.explain(model, Query([[0.5] * 8], method="occlusion"), "b")
        gate.set()
        for _ in range(100):
            if explainer.running.now == 0:
                break
            await asyncio.sleep(0.05)
        assert explainer.running.now == 0 and explainer.computed == 1
        assert (await explainer.explain(model, Query([[0.5] * 8], method="occlusion"), "b")).explanations

    asyncio.run(scenario())


def test_methods_are_exact_on_a_linear_function() -> None:
    """KernelSHAP and occlusion both give w_i (x_i - E[x_i]) on a linear function; SHAP adds up exactly."""
    rng = np.random.default_rng(1)
    w, background, x = rng.normal(size=5), rng.normal(size=(30, 5)), rng.normal(size=5)

    def linear(rows: np.ndarray) -> np.ndarray:
        return np.asarray(rows @ w + 0.5)

    want = w * (x - background.mean(axis=0))
    base, values = kernel_shap(linear, x, background, 100)
    np.testing.assert_allclose(values, want, atol=1e-9)
    assert abs(base - float(linear(background).mean())) < 1e-9
    base, values = occlusion(linear, x, background)
    np.testing.assert_allclose(values, want, atol=1e-9)


def test_kernel_shap_adds_up_is_reproducible_and_leaves_numpy_alone() -> None:
    """Local accuracy on a nonlinear function; the same answer twice; numpy's global random state untouched."""
    rng = np.random.default_rng(2)
    w, background, x = rng.normal(size=(8, 3)), rng.normal(size=(20, 8)), rng.normal(size=8)

    def f(rows: np.ndarray) -> np.ndarray:
        return np.asarray(np.tanh(rows @ w)[:, 1] ** 2)

    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    base, values = kernel_shap(f, x, background, 64)
    assert np.array_equal(np.random.get_state()[1], state)
    assert abs(base + values.sum() - f(x[None, :])[0]) < 1e-9
    again = kernel_shap(f, x, background, 64)[1]
    assert np.array_equal(values, again)


def test_plan_refuses_before_any_model_run() -> None:
    """Bounds, an unexplainable input, a reference that does not fit the input, a bad target: refused early."""
    explainer = Explainer(ExplainConfig(default_nsamples=50, max_nsamples=100, max_instances=2))
    fits = served({**make_onnx_mlp(8, (4,), 3, seed=1), "reference.npz": release_reference.encode(np.ones((5, 8)))})
    row = [0.5] * 8
    with pytest.raises(InvalidInput, match="max_nsamples"):
        explainer.plan(fits, Query([row], nsamples=101))
    with pytest.raises(InvalidInput, match="max_instances"):
        explainer.plan(fits, Query([row] * 3))
    with pytest.raises(InvalidInput, match="unknown explanation method"):
        explainer.plan(fits, Query([row], method="lime"))
    with pytest.raises(InvalidInput, match="not a numeric output"):
        explainer.plan(fits, Query([row], output="nope"))
    with pytest.raises(InvalidInput, match="instance 0"):
        explainer.plan(fits, Query([[0.5] * 7]))
    with pytest.raises(InvalidInput, match="NaN"):
        explainer.plan(fits, Query([[float("nan")] * 8]))
    with pytest.raises(InvalidInput, match="target 3 is out of range"):
        explainer.compute(explainer.plan(fits, Query([row], target=3)))
    wrong = served({**make_onnx_mlp(8, (4,), 3, seed=1), "reference.npz": release_reference.encode(np.ones((5, 6)))})
    with pytest.raises(NotExplainable, match=r"reference\.npz rows are"):
        explainer.plan(wrong, Query([row]))
    text = served({**make_onnx_string_identity(), "reference.npz": release_reference.encode(np.ones((5, 1)))})
    with pytest.raises(NotExplainable, match="floating-point input"):
        explainer.plan(text, Query([[1.0]]))
    assert explainer.computed == 0 and explainer.evaluations == 0


def test_compute_runs_the_model_in_bounded_chunks() -> None:
    """A big KernelSHAP run reaches the model in chunks of at most CHUNK_BYTES of input, and adds up."""
    from gateway.explain import engine

    model = served({**make_onnx_mlp(64, (16,), 10, seed=5), "reference.npz": release_reference.encode(np.eye(64)[:50])})
    seen: list[int] = []
    infer = model.model.infer

    class Counting:
        """The loaded model, recording each call's row count."""

        def __getattr__(self, name: str) -> object:
            return getattr(model.model, name)

        def infer(self, inputs: dict[str, np.ndarray], outputs: object = None) -> dict[str, np.ndarray]:
            seen.append(len(next(iter(inputs.values()))))
            return infer(inputs, outputs)  # type: ignore[arg-type]

    counted = ServedModel("m", 1, Counting(), {}, 0.0, model.kept)  # type: ignore[arg-type]
    explainer = Explainer(ExplainConfig())
    result = explainer.compute(explainer.plan(counted, Query([[0.25] * 64], nsamples=256)))
    e = result.explanations[0]
    assert abs(e.base_value + e.values.sum() - e.output) < 1e-4
    assert max(seen) <= engine.CHUNK_BYTES // (4 * 64) and sum(seen) == result.evaluations > 256 * 50


@pytest.mark.parametrize(
    ("values", "why"),
    [
        ({"method": "lime"}, "method must be"),
        ({"default_nsamples": 2000, "max_nsamples": 1000}, "default_nsamples <= max_nsamples"),
        ({"max_per_minute": 0}, "max_per_minute"),
        ({"samples": 10}, "unknown key 'samples' in [explain]"),
    ],
)
def test_explain_config_is_validated(values: dict[str, object], why: str) -> None:
    """[explain] settings that cannot work are refused at load, naming the key."""
    from gateway.config import Config
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        Config().replaced(explain=values)
    assert why in str(info.value)


def test_kernel_shap_memory_is_bounded_by_the_model_size() -> None:
    """nsamples x reference rows x features over MAX_SYNTH_VALUES is refused, naming the nsamples that fits;
    occlusion, which holds M + 3 rows, is not."""
    from gateway.explain import engine

    wide = 2048
    model = served(
        {**make_onnx_mlp(wide, (4,), 2, seed=1), "reference.npz": release_reference.encode(np.ones((100, wide)))}
    )
    explainer = Explainer(ExplainConfig(max_nsamples=1024))
    fits = engine.MAX_SYNTH_VALUES // (100 * wide)
    with pytest.raises(InvalidInput, match=f"use nsamples <= {fits}"):
        explainer.plan(model, Query([[0.0] * wide], nsamples=fits + 1))
    explainer.plan(model, Query([[0.0] * wide], nsamples=fits))
    explainer.plan(model, Query([[0.0] * wide], method="occlusion"))
