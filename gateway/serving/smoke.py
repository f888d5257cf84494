"""The smoke inference a version must pass before it serves: one real call, every output finite.

The input is the `sample_input` of the model's provenance when it carries one
(`{"name", "datatype", "shape", "data"}`, or a list of them), otherwise zeros shaped from the model's
input specs with every dynamic dimension set to 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gateway.backends import LoadedModel, TensorSpec, numpy_dtype
from gateway.errors import GateFailed

SAMPLE_INPUT = "sample_input"
BYTES = "BYTES"


def zeros_for(spec: TensorSpec) -> np.ndarray:
    """A zero (or empty-bytes) tensor matching `spec`, dynamic dimensions set to 1."""
    shape = tuple(1 if dim == -1 else dim for dim in spec.shape) if spec.rank_known else (1,)
    if spec.datatype == BYTES:
        return np.full(shape, b"", dtype=object)
    return np.zeros(shape, dtype=numpy_dtype(spec.datatype))


def sample_inputs(model: LoadedModel, provenance: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The smoke-test inputs: provenance's sample where given, zeros for every other input."""
    given = provenance.get(SAMPLE_INPUT)
    entries = [given] if isinstance(given, Mapping) else list(given) if isinstance(given, list) else []
    if given is not None and not entries:
        raise GateFailed("smoke test failed: provenance sample_input must be an object or a list of objects")
    inputs: dict[str, np.ndarray] = {}
    for entry in entries:
        name, array = _parse_sample(entry)
        inputs[name] = array
    for spec in model.inputs:
        if spec.name not in inputs:
            inputs[spec.name] = zeros_for(spec)
    return inputs


def _parse_sample(entry: Any) -> tuple[str, np.ndarray]:
    """One `{"name", "datatype", "shape", "data"}` entry as a named numpy array."""
    try:
        name, datatype, shape, data = entry["name"], entry["datatype"], entry["shape"], entry["data"]
        if not isinstance(name, str):
            raise TypeError("name must be a string")
        if datatype == BYTES:
            flat = [v.encode() if isinstance(v, str) else bytes(v) for v in np.asarray(data, dtype=object).reshape(-1)]
            array = np.array(flat, dtype=object).reshape([int(d) for d in shape])
        else:
            array = np.asarray(data, dtype=numpy_dtype(datatype)).reshape([int(d) for d in shape])
    except Exception as exc:  # any malformed sample is a provenance defect, reported as the gate failing
        raise GateFailed(f"smoke test failed: provenance sample_input is malformed ({_one_line(exc)})") from None
    return name, array


def smoke_test(model: LoadedModel, provenance: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Run one inference and check that every numeric output is finite; raise GateFailed otherwise."""
    inputs = sample_inputs(model, provenance)
    try:
        outputs = model.infer(inputs)
    except Exception as exc:  # whatever the backend raised, the version must not serve
        raise GateFailed(f"smoke test failed: inference raised {_one_line(exc)}") from None
    if not outputs:
        raise GateFailed("smoke test failed: the model returned no outputs")
    for name, array in outputs.items():
        values = np.asarray(array)
        if values.dtype.kind in "fc" and not np.all(np.isfinite(values)):
            raise GateFailed(f"smoke test failed: output {name!r} is not finite (NaN or Inf)")
    return outputs


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__
