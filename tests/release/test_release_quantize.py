"""int8 quantization (dynamic, and static QDQ with calibration): both run, shrink the model, stay close to the
float outputs, leave nothing behind in TMPDIR; the Gemm → MatMul rewrite they rely on is exact."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gateway.errors import InvalidInput
from gateway.release import onnx_graph, quantize, runtime
from tests.models import make_onnx_mlp, mlp_reference

IN, HIDDEN, OUT = 64, (256, 128), 10


@pytest.fixture(scope="module")
def dense() -> bytes:
    return make_onnx_mlp(IN, HIDDEN, OUT, seed=2)["model.onnx"]


@pytest.fixture
def private_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _x(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, IN)).astype(np.float32)


def _agreement(model: bytes, x: np.ndarray) -> tuple[float, float]:
    got = runtime.predict(runtime.session(model), x)
    want = mlp_reference(IN, HIDDEN, OUT, seed=2)(x)
    rel = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    return rel, float(np.mean(got.argmax(1) == want.argmax(1)))


def test_dynamic_int8_is_smaller_close_and_leaves_no_temp_files(dense: bytes, private_tmpdir: Path) -> None:
    q = quantize.quantize_dynamic(dense)
    assert len(q) < len(dense) / 3.5
    ops = {n.op_type for n in onnx.load_from_string(q).graph.node}
    assert "MatMulInteger" in ops and "Gemm" not in ops
    rel, agree = _agreement(q, _x(500, 1))
    assert rel < 0.05 and agree > 0.95
    assert list(private_tmpdir.iterdir()) == []


def test_static_qdq_int8_is_smaller_close_and_leaves_no_temp_files(dense: bytes, private_tmpdir: Path) -> None:
    q = quantize.quantize_static(dense, _x(2000, 3))  # min-max ranges: too few rows clip unseen extremes
    assert len(q) < len(dense) / 3.5
    ops = [n.op_type for n in onnx.load_from_string(q).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    rel, agree = _agreement(q, _x(500, 4))
    assert rel < 0.1 and agree > 0.95
    assert list(private_tmpdir.iterdir()) == []


def test_static_needs_calibration_and_one_input(dense: bytes) -> None:
    with pytest.raises(InvalidInput, match="calibration"):
        quantize.quantize_static(dense, np.zeros((0, IN), np.float32))


def test_gemm_with_transb_alpha_beta_becomes_an_exact_matmul_add() -> None:
    rng = np.random.default_rng(5)
    w = rng.standard_normal((6, 4)).astype(np.float32)  # [out, in], used with transB=1 like torch's Linear
    b = rng.standard_normal(6).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], alpha=0.5, beta=2.0, transB=1)],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 6])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert onnx_graph.gemm_to_matmul(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Add"]
    assert {t.name for t in model.graph.initializer}.isdisjoint({"w", "b"})  # the originals are gone
    x = rng.standard_normal((5, 4)).astype(np.float32)
    got = runtime.predict(runtime.session(model.SerializeToString()), x)
    np.testing.assert_allclose(got, 0.5 * x @ w.T + 2.0 * b, rtol=1e-5, atol=1e-5)
