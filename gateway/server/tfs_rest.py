"""TF Serving's REST API documents: predict, classify, regress, model status and metadata. Translation only.

Predict takes every documented form: rows (`instances`, a list of values for a single-input model or of
objects keyed by input name, for any model) and columns (`inputs`, a value or an object keyed by input
name); binary strings may be given as {"b64": "..."}; `signature_name` may only name the one signature a
sealgate model has, `serving_default`.

Classify and regress run the same single signature on `examples` (objects keyed by input name, each merged
over the optional `context`), for a model that declares the shape TF Serving's classification and
regression signatures have, by its output names: a classifier has an output `scores` (FP32 [N, K]) and
optionally `classes` (BYTES [N, K]; absent: the class index); a regressor has an output `outputs` (FP32
[N] or [N, 1]). Any other model answers 400, naming what it would need.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from gateway.backends.base import TensorSpec
from gateway.backends.dtypes import BYTES
from gateway.errors import InvalidInput, NotFound, clip
from gateway.server import strict_json
from gateway.server.dataplane import DataPlane, ModelMetadata
from gateway.serving.status import ServedModel

Infer = Callable[[ServedModel, Mapping[str, np.ndarray]], dict[str, np.ndarray]]
SIGNATURE = "serving_default"
SCORES, CLASSES, REGRESSION = "scores", "classes", "outputs"
_TFS_STATE = {"SERVING": "AVAILABLE", "LOADING": "LOADING", "AVAILABLE": "AVAILABLE", "RETIRED": "END"}
_TF_DTYPES = {
    "BOOL": "DT_BOOL",
    "UINT8": "DT_UINT8",
    "UINT16": "DT_UINT16",
    "UINT32": "DT_UINT32",
    "UINT64": "DT_UINT64",
    "INT8": "DT_INT8",
    "INT16": "DT_INT16",
    "INT32": "DT_INT32",
    "INT64": "DT_INT64",
    "FP16": "DT_HALF",
    "FP32": "DT_FLOAT",
    "FP64": "DT_DOUBLE",
    BYTES: "DT_STRING",
}


def _b64(value: Any, name: str) -> Any:
    """`value` with each {"b64": "..."} replaced by its decoded bytes (TF Serving's binary string form)."""
    if isinstance(value, list):
        return [_b64(v, name) for v in value]
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise InvalidInput(f'input {clip(name)!r}: an object value must be {{"b64": "<base64>"}}')
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"input {clip(name)!r}: a b64 value is not base64") from None
    return value


def _array(value: Any, spec: TensorSpec) -> np.ndarray:
    """One input's JSON value as an array of its datatype; BYTES take strings or {"b64": ...}."""
    if spec.datatype != BYTES:
        return strict_json.to_array(value, spec.datatype, spec.name)
    try:
        arr = np.asarray(_b64(value, spec.name), dtype=object)
    except (ValueError, TypeError):
        raise InvalidInput(f"input {clip(spec.name)!r}: values of a regular shape are needed") from None
    flat = arr.reshape(-1)
    for i, item in enumerate(flat):
        if isinstance(item, str):
            try:
                flat[i] = item.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInput(f"input {clip(spec.name)!r}: a string is not valid Unicode") from None
        elif not isinstance(item, bytes):
            raise InvalidInput(f'input {clip(spec.name)!r}: BYTES needs strings or {{"b64": ...}} values')
    return flat.reshape(arr.shape)


def _named(specs: Mapping[str, TensorSpec], name: str) -> TensorSpec:
    spec = specs.get(name)
    if spec is None:
        raise InvalidInput(f"unknown input {clip(name)!r}; expected {', '.join(sorted(specs))}")
    return spec


