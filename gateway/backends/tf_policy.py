"""The TensorFlow model policy: an op allowlist over a SavedModel's graph and function library.

Checked on the raw `saved_model.pb` before `tf.saved_model.load`, so a refused model runs nothing. Only
pure tensor math, variables, lookup tables and control flow are allowed; file, process, network,
dataset, summary, debug and Python ops are refused. Two exceptions are narrow and structural: the
checkpoint ops of the saver functions TensorFlow 2 never runs, and a text-file table initializer whose
file name can only be one of the model's own assets. See docs/MODEL_POLICY.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from gateway.errors import UnsafeModel, UnsupportedFormat, clip

SAVED_MODEL = "saved_model.pb"
ASSETS = "assets"
MAX_NODES = 1_000_000
MAX_ATTR_DEPTH = 16  # function attrs nested in function attrs

# Pure math and shape ops a Keras model's forward pass uses (dense, conv, pooling, normalisation,
# activations, attention, recurrence) plus variables, lookup tables and structured control flow.
ALLOWED_OPS = frozenset(
    {
        # graph plumbing
        "Const",
        "Placeholder",
        "PlaceholderWithDefault",
        "Identity",
        "IdentityN",
        "NoOp",
        "StopGradient",
        "PreventGradient",
        "EnsureShape",
        "CheckNumerics",
        "Assert",
        "PartitionedCall",
        "StatefulPartitionedCall",
        "If",
        "StatelessIf",
        "While",
        "StatelessWhile",
        "Case",
        "StatelessCase",
        # variables (the model's own, through captured handles)
        "VarHandleOp",
        "VarIsInitializedOp",
        "ReadVariableOp",
        "AssignVariableOp",
        "AssignAddVariableOp",
        "AssignSubVariableOp",
        "DisableCopyOnRead",
        "ResourceGather",
        "DestroyResourceOp",
        # lookup tables held in memory
        "HashTableV2",
        "MutableHashTableV2",
        "LookupTableFindV2",
        "LookupTableSizeV2",
        "LookupTableInsertV2",
        "InitializeTableV2",
        # arithmetic
        "Abs",
        "Add",
        "AddN",
        "AddV2",
        "BiasAdd",
        "Ceil",
        "ClipByValue",
        "Cos",
        "Cumsum",
        "Div",
        "DivNoNan",
        "Einsum",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Expm1",
        "Floor",
        "FloorDiv",
        "FloorMod",
        "Greater",
        "GreaterEqual",
        "IsFinite",
        "IsNan",
        "LeakyRelu",
        "Less",
        "LessEqual",
        "Log",
        "Log1p",
        "LogSoftmax",
        "LogicalAnd",
        "LogicalNot",
        "LogicalOr",
        "MatMul",
        "BatchMatMul",
        "BatchMatMulV2",
        "BatchMatMulV3",
        "Maximum",
        "Minimum",
        "Mul",
        "MulNoNan",
        "Neg",
        "NotEqual",
        "Pow",
        "RealDiv",
        "Reciprocal",
        "Relu",
        "Relu6",
        "Round",
        "Rsqrt",
        "Selu",
        "Sigmoid",
        "Sign",
        "Sin",
        "Softmax",
        "Softplus",
        "Softsign",
        "Sqrt",
        "Square",
        "SquaredDifference",
        "Sub",
        "Tanh",
        # reductions and selection
        "All",
        "Any",
        "ArgMax",
        "ArgMin",
        "Max",
        "Mean",
        "Min",
        "Prod",
        "Sum",
        "TopKV2",
        "Select",
        "SelectV2",
        "Where",
        # convolution, pooling, normalisation, resizing
        "Conv2D",
        "Conv3D",
        "DepthwiseConv2dNative",
        "Conv2DBackpropInput",
        "AvgPool",
        "AvgPool3D",
        "MaxPool",
        "MaxPoolV2",
        "MaxPool3D",
        "FusedBatchNorm",
        "FusedBatchNormV3",
        "ResizeBilinear",
        "ResizeNearestNeighbor",
        # shapes and layout
        "BroadcastArgs",
        "BroadcastTo",
        "Cast",
        "ConcatV2",
        "ExpandDims",
        "Fill",
        "GatherNd",
        "GatherV2",
        "MatrixBandPart",
        "MirrorPad",
        "OneHot",
        "OnesLike",
        "Pack",
        "Pad",
        "PadV2",
        "Range",
        "Rank",
        "Reshape",
        "ReverseV2",
        "ScatterNd",
        "Shape",
        "ShapeN",
        "Size",
        "Slice",
        "Split",
        "SplitV",
        "Squeeze",
        "StridedSlice",
        "Tile",
        "Transpose",
        "Unpack",
        "ZerosLike",
        # tensor lists (Keras recurrent layers unroll into While loops over these)
        "TensorListElementShape",
        "TensorListFromTensor",
        "TensorListGetItem",
        "TensorListLength",
        "TensorListReserve",
        "TensorListSetItem",
        "TensorListStack",
        # strings in memory
        "AsString",
        "RegexReplace",
        "StaticRegexFullMatch",
        "StringJoin",
        "StringLower",
        "StringSplitV2",
        "StringStrip",
        "StringToHashBucketFast",
        "Substr",
    }
)

# Written by TensorFlow into the saver functions (`__inference__traced_save/_restore`), which only a
# TF1-style loader runs; allowed only in functions that nothing TF2's loader can run reaches.
CHECKPOINT_OPS = frozenset({"SaveV2", "RestoreV2", "MergeV2Checkpoints", "ShardedFilename"})
# Reads a vocabulary file: allowed only where the file name is one of the model's own assets.
ASSET_TABLE_OP = "InitializeTableFromTextFileV2"


@dataclass
class _Model:
    """One meta graph's function library and object graph, indexed for the checks."""

    library: Mapping[str, Any]
    object_graph: Any
    roots: set[str]


