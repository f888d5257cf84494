"""The ONNX model policy: a signed model is untrusted input, so it is checked before ONNX Runtime sees it.

`check_onnx_model` walks every place an ONNX model can hold a tensor or a node (graph, subgraphs of
If/Loop/Scan, local functions, attribute defaults, sparse initializers, training graphs) and refuses
external data anywhere, operator domains outside the standard ones, and models too deep or too large.
`inline_external_data` copies a multi-file model's weights from the artifact's in-memory files into the
ModelProto, so ONNX Runtime is always handed one self-contained, checked model. See docs/MODEL_POLICY.md.
"""

from __future__ import annotations

import atexit
import posixpath
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from onnx import AttributeProto, FunctionProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto

from gateway.errors import UnsafeArchive, UnsafeModel, UnsupportedFormat, clip

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
MAX_DEPTH = 64
MAX_NODES = 1_000_000
MAX_PROTO_BYTES = 2**31 - 1
EXTERNAL_KEYS = frozenset({"location", "offset", "length", "checksum"})

_empty_lock = threading.Lock()
_empty_folder: list[str] = []


def _refuse(where: str, what: str) -> UnsafeModel:
    """The one refusal type of this policy, naming the place in the model (clipped: it comes from the model)."""
    return UnsafeModel(f"unsafe ONNX model: {what} (at {clip(where)})")


@dataclass
class _Walk:
    """What the walk has learned so far: the local functions, and the node counts per function."""

    functions: dict[tuple[str, str], FunctionProto]
    expanded: dict[tuple[str, str], int] = field(default_factory=dict)
    in_progress: set[tuple[str, str]] = field(default_factory=set)


def _check_tensor(tensor: TensorProto, where: str) -> None:
    """Refuse a tensor that points at data outside the model: EXTERNAL, or any external_data entry."""
    if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0:
        raise _refuse(f"{where}/{tensor.name}", "external data is not allowed (the model is loaded from memory)")


