"""The release path's part of drift monitoring: reference histograms of the evaluation/public data, recorded in
the sealed artifact's provenance (`drift_reference`) for the gateway to compare live inputs against.

Only per-feature bin edges and counts are recorded (gateway/monitor/reference.py), never a row; the record
says which data it came from. It is separate from the explainer's `reference.npz` background sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gateway.errors import InvalidInput
from gateway.monitor import reference

KEY = reference.KEY


def onnx_input_names(onnx_bytes: bytes) -> list[str]:
    """The graph inputs of an ONNX model that are fed at run time (initializers excluded)."""
    import onnx

    graph = onnx.load_model_from_string(onnx_bytes).graph
    weights = {init.name for init in graph.initializer}
    return [value.name for value in graph.input if value.name not in weights]


def reference_for(x: np.ndarray, input_name: str, *, source: str, bins: int = reference.DEFAULT_BINS) -> dict[str, Any]:
    """The `drift_reference` record of one input fed `x` (rows first), from data described by `source`."""
    return reference.build({input_name: x}, source=source, bins=bins)


def with_drift_reference(
    provenance: Mapping[str, Any], x: np.ndarray, onnx_bytes: bytes, *, source: str
) -> dict[str, Any]:
    """A copy of `provenance` with the reference histograms of `x` for the ONNX model's single input.

    A record already there is kept (the caller chose it); InvalidInput for a model with several inputs.
    """
    record = dict(provenance)
    if KEY in record:
        return record
    names = onnx_input_names(onnx_bytes)
    if len(names) != 1:
        raise InvalidInput(
            f"drift reference: the model has {len(names)} inputs; record one per input with reference.build"
        )
    record[KEY] = reference_for(x, names[0], source=source)
    return record
