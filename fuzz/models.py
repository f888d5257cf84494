"""The small real ONNX models the JSON and REST harnesses serve, built in memory with onnx.helper."""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

ONNX_OPSET = 17


def _onnx(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any] | None = None) -> bytes:
    graph = helper.make_graph(nodes, "fuzz", inputs, outputs, inits or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)]).SerializeToString()


def onnx_models() -> list[bytes]:
    """FP32 [-1, 4] x 1e30; INT64 [-1] identity; BYTES [-1] identity; two inputs (FP32 [-1, 2], INT64 [-1])."""
    f, i, s = TensorProto.FLOAT, TensorProto.INT64, TensorProto.STRING
    vi = helper.make_tensor_value_info
    scale = numpy_helper.from_array(np.array(1e30, dtype=np.float32), "scale")
    return [
        _onnx([helper.make_node("Mul", ["input", "scale"], ["output"])], [vi("input", f, ["n", 4])],
              [vi("output", f, ["n", 4])], [scale]),
        _onnx([helper.make_node("Identity", ["index"], ["value"])], [vi("index", i, ["n"])], [vi("value", i, ["n"])]),
        _onnx([helper.make_node("Identity", ["text"], ["text_out"])], [vi("text", s, ["n"])],
              [vi("text_out", s, ["n"])]),
        _onnx(
            [helper.make_node("Identity", ["a"], ["a_out"]), helper.make_node("Identity", ["b"], ["b_out"])],
            [vi("a", f, ["n", 2]), vi("b", i, ["n"])],
            [vi("a_out", f, ["n", 2]), vi("b_out", i, ["n"])],
        ),
    ]  # fmt: skip