def _rows(rows: list[Any], specs: Mapping[str, TensorSpec], what: str) -> dict[str, np.ndarray]:
    """Row-form inputs: objects keyed by input name (any model) or bare values (a single-input model)."""
    named = [isinstance(r, dict) and not (set(r) == {"b64"} and "b64" not in specs) for r in rows]
    if all(named):
        keys = set(rows[0])
        if any(set(r) != keys for r in rows):
            raise InvalidInput(f"every one of {what} must name the same inputs")
        return {k: _array([r[k] for r in rows], _named(specs, k)) for k in keys}
    if any(named):
        raise InvalidInput(f"{what} mix objects keyed by input name with bare values")
    if len(specs) != 1:
        raise InvalidInput(f"a model with several inputs takes {what} as objects keyed by input name")
    (only,) = specs.values()
    return {only.name: _array(rows, only)}


def check_signature(body: dict[str, Any]) -> None:
    """Refuse a `signature_name` other than the model's one signature."""
    name = body.get("signature_name", SIGNATURE)
    if name != SIGNATURE:
        raise InvalidInput(f"the model has no signature '{clip(name, 64)}': its one signature is {SIGNATURE!r}")


def inputs_of(body: Any, specs: Mapping[str, TensorSpec]) -> tuple[dict[str, np.ndarray], int | None]:
    """Numpy inputs of a parsed predict body, and the number of rows for the row ("instances") form."""
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    unknown = sorted(set(body) - {"instances", "inputs", "signature_name"})
    if unknown:
        raise InvalidInput(f"unknown field '{clip(unknown[0], 64)}' in a predict request")
    check_signature(body)
    if ("instances" in body) == ("inputs" in body):
        raise InvalidInput('the request needs exactly one of "instances" or "inputs"')
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise InvalidInput('"instances" must be a non-empty list')
        return _rows(rows, specs, "instances"), len(rows)
    cols = body["inputs"]
    if isinstance(cols, dict) and not (set(cols) == {"b64"} and "b64" not in specs):
        return {k: _array(v, _named(specs, k)) for k, v in cols.items()}, None
    if len(specs) == 1:
        (only,) = specs.values()
        return {only.name: _array(cols, only)}, None
    raise InvalidInput('"inputs" must be an object keyed by input name for a model with several inputs')


def predict(
    served: ServedModel, raw: bytes, max_depth: int = strict_json.MAX_DEPTH, infer: Infer | None = None
) -> bytes:
    """TF Serving's predict on a served model and a raw request body: strict JSON in, strict JSON out.

    `infer` runs the decoded inputs (the data plane's `infer_now`); without one, the model itself does.
    """
    model = served.model
    inputs, rows = inputs_of(strict_json.loads(raw, max_depth), {t.name: t for t in model.inputs})
    outputs = infer(served, inputs) if infer is not None else model.infer(inputs)
    out_names = [t.name for t in model.outputs]
    if rows is not None:
        if len(out_names) == 1:
            doc: dict[str, Any] = {"predictions": strict_json.jsonable(outputs[out_names[0]])}
        else:
            cols = {k: strict_json.jsonable(outputs[k]) for k in out_names}
            doc = {"predictions": [{k: cols[k][i] for k in out_names} for i in range(rows)]}
    elif len(out_names) == 1:
        doc = {"outputs": strict_json.jsonable(outputs[out_names[0]])}
    else:
        doc = {"outputs": {k: strict_json.jsonable(outputs[k]) for k in out_names}}
    return strict_json.dumps(doc)


def _examples(body: Any, specs: Mapping[str, TensorSpec]) -> tuple[dict[str, np.ndarray], int]:
    """The inputs of a classify/regress body: `examples` objects, each merged over `context`."""
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    unknown = sorted(set(body) - {"examples", "context", "signature_name"})
    if unknown:
        raise InvalidInput(f"unknown field '{clip(unknown[0], 64)}' in a classify or regress request")
    check_signature(body)
    examples, context = body.get("examples"), body.get("context", {})
    if not isinstance(examples, list) or not examples or not all(isinstance(e, dict) for e in examples):
        raise InvalidInput('"examples" must be a non-empty list of objects keyed by input name')
    if not isinstance(context, dict):
        raise InvalidInput('"context" must be an object keyed by input name')
    return _rows([{**context, **e} for e in examples], specs, "examples"), len(examples)


