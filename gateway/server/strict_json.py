"""Strict JSON both ways for the REST API, and JSON values <-> numpy tensors.

Parsing refuses what Python's `json` quietly accepts: duplicate keys, `NaN`/`Infinity`/`-Infinity`,
numbers beyond a bounded size (integers of more than `max_int_digits` digits, floats that overflow to
infinity), nesting deeper than `max_depth` (checked on the bytes BEFORE `json.loads` recurses, so no
RecursionError), text that is not UTF-8. Tensors refuse `null`, strings in numeric inputs, ragged rows,
integers outside the input's type, and numbers that overflow it.

Responses never contain bare `NaN`/`Infinity` (which are not JSON): a non-finite model output is
written as the JSON string "NaN", "Infinity" or "-Infinity" in its place, and everything else with
`json.dumps(allow_nan=False)`. (TF Serving writes the bare tokens; a strict client cannot read those.)
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from gateway.backends.dtypes import BYTES, numpy_dtype
from gateway.errors import InvalidInput, clip
from gateway.jsondepth import nesting_depth

MAX_DEPTH = 64
MAX_INT_DIGITS = 40
NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _refuse_constant(token: str) -> Any:
    raise InvalidInput(f"request body: {token} is not a JSON number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidInput(f"request body: key {clip(key)!r} appears twice in one object")
            seen.add(key)
    return doc


def loads(data: bytes, max_depth: int = MAX_DEPTH, max_int_digits: int = MAX_INT_DIGITS) -> Any:
    """Parse a request body as strict JSON; InvalidInput on anything outside it or beyond the bounds."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("request body is not UTF-8") from None
    if nesting_depth(data, max_depth) > max_depth:
        raise InvalidInput(f"request body nests more than {max_depth} levels deep")

    def parse_int(token: str) -> int:
        if len(token) - token.startswith("-") > max_int_digits:
            raise InvalidInput(f"request body: an integer of more than {max_int_digits} digits")
        return int(token)

    def parse_float(token: str) -> float:
        if len(token) > max_int_digits + 400:
            raise InvalidInput("request body: a number too long to be read")
        value = float(token)
        if not math.isfinite(value):
            raise InvalidInput(f"request body: {clip(token, 40)} is beyond the range of a 64-bit float")
        return value

    try:
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_refuse_constant,
            parse_int=parse_int,
            parse_float=parse_float,
        )
    except ValueError:
        raise InvalidInput("request body is not valid JSON") from None
    except RecursionError:  # cannot happen below max_depth; kept so a misconfigured limit stays a 400
        raise InvalidInput("request body nests too deeply") from None


def _non_finite_strings(arr: np.ndarray) -> list[Any] | Any:
    """A float array as nested lists with each NaN/+-inf replaced by its documented string."""
    out = arr.astype(object)
    out[np.isnan(arr)] = NON_FINITE["nan"]
    out[np.isposinf(arr)] = NON_FINITE["inf"]
    out[np.isneginf(arr)] = NON_FINITE["-inf"]
    return out.tolist()


def jsonable(arr: np.ndarray) -> Any:
    """A model output as JSON-ready lists: BYTES as text, non-finite floats as "NaN"/"Infinity"/"-Infinity"."""
    if arr.dtype == object or arr.dtype.kind == "S":
        return [v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in arr.reshape(-1)]
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        return _non_finite_strings(arr)
    return arr.tolist()


def dumps(doc: Any) -> bytes:
    """Serialise a response document; a stray NaN that escaped `jsonable` is an error, never bare output."""
    return json.dumps(doc, allow_nan=False, separators=(",", ":")).encode()


def _shape_error(name: str, datatype: str) -> InvalidInput:
    return InvalidInput(f"input {clip(name)!r}: values are not {datatype} numbers of a regular shape")


def to_array(value: Any, datatype: str, name: str) -> np.ndarray:
    """A JSON value as a numpy array of the input's datatype, or InvalidInput (never a silent NaN, wrap or cast)."""
    dtype = numpy_dtype(datatype)
    if datatype == BYTES:
        return _to_bytes(value, name)
    try:
        raw = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise _shape_error(name, datatype) from None
    kind = raw.dtype.kind
    if kind not in "biuf":  # null, strings, objects, integers beyond 64 bits
        raise InvalidInput(
            f"input {clip(name)!r}: {datatype} needs numbers (no null, strings or integers beyond 64 bits)"
        )
    if dtype.kind == "b":
        if kind != "b":
            raise InvalidInput(f"input {clip(name)!r}: BOOL needs true or false")
        return raw
    if kind == "b":  # true/false is not a number: numpy would cast it to 1/0 silently
        raise InvalidInput(f"input {clip(name)!r}: {datatype} needs numbers, not true or false")
    if dtype.kind in "iu":
        if kind == "f":
            raise InvalidInput(f"input {clip(name)!r}: {datatype} needs integers")
        if raw.size:
            info = np.iinfo(dtype)
            if int(raw.min()) < info.min or int(raw.max()) > info.max:
                raise InvalidInput(f"input {clip(name)!r}: a value is outside the range of {datatype}")
        return raw.astype(dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        arr = raw.astype(dtype)
    if not np.isfinite(arr).all():
        raise InvalidInput(f"input {clip(name)!r}: a value is beyond the range of {datatype}")
    return arr


def _to_bytes(value: Any, name: str) -> np.ndarray:
    """Strings (UTF-8) of a regular shape as an object array of bytes."""
    try:
        arr = np.asarray(value, dtype=object)
    except (ValueError, TypeError):
        raise _shape_error(name, BYTES) from None
    flat = arr.reshape(-1)
    out = np.empty(flat.shape, dtype=object)
    for i, item in enumerate(flat):
        if not isinstance(item, str):
            raise InvalidInput(f"input {clip(name)!r}: BYTES needs strings of a regular shape")
        try:
            out[i] = item.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(f"input {clip(name)!r}: a string is not valid Unicode") from None
    return out.reshape(arr.shape)
