"""`sealgate optimize`: magnitude pruning with masked fine-tuning, structured pruning and int8 through the CLI,
on an ONNX MLP; the written model really has the sparsity, widths and int8 weights the record claims."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from onnx import numpy_helper
from typer.testing import CliRunner

from gateway.errors import ConfigError, InvalidInput
from gateway.release import runtime
from gateway.release.commands import register
from gateway.release.onnx_mlp import read_mlp
from tests.models import make_onnx_mlp, make_onnx_string_identity, mlp_reference

IN, HIDDEN, OUT = 16, (64,), 4


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dense teacher model and data labelled by it (so its own accuracy is 100%)."""
    root = tmp_path_factory.mktemp("optimize")
    (root / "dense.onnx").write_bytes(make_onnx_mlp(IN, HIDDEN, OUT, seed=21)["model.onnx"])
    teacher = mlp_reference(IN, HIDDEN, OUT, seed=21)
    for name, seed, rows in (("train", 1, 2000), ("eval", 2, 500)):
        x = np.random.default_rng(seed).standard_normal((rows, IN)).astype(np.float32)
        np.savez(root / f"{name}.npz", x=x, y=teacher(x).argmax(1))
    return root


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def _accuracy(path: Path, data: Path) -> float:
    with np.load(data) as arrays:
        x, y = arrays["x"], arrays["y"]
    return float(np.mean(runtime.predict(runtime.session(path.read_bytes()), x).argmax(1) == y))


def test_prune_then_finetune_keeps_the_sparsity_and_recovers_accuracy(files: Path) -> None:
    pruned, tuned = files / "pruned.onnx", files / "tuned.onnx"
    base = ["optimize", str(files / "dense.onnx"), "--prune", "0.9"]
    assert CliRunner().invoke(_app(), [*base, "--out", str(pruned)]).exit_code == 0
    result = CliRunner().invoke(
        _app(),
        [
            *base,
            "--out",
            str(tuned),
            "--finetune",
            str(files / "train.npz"),
            "--epochs",
            "15",
            "--lr",
            "0.01",
            "--record",
            str(files / "rec.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(tuned)).graph.initializer if len(t.dims) == 2]
    zeros = sum(int(np.sum(w == 0)) for w in weights) / sum(w.size for w in weights)
    assert zeros == pytest.approx(0.9, abs=1e-3)  # fine-tuning revived no pruned weight
    record = json.loads((files / "rec.json").read_text())
    assert record["pruning"]["sparsity"] == pytest.approx(0.9, abs=1e-3) and record["finetune"]["masks_kept"]
    assert record["compressed_bytes"] < record["compressed_bytes_before"] / 2
    before, after = _accuracy(pruned, files / "eval.npz"), _accuracy(tuned, files / "eval.npz")
    assert after > before + 0.05, (before, after)


def test_structured_halves_the_hidden_layer_and_quantize_shrinks(files: Path) -> None:
    out = files / "small.onnx"
    result = CliRunner().invoke(
        _app(),
        ["optimize", str(files / "dense.onnx"), "--out", str(out), "--structured", "0.5", "--quantize", "dynamic"],
    )
    assert result.exit_code == 0, result.output
    assert "hidden_after" in result.output
    model = onnx.load(str(out))
    quantized = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
    assert sorted(tuple(t.dims) for t in quantized) == [(16, 32), (32, 4)]
    assert sum(len(t.raw_data) for t in quantized) == (16 * 32 + 32 * 4)  # 1 byte per weight: 8x under fp32 dense
    assert out.stat().st_size < (files / "dense.onnx").stat().st_size / 2  # graph overhead dominates a model this small
    assert read_mlp((files / "dense.onnx").read_bytes()).hidden == [64]


def test_optimize_refusals_are_one_line_errors(files: Path, tmp_path: Path) -> None:
    static = CliRunner().invoke(
        _app(), ["optimize", str(files / "dense.onnx"), "--out", str(tmp_path / "q.onnx"), "--quantize", "static"]
    )
    assert static.exit_code == 1 and isinstance(static.exception, ConfigError)
    assert "--calib" in str(static.exception)
    (tmp_path / "strings.onnx").write_bytes(make_onnx_string_identity()["model.onnx"])
    not_mlp = CliRunner().invoke(
        _app(), ["optimize", str(tmp_path / "strings.onnx"), "--out", str(tmp_path / "p.onnx"), "--prune", "0.5"]
    )
    assert not_mlp.exit_code == 1 and isinstance(not_mlp.exception, InvalidInput)
    assert "not a plain MLP" in str(not_mlp.exception) and not (tmp_path / "p.onnx").exists()
