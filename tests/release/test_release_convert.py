"""Conversion to ONNX with parity: torch (fresh module, dynamic batch), a Keras functional model through a
SavedModel, and conversions whose outputs differ from the source reported as parity failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import typer
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from gateway.errors import GateFailed
from gateway.release import parity, runtime
from gateway.release.commands import register
from gateway.release.convert import keras_to_onnx, savedmodel_to_onnx, torch_to_onnx


class SmallNet(nn.Module):
    """10-16-3 MLP with a `temperature` that lives outside the state dict (as a plain attribute)."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, hidden), nn.Tanh(), nn.Linear(hidden, 3))
        self.temperature = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) / self.temperature


class NoisyNet(SmallNet):
    """Adds fresh random noise on every call: no exported graph can reproduce the source's outputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + torch.randn_like(self.net(x))


SAMPLES = np.random.default_rng(0).standard_normal((16, 10)).astype(np.float32)


@pytest.fixture(scope="module")
def trained() -> SmallNet:
    torch.manual_seed(0)
    return SmallNet().eval()


def test_torch_conversion_has_parity_dynamic_batch_and_no_exporter_metadata(trained: SmallNet) -> None:
    result = torch_to_onnx(SmallNet, trained.state_dict(), SAMPLES, reference=trained)
    assert result.parity.passed, result.parity.message
    assert result.parity.max_abs < 1e-5 and result.parity.max_rel < 1e-5
    sess = runtime.session(result.onnx)
    for batch in (1, 3, 37):
        x = np.random.default_rng(batch).standard_normal((batch, 10)).astype(np.float32)
        with torch.no_grad():
            want = trained(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(runtime.predict(sess, x), want, atol=1e-5)
    model = onnx.load_from_string(result.onnx)
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["output"]
    assert not any(node.metadata_props for node in model.graph.node)  # no stack traces / source paths shipped
    assert b"test_release_convert.py" not in result.onnx


def test_torch_state_outside_the_state_dict_is_a_parity_failure(trained: SmallNet) -> None:
    calibrated = SmallNet().eval()
    calibrated.load_state_dict(trained.state_dict())
    calibrated.temperature = 2.5  # e.g. temperature scaling set after training; a fresh module does not have it
    result = torch_to_onnx(SmallNet, calibrated.state_dict(), SAMPLES, reference=calibrated)
    assert not result.parity.passed
    assert result.parity.max_abs > 0.01
    assert "parity failed" in result.parity.message and f"{result.parity.max_abs:.3g}" in result.parity.message
    with pytest.raises(GateFailed, match="parity failed"):
        result.parity.raise_for_failure()


def test_parity_against_a_different_model_fails(trained: SmallNet) -> None:
    result = torch_to_onnx(SmallNet, trained.state_dict(), SAMPLES)
    torch.manual_seed(99)
    other = SmallNet().eval()

    def reference(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            return {"output": other(torch.from_numpy(inputs["input"])).numpy()}

    report = parity.check_onnx(result.onnx, reference, {"input": SAMPLES})
    assert not report.passed and report.max_abs > 0.01


def test_cli_convert_torch_writes_on_parity_and_refuses_on_failure(tmp_path: Path, trained: SmallNet) -> None:
    app = typer.Typer()
    register(app)
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(weights))
    out = tmp_path / "model.onnx"
    ok = CliRunner().invoke(
        app,
        ["convert", str(weights), "--out", str(out), "--model-class", "tests.release.test_release_convert:SmallNet"],
    )
    assert ok.exit_code == 0, ok.output
    assert "parity passed" in ok.output and out.stat().st_size > 0
    bad_out = tmp_path / "noisy.onnx"
    bad = CliRunner().invoke(
        app,
        [
            "convert",
            str(weights),
            "--out",
            str(bad_out),
            "--model-class",
            "tests.release.test_release_convert:NoisyNet",
        ],
    )
    assert bad.exit_code == 1
    assert isinstance(bad.exception, GateFailed) and "parity failed" in str(bad.exception)
    assert not bad_out.exists()


@pytest.fixture(scope="module")
def keras_model() -> object:
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((10,), name="features")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    outputs = keras.layers.Dense(3)(hidden)
    return keras.Model(inputs, outputs)


def test_savedmodel_conversion_has_parity(tmp_path: Path, keras_model: object) -> None:
    export_dir = tmp_path / "saved_model"
    keras_model.export(str(export_dir), verbose=False)  # type: ignore[attr-defined]
    result = savedmodel_to_onnx(export_dir, SAMPLES)
    assert result.parity.passed, result.parity.message
    sess = runtime.session(result.onnx)
    assert [i.name for i in sess.get_inputs()] == ["features"]
    want = np.asarray(keras_model(SAMPLES))  # type: ignore[operator]
    np.testing.assert_allclose(runtime.predict(sess, SAMPLES), want, atol=1e-5)
    # random samples (from the signature) work as well, and the parity numbers are real
    assert savedmodel_to_onnx(export_dir).parity.max_abs < 1e-5


def test_keras_functional_conversion_has_parity(keras_model: object) -> None:
    result = keras_to_onnx(keras_model, SAMPLES)
    assert result.parity.passed and result.parity.max_abs < 1e-5