def _attribute_tensors(attribute: AttributeProto) -> Iterator[TensorProto]:
    """Every tensor an attribute holds directly (not in subgraphs): tensor(s) and sparse tensor(s)."""
    if attribute.HasField("t"):
        yield attribute.t
    yield from attribute.tensors
    sparse = [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
    for item in (*sparse, *attribute.sparse_tensors):
        yield item.values
        yield item.indices


def _attribute_graphs(attribute: AttributeProto) -> Iterator[GraphProto]:
    """Every subgraph an attribute holds (If branches, Loop and Scan bodies), whatever its declared type."""
    if attribute.HasField("g"):
        yield attribute.g
    yield from attribute.graphs


def _check_attributes(attributes: Iterable[AttributeProto], where: str, depth: int, walk: _Walk) -> int:
    """Check the tensors and subgraphs of some attributes; return the nodes their subgraphs expand to."""
    count = 0
    for attribute in attributes:
        here = f"{where}.{attribute.name}"
        for tensor in _attribute_tensors(attribute):
            _check_tensor(tensor, here)
        for graph in _attribute_graphs(attribute):
            count += _check_graph(graph, here, depth + 1, walk)
    return count


def _check_node(node: NodeProto, where: str, depth: int, walk: _Walk) -> int:
    """Check one node's domain and attributes; return how many nodes it expands to (local calls inlined)."""
    here = f"{where}/{node.name or node.op_type}"
    count = _check_attributes(node.attribute, here, depth, walk)
    key = (node.domain, node.op_type)
    if key in walk.functions:
        return count + _expand_function(key, here, depth + 1, walk)
    if node.domain not in STANDARD_DOMAINS:
        raise _refuse(here, f"operator domain {clip(node.domain)!r} is not allowed (op {clip(node.op_type)!r})")
    return count + 1


def _check_graph(graph: GraphProto, where: str, depth: int, walk: _Walk) -> int:
    """Check a graph and everything below it; return the number of nodes it expands to."""
    here = f"{where}/{graph.name or 'graph'}"
    if depth > MAX_DEPTH:
        raise _refuse(here, f"subgraphs and functions nest deeper than {MAX_DEPTH}")
    for tensor in graph.initializer:
        _check_tensor(tensor, here)
    for sparse in graph.sparse_initializer:
        _check_tensor(sparse.values, here)
        _check_tensor(sparse.indices, here)
    count = 0
    for node in graph.node:
        count += _check_node(node, here, depth, walk)
        if count > MAX_NODES:
            raise _refuse(here, f"more than {MAX_NODES} nodes")
    return count


def _expand_function(key: tuple[str, str], where: str, depth: int, walk: _Walk) -> int:
    """Check a local function once and return its inlined node count; refuse recursion and deep nesting."""
    if key in walk.expanded:
        return walk.expanded[key]
    here = f"{where}/function {key[0]}.{key[1]}"
    if depth > MAX_DEPTH:
        raise _refuse(here, f"subgraphs and functions nest deeper than {MAX_DEPTH}")
    if key in walk.in_progress:
        raise _refuse(here, "a local function calls itself")
    walk.in_progress.add(key)
    function = walk.functions[key]
    _check_opsets(function.opset_import, here, walk)
    count = _check_attributes(function.attribute_proto, here, depth, walk)
    for node in function.node:
        count += _check_node(node, here, depth, walk)
        if count > MAX_NODES:
            raise _refuse(here, f"more than {MAX_NODES} nodes")
    walk.in_progress.discard(key)
    walk.expanded[key] = count
    return count


def _check_opsets(opsets: Iterable[OperatorSetIdProto], where: str, walk: _Walk) -> None:
    """Refuse an opset import of a domain that is neither standard nor a local function's."""
    local = {domain for domain, _ in walk.functions}
    for opset in opsets:
        domain = opset.domain
        if domain not in STANDARD_DOMAINS and domain not in local:
            raise _refuse(where, f"opset import of domain {clip(domain)!r} is not allowed")


def check_onnx_model(model: ModelProto) -> None:
    """Refuse (UnsafeModel) a model with external data anywhere, non-standard operators, or outsized structure.

    Walks the main graph, every subgraph in any attribute, every local function (nodes, attribute
    defaults) and the training graphs, so no tensor or node escapes the check.
    """
    functions: dict[tuple[str, str], FunctionProto] = {}
    for function in model.functions:
        key = (function.domain, function.name)
        if key in functions:
            raise _refuse(f"function {function.domain}.{function.name}", "a local function is defined twice")
        functions[key] = function
    walk = _Walk(functions)
    _check_opsets(model.opset_import, "model", walk)
    total = _check_graph(model.graph, "model", 0, walk)
    for index, info in enumerate(model.training_info):
        for part, graph in (("initialization", info.initialization), ("algorithm", info.algorithm)):
            total += _check_graph(graph, f"model/training_info[{index}].{part}", 0, walk)
    for key in functions:  # functions no node calls are still checked: nothing in the model goes unread
        total += _expand_function(key, "model", 1, walk)
    if total > MAX_NODES:
        raise _refuse("model", f"more than {MAX_NODES} nodes")


def _external_entries(tensor: TensorProto, model_path: str) -> dict[str, str]:
    """A tensor's external-data entries as a dict; unknown or repeated keys are refused."""
    entries: dict[str, str] = {}
    for entry in tensor.external_data:
        if entry.key not in EXTERNAL_KEYS or entry.key in entries:
            raise UnsafeArchive(
                f"{model_path}: external data of {clip(tensor.name)!r} has a bad key {clip(entry.key)!r}"
            )
        entries[entry.key] = entry.value
    return entries


def _resolve_location(model_path: str, location: str, files: Mapping[str, bytes]) -> str:
    """The artifact file one external-data location names: a plain relative path beside the model, present."""
    folder = posixpath.dirname(model_path)
    parts = location.split("/")
    if not location or location.startswith("/") or "\\" in location or "\x00" in location or ".." in parts:
        raise UnsafeArchive(f"{model_path}: external data location {clip(location)!r} leaves the model folder")
    if any(part in ("", ".") for part in parts) or ":" in location:
        raise UnsafeArchive(f"{model_path}: external data location {clip(location)!r} is not a plain relative path")
    joined = posixpath.join(folder, location) if folder else location
    if joined not in files:
        raise UnsupportedFormat(f"{model_path}: external data file {clip(joined)!r} is missing from the model")
    return joined


def _number(value: str | None, default: int, what: str, model_path: str) -> int:
    """An external-data offset or length: ASCII digits only, or the default when absent."""
    if value is None:
        return default
    if not value.isascii() or not value.isdigit() or len(value) > 19:
        raise UnsafeArchive(f"{model_path}: external data {what} {clip(value)!r} is not a number")
    return int(value)


def inline_external_data(model: ModelProto, model_path: str, files: Mapping[str, bytes]) -> None:
    """Copy the external data of the main graph's initializers from the artifact's files into the model.

    Only the main graph's initializers may use external data (where exporters put it); each location
    must be a plain relative path to a file of the artifact beside the model, and offset/length inside it.
    Any other external reference stays and is refused by `check_onnx_model`.
    """
    for tensor in model.graph.initializer:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        entries = _external_entries(tensor, model_path)
        path = _resolve_location(model_path, entries.get("location", ""), files)
        blob = files[path]
        offset = _number(entries.get("offset"), 0, "offset", model_path)
        length = _number(entries.get("length"), len(blob) - offset, "length", model_path)
        if offset > len(blob) or length < 0 or offset + length > len(blob):
            raise UnsafeArchive(f"{model_path}: external data of {clip(tensor.name)!r} lies outside {clip(path)!r}")
        tensor.raw_data = bytes(blob[offset : offset + length])
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT


def checked_model_bytes(model: ModelProto) -> bytes:
    """Check the model and serialize exactly what was checked (unknown fields dropped) for ONNX Runtime."""
    model.DiscardUnknownFields()
    check_onnx_model(model)
    if model.ByteSize() > MAX_PROTO_BYTES:
        raise UnsupportedFormat("the ONNX model is larger than 2 GiB with its weights inlined; it cannot be served")
    data: bytes = model.SerializeToString()
    return data


def empty_folder() -> str:
    """A private, empty folder (0700) for ONNX Runtime's external-initializer root: a stray path finds nothing."""
    with _empty_lock:
        if not _empty_folder:
            folder = tempfile.mkdtemp(prefix="sealgate-ort-empty-")
            atexit.register(shutil.rmtree, folder, True)
            _empty_folder.append(folder)
        return _empty_folder[0]


def session_config() -> dict[str, str]:
    """ONNX Runtime session entries that keep a load off the disk: ONNX format only, no EP-context files,
    and external initializers (refused by the policy anyway) resolved only inside an empty private folder.
    """
    return {
        "session.load_model_format": "ONNX",
        "ep.context_enable": "0",
        "session.model_external_initializers_file_folder_path": empty_folder(),
    }
