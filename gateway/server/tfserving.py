"""TF Serving's gRPC API over grpc.aio: `tensorflow.serving.PredictionService` (Predict, Classify, Regress,
GetModelMetadata) and `ModelService.GetModelStatus`, served by the data plane. A front end only.

Each method declares its guard (`infer` on the request's `model_spec.name`); the version is
`model_spec.version` or `model_spec.version_label` (`stable` / `canary`, resolved by the data plane), the
default version otherwise. A sealgate model has one signature, `serving_default`. TensorProto contents are
checked against the bytes received before anything is allocated: `tensor_content` must be exactly the
shape's size, typed values exactly its element count, except TF's one-value fill, which is allowed only
up to `max_fill_bytes` (the message limit: no larger than what a client could have sent in full).
Classify and Regress follow the REST rule (gateway/server/tfs_rest.py): a model declares such a
signature by an output named `scores` (classify, FP32 [N, K], optional BYTES `classes` [N, K]) or
`outputs` (regress, FP32 [N] or [N, 1]); any other model is refused with INVALID_ARGUMENT, naming it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gateway import versions
from gateway.backends.base import TensorSpec
from gateway.backends.dtypes import BYTES, v2_from_numpy
from gateway.errors import InvalidInput, NotFound, clip
from gateway.protos.tensorflow.core.framework import tensor_pb2, types_pb2
from gateway.protos.tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2
from gateway.protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from gateway.server.dataplane import DataPlane
from gateway.server.guard import Call, Guard, PeerCache, guarded
from gateway.server.limits import Slots
from gateway.server.tensors import THREAD_DECODE_BYTES, count_elements
from gateway.serving.status import ModelStatus, ServedModel

SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
SIGNATURE_DEF = "signature_def"
MODEL_FIELD = "model_spec.name"
SCORES, CLASSES, REGRESSION = "scores", "classes", "outputs"
DEFAULT_FILL_BYTES = 4 << 20

_DT = types_pb2.DataType
# TF dtype -> (numpy dtype, typed field); raw `tensor_content` is little-endian, C order
_DTYPES: dict[int, tuple[np.dtype, str]] = {
    _DT.DT_FLOAT: (np.dtype("<f4"), "float_val"),
    _DT.DT_DOUBLE: (np.dtype("<f8"), "double_val"),
    _DT.DT_HALF: (np.dtype("<f2"), "half_val"),
    _DT.DT_INT8: (np.dtype("i1"), "int_val"),
    _DT.DT_INT16: (np.dtype("<i2"), "int_val"),
    _DT.DT_INT32: (np.dtype("<i4"), "int_val"),
    _DT.DT_INT64: (np.dtype("<i8"), "int64_val"),
    _DT.DT_UINT8: (np.dtype("u1"), "int_val"),
    _DT.DT_UINT16: (np.dtype("<u2"), "int_val"),
    _DT.DT_UINT32: (np.dtype("<u4"), "uint32_val"),
    _DT.DT_UINT64: (np.dtype("<u8"), "uint64_val"),
    _DT.DT_BOOL: (np.dtype("?"), "bool_val"),
    _DT.DT_STRING: (np.dtype(object), "string_val"),
}
_TF_OF_V2 = {
    "BOOL": _DT.DT_BOOL,
    "UINT8": _DT.DT_UINT8,
    "UINT16": _DT.DT_UINT16,
    "UINT32": _DT.DT_UINT32,
    "UINT64": _DT.DT_UINT64,
    "INT8": _DT.DT_INT8,
    "INT16": _DT.DT_INT16,
    "INT32": _DT.DT_INT32,
    "INT64": _DT.DT_INT64,
    "FP16": _DT.DT_HALF,
    "FP32": _DT.DT_FLOAT,
    "FP64": _DT.DT_DOUBLE,
    BYTES: _DT.DT_STRING,
}
_STATE = get_model_status_pb2.ModelVersionStatus.State
# sealgate's version states as TF Serving names them: a version stored for fetch only is tracked, never loaded
TFS_STATES = {
    "LOADING": _STATE.LOADING,
    "SERVING": _STATE.AVAILABLE,
    "AVAILABLE": _STATE.START,
    "REFUSED": _STATE.END,
    "RETIRED": _STATE.END,
}
_LITTLE_ENDIAN_HOST = sys.byteorder == "little"


def _label(name: str) -> str:
    """How a message names a client's tensor: quoted, clipped."""
    return f"input '{clip(name)}'"


def _dtype_name(dtype: int) -> str:
    """A TF DataType's name for a message (the number when it has none)."""
    try:
        return str(_DT.Name(dtype))
    except ValueError:
        return str(dtype)


