"""Read and write ONNX MLPs: a single chain of dense layers (Gemm, or MatMul + Add) and elementwise activations.

Structured pruning must change the shapes of consecutive weight matrices together, and fine-tuning needs the
weights in torch; both work on this plain description, which is then written back as a clean, smaller graph.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from gateway.errors import InvalidInput
from gateway.release.onnx_graph import parse

ACTIVATIONS = {"Relu", "Tanh", "Sigmoid", "LeakyRelu", "Identity", "Softmax"}


@dataclass(frozen=True)
class Activation:
    """An elementwise (or last-axis Softmax) activation after a dense layer."""

    op: str
    attrs: dict[str, Any] = field(default_factory=dict)


IDENTITY = Activation("Identity")


@dataclass(frozen=True)
class Mlp:
    """Dense layers in torch orientation (weights[l] is [out, in]), one activation after each, and the graph's I/O."""

    input: onnx.ValueInfoProto
    output: onnx.ValueInfoProto
    weights: list[np.ndarray]
    biases: list[np.ndarray]
    activations: list[Activation]
    opset: int

    @property
    def hidden(self) -> list[int]:
        """Widths of the hidden layers."""
        return [w.shape[0] for w in self.weights[:-1]]

    def with_layers(self, weights: list[np.ndarray], biases: list[np.ndarray]) -> Mlp:
        """The same MLP with other weights (shapes may differ in the hidden widths)."""
        return replace(
            self,
            weights=[np.asarray(w, np.float32) for w in weights],
            biases=[np.asarray(b, np.float32) for b in biases],
        )

    def tensors(self) -> dict[str, np.ndarray]:
        """Named view for magnitude pruning: W0.., b0.. ."""
        named = {f"W{i}": w for i, w in enumerate(self.weights)}
        named.update({f"b{i}": b for i, b in enumerate(self.biases)})
        return named

    def with_tensors(self, named: dict[str, np.ndarray]) -> Mlp:
        """Inverse of `tensors()`."""
        count = len(self.weights)
        return self.with_layers([named[f"W{i}"] for i in range(count)], [named[f"b{i}"] for i in range(count)])


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Walker:
    """Follows the single path from the graph input to the graph output, collecting layers."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and len(node.output) == 1 and node.attribute:
                self.inits[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            if node.op_type != "Constant":
                for name in node.input:
                    self.consumers[name].append(node)
        self.node_count = sum(1 for n in graph.node if n.op_type != "Constant")
        self.visited = 0

    def next_node(self, tensor: str) -> onnx.NodeProto:
        users = self.consumers.get(tensor, [])
        if len(users) != 1:
            raise InvalidInput(f"not a plain MLP: tensor {tensor!r} feeds {len(users)} nodes")
        self.visited += 1
        return users[0]

    def constant(self, name: str, what: str) -> np.ndarray:
        if name not in self.inits:
            raise InvalidInput(f"not a plain MLP: the {what} {name!r} is not a constant")
        return np.asarray(self.inits[name], dtype=np.float32)


def _gemm(walker: _Walker, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray | None]:
    attrs = _attrs(node)
    if attrs.get("transA", 0):
        raise InvalidInput("not a plain MLP: Gemm with transA")
    weight = walker.constant(node.input[1], "Gemm weight")
    weight = weight.T if attrs.get("transB", 0) else weight
    weight = weight * np.float32(attrs.get("alpha", 1.0))
    bias = None
    if len(node.input) > 2 and node.input[2]:
        bias = walker.constant(node.input[2], "Gemm bias") * np.float32(attrs.get("beta", 1.0))
    return weight, bias


def read_mlp(data: bytes | onnx.ModelProto) -> Mlp:
    """Describe an ONNX MLP; InvalidInput naming the first node that is not a dense layer or activation."""
    model = parse(data) if isinstance(data, bytes) else data
    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise InvalidInput("not a plain MLP: needs exactly one input and one output")
    walker = _Walker(model)
    weights: list[np.ndarray] = []  # [in, out] while walking
    biases: list[np.ndarray] = []
    acts: list[Activation] = []
    current, target = inputs[0].name, graph.output[0].name
    while current != target:
        node = walker.next_node(current)
        if node.op_type in ("Gemm", "MatMul"):
            if node.input[0] != current:
                raise InvalidInput(f"not a plain MLP: {node.op_type} {node.name!r} takes the data as its weight")
            if node.op_type == "Gemm":
                weight, bias = _gemm(walker, node)
            else:
                weight, bias = walker.constant(node.input[1], "MatMul weight"), None
            current = node.output[0]
            if bias is None and current != target and len(walker.consumers.get(current, [])) == 1:
                add = walker.consumers[current][0]
                if add.op_type == "Add":
                    other = add.input[1] if add.input[0] == current else add.input[0]
                    bias = walker.constant(other, "Add bias")
                    walker.visited += 1
                    current = add.output[0]
            if weight.ndim != 2:
                raise InvalidInput("not a plain MLP: a weight is not a matrix")
            out_dim = weight.shape[1]
            bias = np.zeros(out_dim, np.float32) if bias is None else bias
            if bias.size not in (1, out_dim):
                raise InvalidInput(f"not a plain MLP: bias of size {bias.size} for {out_dim} units")
            weights.append(weight)
            biases.append(np.broadcast_to(bias.reshape(-1), (out_dim,)).astype(np.float32))
            acts.append(IDENTITY)
        elif node.op_type in ACTIVATIONS and weights and acts[-1] == IDENTITY:
            acts[-1] = Activation(node.op_type, _attrs(node))
            current = node.output[0]
        else:
            raise InvalidInput(f"not a plain MLP: unsupported node {node.op_type} {node.name!r}")
    if not weights or walker.visited != walker.node_count:
        raise InvalidInput("not a plain MLP: the graph has nodes outside one dense chain")
    for index in range(1, len(weights)):
        if weights[index].shape[0] != weights[index - 1].shape[1]:
            raise InvalidInput(f"not a plain MLP: layer {index} does not fit layer {index - 1}")
    if any(a.op == "Softmax" for a in acts[:-1]):
        raise InvalidInput("not a plain MLP: Softmax between hidden layers")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    return Mlp(inputs[0], graph.output[0], [np.ascontiguousarray(w.T) for w in weights], biases, acts, opset)


def _clean(info: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """A copy of a graph input/output spec without doc string or exporter metadata."""
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(info)
    copy.doc_string = ""
    del copy.metadata_props[:]
    return copy


def write_mlp(mlp: Mlp, producer: str = "sealgate-release") -> bytes:
    """A fresh ONNX graph for `mlp`: MatMul + Add per layer (ORT fuses them), the original input/output kept."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    current = mlp.input.name
    last = len(mlp.weights) - 1
    for index, (weight, bias, act) in enumerate(zip(mlp.weights, mlp.biases, mlp.activations, strict=True)):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(weight.T, dtype=np.float32), f"W{index}"))
        inits.append(numpy_helper.from_array(np.asarray(bias, dtype=np.float32), f"b{index}"))
        final = index == last and act == IDENTITY
        dense_out = mlp.output.name if final else f"dense{index}"
        nodes.append(helper.make_node("MatMul", [current, f"W{index}"], [f"matmul{index}"], name=f"matmul{index}"))
        nodes.append(helper.make_node("Add", [f"matmul{index}", f"b{index}"], [dense_out], name=f"add{index}"))
        current = dense_out
        if act != IDENTITY:
            act_out = mlp.output.name if index == last else f"act{index}"
            nodes.append(helper.make_node(act.op, [current], [act_out], name=f"act{index}", **act.attrs))
            current = act_out
    graph = helper.make_graph(nodes, "mlp", [_clean(mlp.input)], [_clean(mlp.output)], inits)
    opsets = [helper.make_opsetid("", mlp.opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name=producer)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data
