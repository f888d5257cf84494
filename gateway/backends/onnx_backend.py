"""ONNX Runtime backend: an InferenceSession built from bytes, so a decrypted model never touches disk.

External weight files (`model.onnx.data`) are inlined from the artifact's in-memory files, and the model
policy (onnx_policy) is checked on exactly the bytes ONNX Runtime then loads: no reference to a file is
ever left for ONNX Runtime to resolve.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnx import ModelProto, ValueInfoProto
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from gateway.backends.base import BackendConfig, TensorSpec
from gateway.backends.dtypes import BYTES, numpy_dtype, v2_from_onnx
from gateway.backends.onnx_policy import checked_model_bytes, inline_external_data, session_config
from gateway.backends.validation import validate_inputs, validate_outputs
from gateway.errors import InvalidInput, Unavailable, UnsupportedFormat

PLATFORM = "onnxruntime_onnx"
CPU = "CPUExecutionProvider"

log = logging.getLogger(__name__)

_LOAD_ERRORS = (
    ort_state.EPFail,
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NoSuchFile,
    ort_state.NoModel,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
)


def resolve_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """The configured providers this onnxruntime build offers, in order, with CPU always last resort."""
    chosen: list[str] = []
    for provider in requested:
        if provider in chosen:
            continue
        if provider in available:
            chosen.append(provider)
        else:
            log.warning(
                "execution provider %s is configured but not available in this onnxruntime build "
                "(available: %s); skipping it",
                provider,
                ", ".join(available),
            )
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


def _session_options(config: BackendConfig) -> ort.SessionOptions:
    """Session options that read and write nothing on disk: no optimized-model file, no profiling, no
    external data outside an empty private folder, no custom op libraries (none is ever registered).
    """
    options = ort.SessionOptions()
    for key, value in session_config().items():
        options.add_session_config_entry(key, value)
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = False
    return options


def _declared_ranks(model: ModelProto) -> dict[str, bool]:
    """Whether each graph input/output declares a shape (ONNX Runtime shows unknown rank as [])."""

    def has_shape(info: ValueInfoProto) -> bool:
        return bool(info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"))

    return {info.name: has_shape(info) for info in (*model.graph.input, *model.graph.output)}


def _spec(arg: ort.NodeArg, rank_known: bool) -> TensorSpec:
    """A TensorSpec from an ONNX Runtime input/output description; symbolic dims become -1."""
    try:
        datatype = v2_from_onnx(arg.type)
    except UnsupportedFormat as exc:
        raise UnsupportedFormat(f"tensor {arg.name!r}: {exc}") from None
    if not rank_known:
        return TensorSpec(arg.name, datatype, (), rank_known=False)
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in arg.shape)
    return TensorSpec(arg.name, datatype, shape)


def _to_ort(spec: TensorSpec, value: np.ndarray) -> np.ndarray:
    """A validated input in the form ONNX Runtime reads: native, contiguous; BYTES as UTF-8 str."""
    if spec.datatype != BYTES:
        if value.flags.c_contiguous and value.dtype.isnative:
            return value  # validated: already the spec's datatype
        return np.ascontiguousarray(value, dtype=numpy_dtype(spec.datatype))
    out = np.empty(value.shape, dtype=object)
    flat = out.reshape(-1)
    for index, element in enumerate(value.flat):
        try:
            flat[index] = bytes(element).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(
                f"input {spec.name!r}: ONNX string tensors hold UTF-8 text; element {index} is not UTF-8"
            ) from None
    return out


def _from_ort(value: np.ndarray) -> np.ndarray:
    """An ONNX Runtime output as sealgate returns it: string tensors become object arrays of bytes."""
    if value.dtype.kind not in "OU":
        return value
    out = np.empty(value.shape, dtype=object)
    flat = out.reshape(-1)
    for index, element in enumerate(value.flat):
        flat[index] = element.encode("utf-8") if isinstance(element, str) else bytes(element)
    return out


class OnnxModel:
    """An ONNX model served by one InferenceSession; ONNX Runtime allows concurrent run() calls."""

    platform = PLATFORM

    def __init__(
        self,
        session: ort.InferenceSession,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
    ) -> None:
        """Wrap a ready session and the specs read from it."""
        self._session: ort.InferenceSession | None = session
        self.inputs = inputs
        self.outputs = outputs
        self._input_specs = {spec.name: spec for spec in inputs}
        self._output_names = [spec.name for spec in outputs]
        self.providers: tuple[str, ...] = tuple(session.get_providers())

    def infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Validate, run, and return the requested outputs by name."""
        session = self._session
        if session is None:
            raise Unavailable("model is closed")
        validate_inputs(self.inputs, inputs, self._input_specs)
        names = list(validate_outputs(self.outputs, outputs)) if outputs else self._output_names
        feed = {}
        for spec in self.inputs:  # plain loops: this runs on every request
            feed[spec.name] = _to_ort(spec, inputs[spec.name])
        try:
            results = session.run(names, feed)
        except ort_state.InvalidArgument as exc:
            log.warning("ONNX Runtime refused a request: %s", exc)
            raise InvalidInput("the model could not run on these inputs (ONNX Runtime refused them)") from exc
        out = {}
        for name, result in zip(names, results, strict=True):
            out[name] = _from_ort(result) if result.dtype.kind in "OU" else result
        return out

    def close(self) -> None:
        """Drop the session; runs in progress hold their own reference and finish."""
        self._session = None


def prepare_onnx(model_path: str, files: Mapping[str, bytes]) -> tuple[bytes, dict[str, bool]]:
    """Parse, inline external data and check the model policy (in the gateway's process): the checked bytes
    ONNX Runtime may load, and whether each graph input/output declares a rank."""
    data = files[model_path]
    proto = ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError:
        raise UnsupportedFormat(f"{model_path} is not an ONNX model (protobuf does not parse)") from None
    inline_external_data(proto, model_path, files)
    checked = checked_model_bytes(proto)  # the policy's check and ORT's input are the same bytes
    ranks = _declared_ranks(proto)
    del proto
    return checked, ranks


def session_model(
    model_path: str,
    checked: bytes,
    ranks: Mapping[str, bool],
    config: BackendConfig,
    options: ort.SessionOptions | None = None,
) -> OnnxModel:
    """An OnnxModel on a session built from bytes `prepare_onnx` checked (here or in an isolated worker)."""
    options = options if options is not None else _session_options(config)
    providers = resolve_providers(config.providers, ort.get_available_providers())
    try:
        session = ort.InferenceSession(checked, options, providers=providers)
    except _LOAD_ERRORS as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedFormat(f"ONNX Runtime cannot load {model_path}: {first_line}") from exc
    active = session.get_providers()
    if active != providers:
        log.warning("ONNX Runtime is using %s, not the configured %s", ", ".join(active), ", ".join(providers))

    inputs = tuple(_spec(arg, ranks.get(arg.name, True)) for arg in session.get_inputs())
    outputs = tuple(_spec(arg, ranks.get(arg.name, True)) for arg in session.get_outputs())
    log.info("loaded ONNX model %s on %s", model_path, ", ".join(active))
    return OnnxModel(session, inputs, outputs)


def load_onnx(model_path: str, files: Mapping[str, bytes], config: BackendConfig) -> OnnxModel:
    """Build an OnnxModel from the opened files, `model_path` naming the .onnx file among them."""
    checked, ranks = prepare_onnx(model_path, files)
    return session_model(model_path, checked, ranks, config)