def decode_tensor(name: str, tensor: tensor_pb2.TensorProto, max_fill_bytes: int = DEFAULT_FILL_BYTES) -> np.ndarray:
    """One TensorProto as a numpy array, every declared size checked against the bytes received first."""
    if tensor.dtype not in _DTYPES:
        raise InvalidInput(f"{_label(name)}: dtype {_dtype_name(tensor.dtype)} is not served")
    dtype, field = _DTYPES[tensor.dtype]
    if tensor.tensor_shape.unknown_rank:
        raise InvalidInput(f"{_label(name)}: a request tensor needs a known shape")
    shape = tuple(d.size for d in tensor.tensor_shape.dim)
    count = count_elements(name, shape)
    values = getattr(tensor, field)
    if tensor.tensor_content:
        if tensor.dtype == _DT.DT_STRING:
            raise InvalidInput(f"{_label(name)}: DT_STRING values go in string_val, not tensor_content")
        if values:
            raise InvalidInput(f"{_label(name)}: both tensor_content and {field} are set")
        expected = count * dtype.itemsize
        if len(tensor.tensor_content) != expected:
            raise InvalidInput(
                f"{_label(name)}: tensor_content is {len(tensor.tensor_content)} bytes, shape {clip(list(shape))} "
                f"of {_dtype_name(tensor.dtype)} needs {expected}"
            )
        return np.frombuffer(tensor.tensor_content, dtype=dtype).reshape(shape)
    if len(values) == 1 and count > 1:  # TF's fill: one value repeated over the shape
        if count * dtype.itemsize > max_fill_bytes:
            raise InvalidInput(
                f"{_label(name)}: one value cannot fill shape {clip(list(shape))} (more than {max_fill_bytes} bytes)"
            )
        return np.full(shape, _typed(name, tensor.dtype, values, dtype)[0], dtype=dtype)
    if len(values) != count:
        raise InvalidInput(f"{_label(name)}: {len(values)} values in {field}, shape {clip(list(shape))} needs {count}")
    return _typed(name, tensor.dtype, values, dtype).reshape(shape)


def _typed(name: str, tf_dtype: int, values: Sequence[Any], dtype: np.dtype) -> np.ndarray:
    """The typed values of a TensorProto as a flat array of `dtype` (half_val holds FP16 bit patterns)."""
    if tf_dtype == _DT.DT_STRING:
        out = np.empty(len(values), dtype=object)
        out[:] = list(values)
        return out
    try:
        if tf_dtype == _DT.DT_HALF:
            return np.array(list(values), dtype=np.uint16).view(np.float16)
        return np.array(list(values), dtype=dtype)
    except (OverflowError, ValueError):
        raise InvalidInput(f"{_label(name)}: a value is outside the range of {_dtype_name(tf_dtype)}") from None


def encode_tensor(arr: np.ndarray) -> tensor_pb2.TensorProto:
    """A numpy output as a TensorProto: raw little-endian tensor_content, or string_val for BYTES."""
    datatype = v2_from_numpy(arr.dtype)
    tensor = tensor_pb2.TensorProto(dtype=_TF_OF_V2[datatype])
    for dim in arr.shape:
        tensor.tensor_shape.dim.add(size=dim)
    if datatype == BYTES:
        tensor.string_val.extend(x if isinstance(x, bytes) else str(x).encode() for x in arr.reshape(-1))
    elif _LITTLE_ENDIAN_HOST and arr.dtype.byteorder != ">":
        tensor.tensor_content = np.ascontiguousarray(arr).tobytes()
    else:
        tensor.tensor_content = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    return tensor


def _tensor_info(spec: TensorSpec) -> meta_graph_pb2.TensorInfo:
    """A served tensor's signature entry (-1 for a dynamic dimension)."""
    info = meta_graph_pb2.TensorInfo(name=spec.name, dtype=_TF_OF_V2.get(spec.datatype, _DT.DT_INVALID))
    if spec.rank_known:
        for dim in spec.shape:
            info.tensor_shape.dim.add(size=dim)
    else:
        info.tensor_shape.unknown_rank = True
    return info


def _spec(name: str, version: int, signature: str = "") -> model_pb2.ModelSpec:
    """The effective model spec of an answer."""
    spec = model_pb2.ModelSpec(name=name, signature_name=signature)
    spec.version.value = version
    return spec


def _require(served: ServedModel, kind: str, output: str, shape: str) -> None:
    """InvalidInput unless the model declares the output a `kind` signature needs (the REST rule)."""
    if output not in {t.name for t in served.model.outputs}:
        raise InvalidInput(
            f"model {served.name!r} has no {kind} signature: a model declares one by an output named "
            f"{output!r} ({shape}); this one serves only predict"
        )


