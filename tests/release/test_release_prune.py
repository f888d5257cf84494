"""Pruning: magnitude pruning is the exact ‖W − W′‖_F minimizer (checked by brute force), global vs layer-wise,
structured pruning shrinks the ONNX graph without changing outputs when the removed units are dead, and masked
fine-tuning keeps pruned weights at zero."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from gateway.errors import InvalidInput
from gateway.release import prune, runtime
from gateway.release.finetune import FinetuneConfig, finetune, prune_state_dict, prune_units_state_dict
from gateway.release.onnx_mlp import read_mlp, write_mlp
from tests.models import make_onnx_mlp, mlp_reference


def _best_error(flat: np.ndarray, k: int) -> float:
    """Brute force: min over every support S with |S| ≤ k of Σ_{i∉S} w_i² (W′ = W on S is optimal for fixed S)."""
    best = float("inf")
    squares = flat.astype(np.float64) ** 2
    for size in range(k + 1):
        for support in itertools.combinations(range(flat.size), size):
            dropped = np.ones(flat.size, dtype=bool)
            dropped[list(support)] = False
            best = min(best, float(squares[dropped].sum()))
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_magnitude_pruning_equals_brute_force_on_3x3_for_every_k(seed: int) -> None:
    w = np.random.default_rng(seed).standard_normal((3, 3)).astype(np.float32)
    for k in range(10):
        mask = prune.magnitude_mask(w, k)
        assert int(mask.sum()) == k
        pruned = np.where(mask, w, 0)
        error = float(np.sum((w.astype(np.float64) - pruned) ** 2))
        assert error == pytest.approx(_best_error(w.ravel(), k), abs=1e-9)


def test_global_pruning_equals_brute_force_over_all_layers() -> None:
    rng = np.random.default_rng(7)
    tensors = {"a": rng.standard_normal((2, 2)), "b": rng.standard_normal((1, 3)) * 0.3, "bias": rng.standard_normal(3)}
    flat = np.concatenate([tensors["a"].ravel(), tensors["b"].ravel()])
    for zeros in range(8):
        sparsity = zeros / 7
        if sparsity >= 1:
            continue
        result = prune.prune_global(tensors, sparsity)
        error = sum(float(np.sum((tensors[n] - result.tensors[n]) ** 2)) for n in ("a", "b"))
        assert error == pytest.approx(_best_error(flat, 7 - zeros), abs=1e-9)
        np.testing.assert_array_equal(result.tensors["bias"], tensors["bias"])  # biases are never pruned


def test_global_spends_the_budget_where_weights_are_small_layerwise_does_not() -> None:
    rng = np.random.default_rng(3)
    tensors = {"big": rng.standard_normal((20, 20)) * 10.0, "small": rng.standard_normal((20, 20)) * 0.1}
    glob = prune.prune_global(tensors, 0.5)
    layer = prune.prune_layerwise(tensors, 0.5)
    assert glob.sparsity == pytest.approx(0.5) and layer.sparsity == pytest.approx(0.5)
    assert layer.masks["big"].mean() == pytest.approx(0.5) and layer.masks["small"].mean() == pytest.approx(0.5)
    assert glob.masks["small"].mean() < 0.05 and glob.masks["big"].mean() > 0.95  # nearly all of "small" goes

    def err(result: prune.MagnitudeResult) -> float:
        return sum(float(np.sum((tensors[n] - result.tensors[n]) ** 2)) for n in tensors)

    assert err(glob) < err(layer)  # the global support is the optimum under the same total budget


def test_pruning_refuses_bad_fractions() -> None:
    with pytest.raises(InvalidInput, match="sparsity"):
        prune.prune_global({"w": np.ones((2, 2))}, 1.0)
    with pytest.raises(InvalidInput, match="scope"):
        prune.prune_magnitude({"w": np.ones((2, 2))}, 0.5, "diagonal")  # type: ignore[arg-type]


# --- structured -----------------------------------------------------------------------------------------------
def _dead_unit_mlp(dead: list[int]) -> bytes:
    """make_onnx_mlp 16-(32)-3 with the outgoing weights of hidden units `dead` zeroed (they contribute nothing)."""
    mlp = read_mlp(make_onnx_mlp(16, (32,), 3, seed=4)["model.onnx"])
    weights = [w.copy() for w in mlp.weights]
    weights[1][:, dead] = 0.0
    return write_mlp(mlp.with_layers(weights, mlp.biases))


def test_structured_pruning_removes_dead_units_exactly_and_shrinks_the_graph() -> None:
    dead = list(range(0, 32, 2))  # half the units
    dense = _dead_unit_mlp(dead)
    mlp = read_mlp(dense)
    result = prune.prune_units(mlp.weights, mlp.biases, 0.5)
    np.testing.assert_array_equal(result.kept[0], np.arange(1, 32, 2))  # exactly the live units, in order
    small = write_mlp(mlp.with_layers(result.weights, result.biases))
    assert read_mlp(small).hidden == [16]
    assert len(small) < 0.6 * len(dense)
    x = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    got = runtime.predict(runtime.session(small), x)
    want = runtime.predict(runtime.session(dense), x)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_structured_pruning_of_nothing_changes_nothing() -> None:
    source = make_onnx_mlp(16, (32, 8), 3, seed=5)["model.onnx"]
    mlp = read_mlp(source)
    result = prune.prune_units(mlp.weights, mlp.biases, 0.0)
    rebuilt = write_mlp(mlp.with_layers(result.weights, result.biases))
    x = np.random.default_rng(1).standard_normal((20, 16)).astype(np.float32)
    np.testing.assert_allclose(
        runtime.predict(runtime.session(rebuilt), x), mlp_reference(16, (32, 8), 3, 5)(x), atol=1e-5
    )


def test_structured_pruning_of_live_units_changes_outputs_and_keeps_the_strongest() -> None:
    mlp = read_mlp(make_onnx_mlp(16, (32,), 3, seed=6)["model.onnx"])
    scores = prune.unit_scores(mlp.weights[0], mlp.biases[0], mlp.weights[1])
    result = prune.prune_units(mlp.weights, mlp.biases, 0.25)
    assert len(result.kept[0]) == 24
    assert scores[result.kept[0]].min() >= np.delete(scores, result.kept[0]).max()


class _Mlp(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, hidden), nn.ReLU(), nn.Linear(hidden, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_structured_pruning_of_a_torch_state_dict_loads_into_the_smaller_model() -> None:
    torch.manual_seed(0)
    model = _Mlp()
    with torch.no_grad():
        model.net[2].weight[:, 16:] = 0.0  # units 16..31 are dead
    small_sd = prune_units_state_dict(model.state_dict(), 0.5)
    small = _Mlp(hidden=16)
    small.load_state_dict(small_sd)
    x = torch.randn(30, 10)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), atol=1e-6, rtol=0)


def test_read_mlp_refuses_graphs_that_are_not_a_dense_chain() -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Add", ["x", "a"], ["y"])],
        "skip",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    with pytest.raises(InvalidInput, match="not a plain MLP"):
        read_mlp(onnx.helper.make_model(graph).SerializeToString())


# --- fine-tuning keeps the masks ----------------------------------------------------------------------------------
def test_finetune_keeps_pruned_weights_at_zero_and_learns() -> None:
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 10)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + 2 * (x[:, 2] > 0).astype(np.int64)
    model = _Mlp()
    pruned_sd, masks = prune_state_dict(model.state_dict(), 0.8, scope="layer")  # global would empty net.2 here
    assert set(masks) == {"net.0.weight", "net.2.weight"}
    model.load_state_dict(pruned_sd)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn = nn.CrossEntropyLoss()
    with torch.no_grad():
        loss_before = float(loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y)))
    finetune(model, masks, x, y, FinetuneConfig(epochs=15, lr=0.05, batch_size=32))
    with torch.no_grad():
        loss_after = float(loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y)))
    for name, mask in masks.items():
        weight = model.state_dict()[name].numpy()
        assert np.all(weight[~mask] == 0.0), f"{name}: a pruned weight came back"
        assert np.any(weight[mask] != before[name].numpy()[mask]), f"{name}: kept weights did not train"
    assert loss_after < 0.7 * loss_before
