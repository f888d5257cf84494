"""The Open Inference Protocol over REST (KServe V2, Triton HTTP): JSON documents and the binary tensor extension.

Wire translation only, no I/O: rest.py routes a request here and runs the data plane. An inference body is
strict JSON (strict_json), or, with the `Inference-Header-Content-Length` header (Triton's binary tensor
data extension, what tritonclient.http sends by default), that many bytes of JSON followed by the binary
contents of the inputs that declare `binary_data_size`, in input order. Every declared shape and size is
checked against the bytes received before anything is allocated: the binary sizes must add up to exactly
the bytes after the JSON header, a non-BYTES tensor's size must be its shape times its item size, and
BYTES framing is checked by tensors.decode_bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.backends.base import TensorSpec
from gateway.backends.dtypes import BYTES, NUMPY_DTYPES, numpy_dtype, v2_from_numpy
from gateway.errors import InvalidInput, clip
from gateway.server import strict_json
from gateway.server.dataplane import ModelConfig, ModelMetadata, ModelStats
from gateway.server.tensors import count_elements, decode_bytes, encode_bytes
from gateway.serving.status import ModelStatus

HEADER_LENGTH = b"inference-header-content-length"
MAX_ID_CHARS = 256
_REQUEST_KEYS = frozenset({"id", "parameters", "inputs", "outputs"})
_INPUT_KEYS = frozenset({"name", "shape", "datatype", "parameters", "data"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})


@dataclass(frozen=True)
class InferRequest:
    """A decoded inference request: its id, input arrays, the outputs asked for and which go binary."""

    id: str
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...] | None
    binary: Mapping[str, bool]
    binary_default: bool

    def wants_binary(self, name: str) -> bool:
        """Whether output `name` is answered as binary data (its own parameter, else the request's)."""
        return self.binary.get(name, self.binary_default)


def header_length(value: bytes | None, body_bytes: int) -> int | None:
    """The `Inference-Header-Content-Length` of a request (None: the whole body is JSON), checked against it."""
    if value is None:
        return None
    text = value.decode("latin-1").strip()
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise InvalidInput(f"Inference-Header-Content-Length '{clip(text, 32)}' is not a byte count")
    length = int(text)
    if length > body_bytes:
        raise InvalidInput(f"Inference-Header-Content-Length {length} is larger than the body ({body_bytes} bytes)")
    return length


def _object(value: Any, what: str, allowed: frozenset[str]) -> dict[str, Any]:
    """`value` as a JSON object with only `allowed` keys; InvalidInput naming `what` otherwise."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise InvalidInput(f"{what}: unknown field '{clip(unknown[0], 64)}'")
    return value


def _parameters(value: Any, what: str) -> dict[str, Any]:
    """A `parameters` object (absent: empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{what}: parameters must be a JSON object")
    return value


def _flag(params: Mapping[str, Any], key: str, what: str) -> bool | None:
    """A boolean parameter, None when absent."""
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidInput(f"{what}: parameter {key} must be true or false")
    return value


def _shape(value: Any, name: str) -> tuple[int, ...]:
    """A tensor's declared shape: a list of non-negative integers (checked again by count_elements)."""
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise InvalidInput(f"input '{clip(name)}': shape must be a list of integers")
    return tuple(value)


def decode_infer(raw: bytes, header: int | None, max_depth: int = strict_json.MAX_DEPTH) -> InferRequest:
    """An inference request body (JSON, or JSON header + binary tensors) as numpy inputs; InvalidInput on any fault."""
    split = len(raw) if header is None else header
    doc = _object(strict_json.loads(raw[:split], max_depth), "request body", _REQUEST_KEYS)
    binary = memoryview(raw)[split:]
    request_id = doc.get("id", "")
    if not isinstance(request_id, str) or len(request_id) > MAX_ID_CHARS:
        raise InvalidInput(f"request id must be a string of at most {MAX_ID_CHARS} characters")
    params = _parameters(doc.get("parameters"), "request")
    binary_default = bool(_flag(params, "binary_data_output", "request"))
    tensors = doc.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise InvalidInput('"inputs" must be a non-empty list of tensors')
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in tensors:
        tensor = _object(tensor, "each input", _INPUT_KEYS)
        name = tensor.get("name")
        if not isinstance(name, str):
            raise InvalidInput("each input needs a string name")
        if name in inputs:
            raise InvalidInput(f"input '{clip(name)}' given twice")
        datatype = tensor.get("datatype")
        if not isinstance(datatype, str) or datatype not in NUMPY_DTYPES:
            raise InvalidInput(f"input '{clip(name)}': unknown datatype '{clip(datatype, 32)}'")
        shape = _shape(tensor.get("shape"), name)
        count = count_elements(name, shape)
        size = _parameters(tensor.get("parameters"), f"input '{clip(name)}'").get("binary_data_size")
        if ("data" in tensor) == (size is not None):
            raise InvalidInput(f"input '{clip(name)}' needs exactly one of data or parameters.binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"input '{clip(name)}': binary_data_size must be an integer >= 0")
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input '{clip(name)}': binary_data_size {size} runs past the {len(binary)} bytes of binary data"
                )
            chunk = binary[offset : offset + size]
            offset += size
            inputs[name] = _from_binary(name, datatype, shape, count, chunk)
        else:
            arr = strict_json.to_array(tensor["data"], datatype, name)
            if arr.size != count:
                raise InvalidInput(f"input '{clip(name)}': {arr.size} values, shape {clip(list(shape))} needs {count}")
            inputs[name] = arr.reshape(shape)
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data follow the last tensor that declares any")
    outputs, flags = _requested(doc.get("outputs"))
    return InferRequest(request_id, inputs, outputs, flags, binary_default)


def _from_binary(name: str, datatype: str, shape: tuple[int, ...], count: int, chunk: memoryview) -> np.ndarray:
    """One tensor from its binary data, its size checked against its shape before any array is made."""
    if datatype == BYTES:
        return decode_bytes(name, bytes(chunk), count).reshape(shape)
    dtype = numpy_dtype(datatype).newbyteorder("<")
    expected = count * dtype.itemsize
    if len(chunk) != expected:
        raise InvalidInput(
            f"input '{clip(name)}': binary data is {len(chunk)} bytes, shape {clip(list(shape))} of {datatype} "
            f"needs {expected}"
        )
    return np.frombuffer(chunk, dtype=dtype).reshape(shape)


def _requested(value: Any) -> tuple[tuple[str, ...] | None, dict[str, bool]]:
    """The outputs a request names (None: all) and each one's binary_data flag where it sets one."""
    if value is None:
        return None, {}
    if not isinstance(value, list):
        raise InvalidInput('"outputs" must be a list')
    names: list[str] = []
    flags: dict[str, bool] = {}
    for output in value:
        output = _object(output, "each requested output", _OUTPUT_KEYS)
        name = output.get("name")
        if not isinstance(name, str):
            raise InvalidInput("each requested output needs a string name")
        if name in names:
            raise InvalidInput(f"output '{clip(name)}' requested twice")
        params = _parameters(output.get("parameters"), f"output '{clip(name)}'")
        if params.get("classification"):
            raise InvalidInput(f"output '{clip(name)}': the classification extension is not supported")
        flag = _flag(params, "binary_data", f"output '{clip(name)}'")
        if flag is not None:
            flags[name] = flag
        names.append(name)
    return tuple(names) or None, flags


def encode_infer(
    name: str, version: int, request: InferRequest, outputs: Mapping[str, np.ndarray], order: Sequence[str]
) -> tuple[bytes, int | None]:
    """The response body and, when any output went binary, the length of its JSON header."""
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for out in order:
        arr = outputs.get(out)
        if arr is None:
            raise InvalidInput(f"unknown output '{clip(out)}'; the model has {', '.join(sorted(outputs))}")
        datatype = v2_from_numpy(arr.dtype)
        tensor: dict[str, Any] = {"name": out, "datatype": datatype, "shape": list(arr.shape)}
        if request.wants_binary(out):
            data = encode_bytes(arr) if datatype == BYTES else arr.astype(arr.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            tensor["data"] = strict_json.jsonable(arr.reshape(-1))
        tensors.append(tensor)
    doc: dict[str, Any] = {"model_name": name, "model_version": str(version), "outputs": tensors}
    if request.id:
        doc["id"] = request.id
    head = strict_json.dumps(doc)
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)


def _tensor(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def metadata_doc(meta: ModelMetadata) -> bytes:
    """GET /v2/models/{m}[/versions/{v}]: the model metadata response."""
    return strict_json.dumps(
        {
            "name": meta.name,
            "versions": [str(v) for v in meta.versions],
            "platform": meta.platform,
            "inputs": [_tensor(t) for t in meta.inputs],
            "outputs": [_tensor(t) for t in meta.outputs],
        }
    )


def _config_tensor(spec: TensorSpec) -> dict[str, Any]:
    data_type = "TYPE_STRING" if spec.datatype == BYTES else f"TYPE_{spec.datatype}"
    return {"name": spec.name, "data_type": data_type, "dims": list(spec.shape)}


def config_doc(config: ModelConfig) -> bytes:
    """GET …/config: the model configuration as Triton writes it in JSON (dynamic_batching for a batched model)."""
    doc: dict[str, Any] = {
        "name": config.name,
        "platform": config.platform,
        "version_policy": {"specific": {"versions": [str(v) for v in config.versions]}},
        "max_batch_size": config.max_batch_size,
        "input": [_config_tensor(t) for t in config.inputs],
        "output": [_config_tensor(t) for t in config.outputs],
    }
    if (policy := config.batching) is not None:
        doc["dynamic_batching"] = {
            "preferred_batch_size": list(policy.preferred_batch_sizes),
            "max_queue_delay_microseconds": policy.max_queue_delay_us,
            "default_queue_policy": {"max_queue_size": policy.max_queue_size},
        }
    return strict_json.dumps(doc)


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


def stats_doc(entries: Sequence[tuple[str, int, ModelStats]]) -> bytes:
    """GET …/stats: Triton's statistics response (phase durations add up successful requests, as Triton's)."""
    return strict_json.dumps(
        {
            "model_stats": [
                {
                    "name": name,
                    "version": str(version),
                    "last_inference": s.last_inference_ms,
                    "inference_count": s.success,
                    "execution_count": s.success,
                    "inference_stats": {
                        "success": _duration(s.success, s.success_ns),
                        "fail": _duration(s.failure, s.failure_ns),
                        "queue": _duration(s.success, s.queue_ns),
                        "compute_input": _duration(s.success, s.compute_input_ns),
                        "compute_infer": _duration(s.success, s.compute_infer_ns),
                        "compute_output": _duration(s.success, s.compute_output_ns),
                    },
                    "batch_stats": [],
                }
                for name, version, s in entries
            ]
        }
    )


def index_request(raw: bytes, max_depth: int = strict_json.MAX_DEPTH) -> bool:
    """POST /v2/repository/index: whether only ready models are asked for (an empty body asks for all)."""
    if not raw.strip():
        return False
    doc = _object(strict_json.loads(raw, max_depth), "request body", frozenset({"repository_name", "ready"}))
    ready = doc.get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidInput("ready must be true or false")
    return ready


def index_doc(statuses: Sequence[ModelStatus]) -> bytes:
    """The repository index: every version the caller may see, with its state and reason."""
    return strict_json.dumps(
        [{"name": s.name, "version": str(s.version), "state": s.state.name, "reason": s.reason} for s in statuses]
    )


def control_request(raw: bytes, allowed: frozenset[str], max_depth: int = strict_json.MAX_DEPTH) -> dict[str, Any]:
    """A load/unload body's parameters: empty, or {"parameters": {...}} with only `allowed` keys.

    Files in a load request are refused: sealgate serves only sealed, verified versions from its own
    repository (a load's `config` may choose a version only: dataplane.version_to_load).
    """
    if not raw.strip():
        return {}
    doc = _object(strict_json.loads(raw, max_depth), "request body", frozenset({"parameters"}))
    params = _parameters(doc.get("parameters"), "request")
    for key in params:
        if key not in allowed:
            raise InvalidInput(
                f"parameter '{clip(key, 64)}' is not accepted: sealgate serves only sealed, verified versions "
                "from its repository (no files in a load request)"
            )
    return params