def _refuse(where: str, what: str) -> UnsafeModel:
    """The one refusal type of this policy; names from the model are clipped."""
    return UnsafeModel(f"unsafe TensorFlow model: {what} (at {clip(where)})")


def _func_names(attrs: Any, depth: int = 0) -> Iterator[str]:
    """Every function named in an attr map: func / list(func) values and, nested in them, the attrs a called
    function is instantiated with (a function-typed attr there can be what the callee calls)."""
    if depth > MAX_ATTR_DEPTH:
        raise _refuse("attr", f"function attrs nest deeper than {MAX_ATTR_DEPTH}")
    for value in attrs.values():
        functions = [value.func] if value.HasField("func") else []
        if value.HasField("list"):
            functions.extend(value.list.func)
        for function in functions:
            yield function.name
            yield from _func_names(function.attr, depth + 1)


def _called(node: Any) -> Iterator[str]:
    """Every function a node calls: a library function as its op, or named in a func / list(func) attr."""
    yield node.op
    yield from _func_names(node.attr)


def _calls(model: _Model, node: Any, where: str) -> list[str]:
    """The library functions a node calls; refuse a func attr naming anything outside this model's library."""
    calls = []
    for index, name in enumerate(_called(node)):
        if name in model.library:
            calls.append(name)
        elif index > 0:  # a func attr: must name one of this model's functions, never another model's
            raise _refuse(where, f"op {clip(node.op)!r} calls {clip(name)!r}, which is not in the model")
    return calls


def _reachable(model: _Model) -> set[str]:
    """The functions TF2's loader can run: the object graph's concrete functions and all they call."""
    seen: set[str] = set()
    todo = [name for name in model.roots if name in model.library]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in model.library[name].node_def:
            todo.extend(_calls(model, node, f"function {name}"))
    return seen


def _roots(object_graph: Any) -> set[str]:
    """Every function name the object graph exposes to the loader."""
    roots = set(object_graph.concrete_functions)
    for node in object_graph.nodes:
        kind = node.WhichOneof("kind")
        if kind == "function":
            roots.update(node.function.concrete_functions)
        elif kind == "bare_concrete_function":
            roots.add(node.bare_concrete_function.concrete_function_name)
    return roots


def _check_assets(meta_graph: Any, files: Mapping[str, bytes]) -> None:
    """Every asset must be a plain relative path under assets/ present in the artifact (never a host path)."""
    for asset in meta_graph.asset_file_def:
        name = asset.filename
        bad_part = any(part in ("", ".", "..") for part in name.split("/"))
        if not name or name.startswith("/") or "\\" in name or "\x00" in name or bad_part:
            raise _refuse(f"asset {name}", "an asset path must be a plain relative path under assets/")
        if f"{ASSETS}/{name}" not in files:
            raise _refuse(f"asset {name}", "the asset file is missing from the model")


