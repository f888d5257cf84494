"""REST explanations in KServe's V1 shape: `POST /v1/models/NAME[/versions/N]:explain`.

Request: `{"instances": [row, ...], "parameters": {"method": "kernel_shap"|"occlusion", "nsamples": N,
"output": NAME, "target": K}}` (parameters optional; each row flat or nested like the model's input).
Answer: `{"model_name", "model_version", "method", "output", "feature_shape", "evaluations",
"explanations": [{"base_value", "values", "output", "target"}, ...]}`, `values` shaped like one instance.
Strict JSON both ways (gateway/server/strict_json.py); unknown keys are refused, never ignored.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gateway.errors import InvalidInput, clip
from gateway.explain.engine import Query, Result
from gateway.server import strict_json

PARAMETERS = frozenset({"method", "nsamples", "output", "target"})


def parse(raw: bytes, max_depth: int) -> Query:
    """The Query of a request body; InvalidInput (400) for anything but the documented shape."""
    doc = strict_json.loads(raw, max_depth=max_depth)
    if not isinstance(doc, dict) or "instances" not in doc:
        raise InvalidInput('an explain request is a JSON object with "instances" (and optional "parameters")')
    extra = sorted(set(doc) - {"instances", "parameters"})
    if extra:
        raise InvalidInput(f"unknown key {clip(extra[0], 64)!r} in the explain request")
    instances, params = doc["instances"], doc.get("parameters", {})
    if not isinstance(instances, list):
        raise InvalidInput('"instances" must be a list of rows')
    if not isinstance(params, dict):
        raise InvalidInput('"parameters" must be an object')
    unknown = sorted(set(params) - PARAMETERS)
    if unknown:
        raise InvalidInput(f"unknown parameter {clip(unknown[0], 64)!r}: use {', '.join(sorted(PARAMETERS))}")
    method, output = params.get("method", ""), params.get("output", "")
    nsamples, target = params.get("nsamples", 0), params.get("target")
    if not isinstance(method, str) or not isinstance(output, str):
        raise InvalidInput('"method" and "output" must be strings')
    if not _count(nsamples) or (target is not None and not _count(target)):
        raise InvalidInput('"nsamples" and "target" must be non-negative integers')
    return Query(instances, method, nsamples, output, target)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


def document(name: str, version: int, result: Result) -> bytes:
    """The answer's JSON bytes."""
    shape = result.feature_shape
    return strict_json.dumps(
        {
            "model_name": name,
            "model_version": str(version),
            "method": result.method,
            "output": result.output,
            "feature_shape": list(shape),
            "evaluations": result.evaluations,
            "explanations": [
                {
                    "base_value": a.base_value,
                    "values": np.asarray(a.values).reshape(shape).tolist(),
                    "output": a.output,
                    "target": a.target,
                }
                for a in result.explanations
            ],
        }
    )
