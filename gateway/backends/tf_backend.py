"""TensorFlow backend: a SavedModel unpacked into TF's in-process `ram://` filesystem, never to disk.

TensorFlow is imported here, on first load, and nowhere else: serving ONNX models alone never pays
for it. The ram:// copy is removed as soon as the model is loaded (variables and assets are read
at load time), so the plaintext lives only in the loaded model's memory.
"""

from __future__ import annotations

import importlib
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from gateway.backends.base import BackendConfig, TensorSpec
from gateway.backends.dtypes import BYTES, numpy_dtype, v2_from_tf
from gateway.backends.tf_policy import check_saved_model
from gateway.backends.validation import validate_inputs, validate_outputs
from gateway.errors import InvalidInput, Unavailable, UnsupportedFormat

PLATFORM = "tensorflow_savedmodel"
SIGNATURE = "serving_default"
RAM_ROOT = "ram://sealgate"

log = logging.getLogger(__name__)


def _tensorflow() -> ModuleType:
    """Import TensorFlow on demand, quietly (its C++ start-up log is noise in a server's output)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return importlib.import_module("tensorflow")


def _apply_threads(tf: ModuleType, config: BackendConfig) -> None:
    """Set TF's process-wide thread pools if asked; TF allows it only before its runtime starts."""
    wanted = (
        (
            config.intra_op_threads,
            tf.config.threading.get_intra_op_parallelism_threads,
            tf.config.threading.set_intra_op_parallelism_threads,
        ),
        (
            config.inter_op_threads,
            tf.config.threading.get_inter_op_parallelism_threads,
            tf.config.threading.set_inter_op_parallelism_threads,
        ),
    )
    for count, getter, setter in wanted:
        if count and getter() != count:
            try:
                setter(count)
            except RuntimeError:
                log.warning("TensorFlow is already running; its thread pools stay at %d, not %d", getter(), count)


def _spec(name: str, tensor_spec: Any) -> TensorSpec:
    """A TensorSpec from a tf.TensorSpec of a signature; unknown dims become -1."""
    try:
        datatype = v2_from_tf(tensor_spec.dtype)
    except UnsupportedFormat as exc:
        raise UnsupportedFormat(f"tensor {name!r}: {exc}") from None
    dims = tensor_spec.shape.as_list() if tensor_spec.shape.rank is not None else None
    if dims is None:
        return TensorSpec(name, datatype, (), rank_known=False)
    return TensorSpec(name, datatype, tuple(-1 if dim is None else int(dim) for dim in dims))


def _unpack(tf: ModuleType, root: str, files: Mapping[str, bytes]) -> None:
    """Write the opened files under a ram:// folder, keeping their relative layout."""
    for relative, data in files.items():
        path = f"{root}/{relative}"
        tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
        with tf.io.gfile.GFile(path, "wb") as handle:
            handle.write(data)


class TensorFlowModel:
    """A SavedModel's `serving_default` signature; concrete functions may be called concurrently."""

    platform = PLATFORM

    def __init__(
        self,
        tf: ModuleType,
        loaded: Any,
        function: Any,
        inputs: tuple[TensorSpec, ...],
        outputs: tuple[TensorSpec, ...],
    ) -> None:
        """Keep the loaded object beside its serving function, so its variables live as long as the model."""
        self._tf = tf
        self._state: tuple[Any, Any] | None = (loaded, function)
        self.inputs = inputs
        self.outputs = outputs

    def infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Validate, convert numpy -> tensors, call the signature, convert back."""
        state = self._state  # one read: the loaded object stays alive for this call even if closed meanwhile
        if state is None:
            raise Unavailable("model is closed")
        function = state[1]
        validate_inputs(self.inputs, inputs)
        names = validate_outputs(self.outputs, outputs)
        tf = self._tf
        feed = {}
        for spec in self.inputs:
            value = inputs[spec.name]
            if spec.datatype != BYTES:
                value = np.ascontiguousarray(value, dtype=numpy_dtype(spec.datatype))
            feed[spec.name] = tf.convert_to_tensor(value)
        try:
            result = function(**feed)
        except tf.errors.InvalidArgumentError as exc:
            log.warning("TensorFlow refused a request: %s", exc.message)
            raise InvalidInput("the model could not run on these inputs (TensorFlow refused them)") from exc
        return {name: np.asarray(result[name].numpy()) for name in names}

    def close(self) -> None:
        """Drop the function and its variables; calls in progress hold their own references."""
        self._state = None


def load_tensorflow(files: Mapping[str, bytes], config: BackendConfig) -> TensorFlowModel:
    """Check the SavedModel against the op policy, then load it through ram:// and take its serving signature."""
    tf = _tensorflow()
    check_saved_model(files)  # before anything of the model is unpacked or run
    _apply_threads(tf, config)
    root = f"{RAM_ROOT}/{uuid.uuid4().hex}"
    try:
        _unpack(tf, root, files)
        try:
            loaded = tf.saved_model.load(root)
        except Exception as exc:  # TF raises OpError, ValueError, DecodeError, OSError... for bad models
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise UnsupportedFormat(
                f"TensorFlow cannot load the SavedModel: {type(exc).__name__}: {detail}"[:500]
            ) from exc
    finally:
        if tf.io.gfile.exists(root):
            tf.io.gfile.rmtree(root)

    signatures = getattr(loaded, "signatures", {})
    if SIGNATURE not in signatures:
        raise UnsupportedFormat(
            f"the SavedModel has no {SIGNATURE!r} signature (it has: {', '.join(sorted(signatures)) or 'none'})"
        )
    function = signatures[SIGNATURE]
    args, kwargs = function.structured_input_signature
    if args:
        raise UnsupportedFormat(f"signature {SIGNATURE!r} takes positional inputs; serving needs named inputs")
    if not isinstance(function.structured_outputs, Mapping):
        raise UnsupportedFormat(f"signature {SIGNATURE!r} does not return a dict of named outputs")
    inputs = tuple(_spec(name, spec) for name, spec in sorted(kwargs.items()))
    outputs = tuple(_spec(name, spec) for name, spec in sorted(function.structured_outputs.items()))
    log.info("loaded TensorFlow SavedModel (%d inputs, %d outputs)", len(inputs), len(outputs))
    return TensorFlowModel(tf, loaded, function, inputs, outputs)