def _feature_values(feature: Any) -> list[Any]:
    """The values of one tf.Example feature, whichever list holds them."""
    kind = feature.WhichOneof("kind")
    return list(getattr(feature, kind).value) if kind else []


def _examples(request: Any, specs: Mapping[str, TensorSpec]) -> tuple[dict[str, np.ndarray], int]:
    """Inputs from a Classify/Regress request's tf.Examples (each merged over the context): one row each."""
    kind = request.input.WhichOneof("kind")
    if kind is None:
        raise InvalidInput("the request has no input examples")
    holder = getattr(request.input, kind)
    context = dict(holder.context.features.feature) if kind == "example_list_with_context" else {}
    examples = list(holder.examples)
    if not examples:
        raise InvalidInput("the request has no input examples")
    rows = [{**context, **dict(e.features.feature)} for e in examples]
    keys = set(rows[0])
    if any(set(r) != keys for r in rows):
        raise InvalidInput("every example must name the same features")
    inputs = {}
    for key in sorted(keys):
        spec = specs.get(key)
        if spec is None:
            raise InvalidInput(f"unknown feature '{clip(key)}'; the model's inputs are {', '.join(sorted(specs))}")
        values = [_feature_values(r[key]) for r in rows]
        if len({len(v) for v in values}) != 1:
            raise InvalidInput(f"feature '{clip(key)}' has a different number of values in different examples")
        try:
            dtype = np.dtype(object) if spec.datatype == BYTES else _DTYPES[_TF_OF_V2[spec.datatype]][0]
            inputs[key] = np.array(values, dtype=dtype)
        except (OverflowError, ValueError, TypeError):
            raise InvalidInput(f"feature '{clip(key)}': values do not fit {spec.datatype}") from None
    return inputs, len(rows)


class _TFServing:
    """What both services share: the data plane, the guard and its slots, and version resolution."""

    def __init__(
        self,
        dataplane: DataPlane,
        guard: Guard,
        peers: PeerCache | None = None,
        slots: Slots | None = None,
        max_fill_bytes: int = DEFAULT_FILL_BYTES,
    ) -> None:
        """Serve `dataplane`'s models, guarded by `guard`; one TF fill value expands to `max_fill_bytes` at most."""
        self.dataplane = dataplane
        self.guard = guard
        self.peers = peers or PeerCache()
        self.slots = slots if slots is not None else Slots(0, 0)
        self.max_fill_bytes = max_fill_bytes

    def _version(self, spec: model_pb2.ModelSpec) -> int | None:
        """The version a ModelSpec asks for: a number, a label (`stable`, `canary`), or None for the default."""
        choice = spec.WhichOneof("version_choice")
        if choice == "version":
            return versions.check_version(spec.version.value)
        if choice == "version_label":
            return self.dataplane.label_version(spec.name, spec.version_label)
        return None

    def _served(self, spec: model_pb2.ModelSpec, call: Call) -> ServedModel:
        """The served model a request's spec names (its one signature only), noted in the audit record."""
        if spec.signature_name not in ("", SIGNATURE):
            raise InvalidInput(
                f"the model has no signature '{clip(spec.signature_name, 64)}': its one signature is {SIGNATURE!r}"
            )
        served = self.dataplane.model(spec.name, self._version(spec))
        call.version = str(served.version)
        return served

    async def _run_examples(
        self, request: Any, call: Call, kind: str, output: str, shape: str
    ) -> tuple[ServedModel, dict[str, np.ndarray]]:
        """Run a Classify/Regress request's examples through its model's `output`: (served, values, rows)."""
        served = self._served(request.model_spec, call)
        _require(served, kind, output, shape)
        specs = {t.name: t for t in served.model.inputs}
        outputs = await self.dataplane.run(served, lambda: _examples(request, specs)[0], lambda out: out)
        return served, outputs


