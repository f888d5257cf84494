"""Small, generic edits of ONNX graphs used by the release path: parse, strip metadata, Gemm → MatMul + Add.

The dynamo exporter records a stack trace (with the developer's file paths) on every node; a released model
should carry none of that, so conversions strip node metadata.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from gateway.errors import InvalidInput


def parse(data: bytes) -> onnx.ModelProto:
    """ONNX bytes → ModelProto; InvalidInput when they are not a model (external data is not supported here)."""
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InvalidInput(f"not an ONNX model: {str(exc)[:200]}") from None
    if not model.graph.node and not model.graph.output:
        raise InvalidInput("not an ONNX model: empty graph")
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise InvalidInput("models with external data are not supported by the release tools; export one file")
    return model


def serialize(model: onnx.ModelProto) -> bytes:
    """ModelProto → bytes."""
    data: bytes = model.SerializeToString()
    return data


def strip_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove per-node doc strings and metadata (exporter stack traces, source paths) in place; returns `model`."""
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    for info in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        info.doc_string = ""
        del info.metadata_props[:]
    for tensor in model.graph.initializer:
        tensor.doc_string = ""
        del tensor.metadata_props[:]
    return model


def initializer_signature(model: onnx.ModelProto) -> list[tuple[tuple[int, ...], int]]:
    """Sorted (dims, element type) of every initializer: equal for two models of the same architecture."""
    return sorted((tuple(t.dims), t.data_type) for t in model.graph.initializer)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _convertible(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    """A Gemm whose B is constant, A not transposed, and bias constant unless beta = 1."""
    if node.op_type != "Gemm" or node.input[1] not in inits:
        return False
    attrs = _attrs(node)
    has_bias = len(node.input) > 2 and bool(node.input[2])
    scaled_dynamic_bias = has_bias and float(attrs.get("beta", 1.0)) != 1.0 and node.input[2] not in inits
    return not attrs.get("transA", 0) and not scaled_dynamic_bias


def gemm_to_matmul(model: onnx.ModelProto) -> int:
    """Rewrite each Gemm with a constant B (and transA = 0) as MatMul (+ Add) in place; returns how many.

    onnxruntime's dynamic quantization handles MatMul but not Gemm, which is what torch exports for nn.Linear.
    """
    inits = {t.name: t for t in model.graph.initializer}
    new_nodes: list[onnx.NodeProto] = []
    rewritten = 0
    for node in model.graph.node:
        if not _convertible(node, inits):
            new_nodes.append(node)
            continue
        attrs = _attrs(node)
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
        weight = (weight * np.float32(attrs.get("alpha", 1.0))).astype(weight.dtype)
        w_name = f"{node.input[1]}__matmul{rewritten}"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), w_name))
        has_bias = len(node.input) > 2 and bool(node.input[2])
        mm_out = f"{node.output[0]}__mm" if has_bias else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=f"{node.name}_matmul"))
        if has_bias:
            bias_name = node.input[2]
            beta = float(attrs.get("beta", 1.0))
            if beta != 1.0:
                bias = numpy_helper.to_array(inits[bias_name])
                bias_name = f"{bias_name}__scaled{rewritten}"
                scaled = (bias * np.float32(beta)).astype(bias.dtype)
                model.graph.initializer.append(numpy_helper.from_array(scaled, bias_name))
            new_nodes.append(helper.make_node("Add", [mm_out, bias_name], [node.output[0]], name=f"{node.name}_add"))
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    _drop_unused_initializers(model)
    return rewritten


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    """Remove initializers no node (and no graph output) reads any more."""
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
