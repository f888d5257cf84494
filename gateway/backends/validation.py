"""Request checks shared by every backend: names, datatypes and shapes against the model's specs.

Each refusal is an InvalidInput whose message says which tensor, what was expected and what came,
so a client's mistake is reported as INVALID_ARGUMENT before any runtime sees it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from gateway.backends.base import TensorSpec
from gateway.backends.dtypes import BYTES, v2_datatype_or_none
from gateway.errors import InvalidInput

_MAX_NAMES = 10


def _names(names: Iterable[str]) -> str:
    """A short, readable list of tensor names for error messages."""
    listed = list(names)
    shown = ", ".join(repr(name) for name in listed[:_MAX_NAMES])
    more = f", ... ({len(listed) - _MAX_NAMES} more)" if len(listed) > _MAX_NAMES else ""
    return f"[{shown}{more}]"


def _shape(shape: Sequence[int]) -> str:
    """A shape as the V2 protocol writes it: [-1, 64]."""
    return "[" + ", ".join(str(int(dim)) for dim in shape) + "]"


def _check_bytes(name: str, value: np.ndarray) -> None:
    """Every element of a BYTES object array must be bytes (numpy.bytes_ included)."""
    for index, element in enumerate(value.flat):
        if not isinstance(element, bytes):
            raise InvalidInput(
                f"input {name!r}: BYTES elements must be bytes, element {index} is {type(element).__name__}"
            )


def check_tensor(spec: TensorSpec, value: object) -> None:
    """Check one tensor against its spec: a numpy array of the right datatype and shape."""
    if not isinstance(value, np.ndarray):
        raise InvalidInput(f"input {spec.name!r}: expected a numpy array, got {type(value).__name__}")
    got = v2_datatype_or_none(value.dtype)
    if got != spec.datatype:
        shown = got if got is not None else f"numpy {value.dtype}"
        raise InvalidInput(f"input {spec.name!r}: expected datatype {spec.datatype}, got {shown}")
    if spec.rank_known and value.shape != spec.shape:
        if value.ndim != len(spec.shape):
            raise InvalidInput(
                f"input {spec.name!r}: expected shape {_shape(spec.shape)} (rank {len(spec.shape)}), "
                f"got shape {_shape(value.shape)} (rank {value.ndim})"
            )
        for axis, (want, have) in enumerate(zip(spec.shape, value.shape, strict=True)):
            if want != -1 and want != have:
                raise InvalidInput(
                    f"input {spec.name!r}: expected shape {_shape(spec.shape)}, got shape "
                    f"{_shape(value.shape)} (dimension {axis} must be {want}, got {have})"
                )
    if spec.datatype == BYTES and value.dtype.kind == "O":
        _check_bytes(spec.name, value)


def validate_inputs(
    model_inputs: Sequence[TensorSpec], inputs: Mapping[str, np.ndarray], specs: Mapping[str, TensorSpec] | None = None
) -> None:
    """Refuse unknown or missing inputs and any wrong datatype or shape (-1 matches any size).

    `specs` is `model_inputs` by name, for a backend that keeps it rather than rebuilding it per call.
    """
    if specs is None:
        specs = {spec.name: spec for spec in model_inputs}
    for name in inputs:
        if name not in specs:
            raise InvalidInput(f"unknown input {name!r}; the model's inputs are {_names(specs)}")
    for spec in model_inputs:
        if spec.name not in inputs:
            raise InvalidInput(f"missing input {spec.name!r}; the model's inputs are {_names(specs)}")
        check_tensor(spec, inputs[spec.name])


def validate_outputs(model_outputs: Sequence[TensorSpec], requested: Sequence[str] | None) -> tuple[str, ...]:
    """The output names to compute: all when none are requested, else the requested ones, deduplicated."""
    known = [spec.name for spec in model_outputs]
    if not requested:
        return tuple(known)
    if isinstance(requested, str):
        requested = (requested,)
    chosen: dict[str, None] = {}
    for name in requested:
        if name not in known:
            raise InvalidInput(f"unknown output {name!r}; the model's outputs are {_names(known)}")
        chosen[name] = None
    return tuple(chosen)