class PredictionService(_TFServing, prediction_service_pb2_grpc.PredictionServiceServicer):
    """`tensorflow.serving.PredictionService` over the data plane; every method's guard is declared on it."""

    @guarded("infer", model=MODEL_FIELD)
    async def Predict(self, request: predict_pb2.PredictRequest, call: Call) -> predict_pb2.PredictResponse:
        """One inference on the model's one signature; `output_filter` picks outputs (all by default)."""
        served = self._served(request.model_spec, call)
        requested = list(request.output_filter) or None
        order = requested or [t.name for t in served.model.outputs]
        limit = self.max_fill_bytes

        def decode() -> dict[str, np.ndarray]:
            return {name: decode_tensor(name, tensor, limit) for name, tensor in request.inputs.items()}

        def encode(outputs: dict[str, np.ndarray]) -> predict_pb2.PredictResponse:
            response = predict_pb2.PredictResponse(model_spec=_spec(served.name, served.version, SIGNATURE))
            for name in order:
                if name in outputs:
                    response.outputs[name].CopyFrom(encode_tensor(outputs[name]))
            return response

        off_loop = request.ByteSize() > THREAD_DECODE_BYTES
        response: predict_pb2.PredictResponse = await self.dataplane.run(
            served, decode, encode, requested, decode_off_loop=off_loop
        )
        return response

    @guarded("infer", model=MODEL_FIELD)
    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, call: Call
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """The model's one signature definition (`signature_def`, the one metadata field TF Serving has)."""
        fields = list(request.metadata_field)
        if not fields:
            raise InvalidInput(f"metadata_field must name at least one field: {SIGNATURE_DEF!r}")
        unknown = [f for f in fields if f != SIGNATURE_DEF]
        if unknown:
            raise InvalidInput(f"metadata field '{clip(unknown[0], 64)}' is not supported: use {SIGNATURE_DEF!r}")
        served = self._served(request.model_spec, call)
        meta = self.dataplane.metadata(served.name, served.version)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        signature = signatures.signature_def[SIGNATURE]
        signature.method_name = PREDICT_METHOD
        for spec in meta.inputs:
            signature.inputs[spec.name].CopyFrom(_tensor_info(spec))
        for spec in meta.outputs:
            signature.outputs[spec.name].CopyFrom(_tensor_info(spec))
        response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=_spec(meta.name, meta.version))
        response.metadata[SIGNATURE_DEF].Pack(signatures)
        return response

    @guarded("infer", model=MODEL_FIELD)
    async def Classify(
        self, request: classification_pb2.ClassificationRequest, call: Call
    ) -> classification_pb2.ClassificationResponse:
        """Classes and scores per example, from a model with a `scores` output (and optional `classes`)."""
        shape = "FP32 [N, K], with an optional BYTES output 'classes' [N, K]"
        served, outputs = await self._run_examples(request, call, "classify", SCORES, shape)
        scores, names = np.asarray(outputs[SCORES], dtype=np.float32), outputs.get(CLASSES)
        if scores.ndim != 2 or (names is not None and np.shape(names) != scores.shape):
            raise InvalidInput(f"model {served.name!r}: outputs {SCORES!r} / {CLASSES!r} are not [N, K]")
        response = classification_pb2.ClassificationResponse(model_spec=_spec(served.name, served.version, SIGNATURE))
        for i, row in enumerate(scores):
            item = response.result.classifications.add()
            for k, score in enumerate(row):
                label = str(k) if names is None else _text(names[i][k])
                item.classes.add(label=label, score=float(score))
        return response

    @guarded("infer", model=MODEL_FIELD)
    async def Regress(self, request: regression_pb2.RegressionRequest, call: Call) -> regression_pb2.RegressionResponse:
        """One value per example, from a model with an `outputs` output."""
        served, outputs = await self._run_examples(request, call, "regress", REGRESSION, "FP32 [N] or [N, 1]")
        values = np.asarray(outputs[REGRESSION], dtype=np.float32).reshape(-1)
        response = regression_pb2.RegressionResponse(model_spec=_spec(served.name, served.version, SIGNATURE))
        for value in values:
            response.result.regressions.add(value=float(value))
        return response


def _text(value: Any) -> str:
    """A class label as text (BYTES outputs hold bytes)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class ModelService(_TFServing, model_service_pb2_grpc.ModelServiceServicer):
    """`tensorflow.serving.ModelService` (GetModelStatus) over the data plane."""

    @guarded("infer", model=MODEL_FIELD)
    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, call: Call
    ) -> get_model_status_pb2.GetModelStatusResponse:
        """Every stored version's state, or the one version the spec names."""
        spec = request.model_spec
        version = self._version(spec)
        entries = [s for s in self.dataplane.status(spec.name) if version is None or s.version == version]
        if not entries:
            raise NotFound(f"model '{clip(spec.name)}'" + (f" has no version {version}" if version else " not found"))
        if version is not None:
            call.version = str(version)
        return get_model_status_pb2.GetModelStatusResponse(model_version_status=[_status(s) for s in entries])


def _status(st: ModelStatus) -> get_model_status_pb2.ModelVersionStatus:
    """One version's TF Serving status: a refused version ends with FAILED_PRECONDITION and its reason."""
    refused = st.state.name == "REFUSED"
    code = error_codes_pb2.Code.FAILED_PRECONDITION if refused else error_codes_pb2.Code.OK
    return get_model_status_pb2.ModelVersionStatus(
        version=st.version,
        state=TFS_STATES.get(st.state.name, _STATE.UNKNOWN),
        status={"error_code": code, "error_message": clip(st.reason, 512) if refused else ""},
    )