def _source(function: Any, tensor: str) -> str:
    """Follow a function-internal tensor name back through Identity nodes to its origin (node or arg name)."""
    nodes = {node.name: node for node in function.node_def}
    name = tensor
    for _ in range(len(nodes) + 1):
        base = name.split(":", 1)[0]
        node = nodes.get(base)
        if node is None or node.op != "Identity" or not node.input:
            return base
        name = node.input[0]
    return name.split(":", 1)[0]


def _check_asset_table(model: _Model, name: str, node: Any, callers: Mapping[str, set[str]]) -> None:
    """A text-file table initializer may read only a captured asset of the loader-run function it sits in."""
    where = f"function {name}/{node.name}"
    function = model.library[name]
    if name not in model.roots or callers.get(name):
        raise _refuse(where, f"{ASSET_TABLE_OP} is allowed only in a table initializer the loader runs")
    args = [arg.name for arg in function.signature.input_arg]
    origin = _source(function, node.input[1]) if len(node.input) > 1 else ""
    saved = model.object_graph.concrete_functions.get(name)
    bound = list(saved.bound_inputs) if saved is not None else []
    first_bound = len(args) - len(bound)
    if origin not in args or args.index(origin) < first_bound:
        raise _refuse(where, f"{ASSET_TABLE_OP} reads a file name that is not one of the model's assets")
    target = bound[args.index(origin) - first_bound]
    nodes = model.object_graph.nodes
    if target >= len(nodes) or nodes[target].WhichOneof("kind") != "asset":
        raise _refuse(where, f"{ASSET_TABLE_OP} reads a file name that is not one of the model's assets")


def _check_node(model: _Model, node: Any, where: str, reachable: bool) -> None:
    """Refuse an op outside the allowlist; checkpoint ops only where the loader cannot reach them."""
    if node.op in model.library or node.op in ALLOWED_OPS:
        return
    if node.op in CHECKPOINT_OPS and not reachable:
        return
    raise _refuse(f"{where}/{node.name}", f"op {clip(node.op)!r} is not allowed")


def _check_meta_graph(meta_graph: Any, files: Mapping[str, bytes]) -> None:
    """Check one meta graph: object graph present, assets, every node of the graph and of every function."""
    if not meta_graph.HasField("object_graph_def"):
        raise _refuse("meta graph", "a TF1 SavedModel (no object graph) runs its own init ops; only TF2 is served")
    library = {function.signature.name: function for function in meta_graph.graph_def.library.function}
    model = _Model(library, meta_graph.object_graph_def, _roots(meta_graph.object_graph_def))
    _check_assets(meta_graph, files)
    count = len(meta_graph.graph_def.node) + sum(len(f.node_def) for f in library.values())
    if count > MAX_NODES:
        raise _refuse("graph", f"more than {MAX_NODES} nodes")
    for node in meta_graph.graph_def.node:
        _calls(model, node, f"graph/{node.name}")
        if node.op in CHECKPOINT_OPS or node.op == ASSET_TABLE_OP:
            raise _refuse(f"graph/{node.name}", f"op {clip(node.op)!r} is not allowed")
        _check_node(model, node, "graph", reachable=True)
    reachable = _reachable(model)
    callers: dict[str, set[str]] = {}
    for name, function in library.items():
        for node in function.node_def:
            for callee in _calls(model, node, f"function {name}/{node.name}"):
                callers.setdefault(callee, set()).add(name)
    for name, function in library.items():
        for node in function.node_def:
            if node.op == ASSET_TABLE_OP:
                _check_asset_table(model, name, node, callers)
                continue
            _check_node(model, node, f"function {name}", reachable=name in reachable)


def check_saved_model(files: Mapping[str, bytes]) -> None:
    """Refuse (UnsafeModel) a SavedModel whose graph or function library holds an op outside the policy.

    Runs on the artifact's bytes before TensorFlow loads anything; a saved_model.pb that does not parse
    is UnsupportedFormat.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(files[SAVED_MODEL])
    except (DecodeError, RuntimeWarning) as exc:
        raise UnsupportedFormat(
            f"TensorFlow cannot load the SavedModel: {SAVED_MODEL} does not parse ({type(exc).__name__})"
        ) from None
    if not saved.meta_graphs:
        raise UnsupportedFormat(f"TensorFlow cannot load the SavedModel: {SAVED_MODEL} holds no meta graph")
    for meta_graph in saved.meta_graphs:
        _check_meta_graph(meta_graph, files)