def _require(served: ServedModel, kind: str, output: str, shape: str) -> None:
    """InvalidInput unless the model declares the output a `kind` signature needs."""
    if output not in {t.name for t in served.model.outputs}:
        raise InvalidInput(
            f"model {served.name!r} has no {kind} signature: a model declares one by an output named "
            f"{output!r} ({shape}); this one serves only predict"
        )


def classify(served: ServedModel, raw: bytes, infer: Infer, max_depth: int = strict_json.MAX_DEPTH) -> bytes:
    """TF Serving's classify: [[class, score], ...] per example, from the model's `scores` (and `classes`)."""
    _require(served, "classify", SCORES, "FP32 [N, K], with an optional BYTES output 'classes' [N, K]")
    inputs, rows = _examples(strict_json.loads(raw, max_depth), {t.name: t for t in served.model.inputs})
    outputs = infer(served, inputs)
    scores = np.asarray(outputs[SCORES], dtype=np.float64)
    names = outputs.get(CLASSES)
    if scores.ndim != 2 or scores.shape[0] != rows or (names is not None and np.shape(names) != scores.shape):
        raise InvalidInput(
            f"model {served.name!r}: outputs {SCORES!r} / {CLASSES!r} are not [N, K] for {rows} examples"
        )
    k = scores.shape[1]
    labels = [[str(i) for i in range(k)]] * rows if names is None else [strict_json.jsonable(r) for r in names]
    values = [strict_json.jsonable(r) for r in scores]
    result = [[[c, s] for c, s in zip(lr, vr, strict=True)] for lr, vr in zip(labels, values, strict=True)]
    return strict_json.dumps({"result": result})


def regress(served: ServedModel, raw: bytes, infer: Infer, max_depth: int = strict_json.MAX_DEPTH) -> bytes:
    """TF Serving's regress: one number per example, from the model's `outputs`."""
    _require(served, "regress", REGRESSION, "FP32 [N] or [N, 1]")
    inputs, rows = _examples(strict_json.loads(raw, max_depth), {t.name: t for t in served.model.inputs})
    values = np.asarray(infer(served, inputs)[REGRESSION], dtype=np.float64)
    if values.size != rows:
        raise InvalidInput(
            f"model {served.name!r}: output {REGRESSION!r} holds {values.size} values for {rows} examples"
        )
    return strict_json.dumps({"result": strict_json.jsonable(values.reshape(-1))})


def model_status(dataplane: DataPlane, name: str, version: int | None) -> bytes:
    """TF Serving's GetModelStatus document for a model (or one of its versions)."""
    entries = [s for s in dataplane.status(name) if version is None or s.version == version]
    if not entries:
        raise NotFound(f"model {clip(name)!r}" + (f" has no version {version}" if version else " not found"))
    return strict_json.dumps(
        {
            "model_version_status": [
                {
                    "version": str(s.version),
                    "state": _TFS_STATE.get(s.state.name, s.state.name),
                    "status": {
                        "error_code": "OK" if s.state.name != "REFUSED" else "FAILED_PRECONDITION",
                        "error_message": s.reason or "",
                    },
                }
                for s in entries
            ]
        }
    )


def _tensor_info(spec: TensorSpec) -> dict[str, Any]:
    shape: dict[str, Any] = {"unknown_rank": not spec.rank_known}
    if spec.rank_known:
        shape["dim"] = [{"size": str(d), "name": ""} for d in spec.shape]
    return {"dtype": _TF_DTYPES.get(spec.datatype, "DT_INVALID"), "tensor_shape": shape, "name": spec.name}


def metadata(meta: ModelMetadata) -> bytes:
    """TF Serving's GetModelMetadata document: the model spec and its one signature definition."""
    signature = {
        "inputs": {t.name: _tensor_info(t) for t in meta.inputs},
        "outputs": {t.name: _tensor_info(t) for t in meta.outputs},
        "method_name": "tensorflow/serving/predict",
    }
    return strict_json.dumps(
        {
            "model_spec": {"name": meta.name, "signature_name": "", "version": str(meta.version)},
            "metadata": {"signature_def": {"signature_def": {SIGNATURE: signature}}},
        }
    )
