"""int8 quantization with onnxruntime.quantization: dynamic, and static QDQ calibrated on sample inputs.

This runs on the release machine, never on the serving path: onnxruntime's quantizer reads and writes model
files (and its own temporary copies under TMPDIR), so the plaintext model touches disk here. Everything goes
into one TemporaryDirectory that is deleted on the way out; the serving path only ever sees sealed bytes.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
from onnxruntime.quantization import quantize_dynamic as _ort_quantize_dynamic
from onnxruntime.quantization import quantize_static as _ort_quantize_static

from gateway.errors import InvalidInput
from gateway.release import onnx_graph


class ArrayCalibrationReader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no hints
    """Feeds calibration rows to the static quantizer in batches, for a single-input model."""

    def __init__(self, input_name: str, data: np.ndarray, batch: int = 64) -> None:
        self.input_name = input_name
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        self.batch = batch
        self._iter: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.data), self.batch):
            yield {self.input_name: self.data[start : start + self.batch]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch, or None when the data is exhausted."""
        return next(self._iter, None)

    def rewind(self) -> None:
        """Start again from the first batch."""
        self._iter = self._batches()


def _prepare(model: bytes, matmul: bool) -> onnx.ModelProto:
    proto = onnx_graph.strip_metadata(onnx_graph.parse(model))
    if matmul:
        onnx_graph.gemm_to_matmul(proto)
    return proto


def _input_name(proto: onnx.ModelProto) -> str:
    init_names = {t.name for t in proto.graph.initializer}
    inputs = [i.name for i in proto.graph.input if i.name not in init_names]
    if len(inputs) != 1:
        raise InvalidInput(f"static quantization here supports one-input models, this one has {len(inputs)}")
    name: str = inputs[0]
    return name


def _run_in_tempdir(proto: onnx.ModelProto, run: object) -> bytes:
    """Write `proto` to a private temporary folder, let `run(src, dst)` quantize it, return dst's bytes."""
    logging.getLogger("root").setLevel(logging.ERROR)  # the quantizer logs advice through the root logger
    with tempfile.TemporaryDirectory(prefix="sealgate-quant-") as tmp:
        src, dst = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        onnx.save_model(proto, str(src))
        try:
            run(src, dst)  # type: ignore[operator]
        except InvalidInput:
            raise
        except Exception as exc:  # onnxruntime.quantization raises plain exceptions of many kinds
            raise InvalidInput(f"quantization failed: {str(exc).splitlines()[0][:200]}") from None
        return onnx_graph.serialize(onnx_graph.strip_metadata(onnx.load_model(str(dst))))


def quantize_dynamic(model: bytes, per_channel: bool = False) -> bytes:
    """int8 weights, activations quantized on the fly per call; needs no calibration data.

    Gemm nodes (torch's nn.Linear) become MatMul + Add first, since the dynamic quantizer handles only MatMul.
    """
    proto = _prepare(model, matmul=True)

    def run(src: Path, dst: Path) -> None:
        _ort_quantize_dynamic(src, dst, per_channel=per_channel, weight_type=QuantType.QInt8)

    return _run_in_tempdir(proto, run)


def quantize_static(model: bytes, calibration: np.ndarray, per_channel: bool = False) -> bytes:
    """int8 weights and activations in QDQ format (preferred on CPU), ranges calibrated (min-max) on `calibration`."""
    if len(calibration) == 0:
        raise InvalidInput("static quantization needs calibration rows")
    proto = _prepare(model, matmul=False)
    reader = ArrayCalibrationReader(_input_name(proto), calibration)

    def run(src: Path, dst: Path) -> None:
        _ort_quantize_static(
            src,
            dst,
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )

    return _run_in_tempdir(proto, run)
