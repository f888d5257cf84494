"""Model backends: turn an opened, verified model (relative path -> bytes) into something that infers.

ONNX Runtime loads from bytes, TensorFlow through its in-memory `ram://` filesystem; neither writes
the plaintext model to disk. Importing this package imports neither runtime.
"""

from gateway.backends.base import BackendConfig, LoadedModel, TensorSpec
from gateway.backends.dtypes import (
    V2_DATATYPES,
    numpy_dtype,
    v2_from_numpy,
    v2_from_onnx,
    v2_from_tf,
)
from gateway.backends.loader import detect_framework, load_model
from gateway.backends.validation import validate_inputs, validate_outputs

__all__ = [
    "V2_DATATYPES",
    "BackendConfig",
    "LoadedModel",
    "TensorSpec",
    "detect_framework",
    "load_model",
    "numpy_dtype",
    "v2_from_numpy",
    "v2_from_onnx",
    "v2_from_tf",
    "validate_inputs",
    "validate_outputs",
]
