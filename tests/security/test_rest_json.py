"""Strict JSON on REST (issue 10, findings 8 and 10): deep nesting, huge numbers, NaN/Infinity/null, duplicate
keys are 400 (never 500), audited, nothing run; non-finite outputs come back as strings, never bare NaN."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests

from gateway.server import strict_json
from gateway.server.app import GatewayThread
from tests import harness
from tests.security._rest import IN, predict_ok, rest_env, wait_serving


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    return rest_env(tmp_path_factory.mktemp("json"))


@pytest.fixture(scope="module")
def gw(env: harness.Env) -> Iterator[Any]:
    with GatewayThread(env.config) as gateway:
        wait_serving(gateway)
        yield gateway


@pytest.fixture(scope="module")
def token(env: harness.Env) -> str:
    return harness.token(env)


def _post(env: harness.Env, gw: Any, token: str, body: bytes) -> requests.Response:
    return requests.post(
        f"https://127.0.0.1:{gw.rest_port}/v1/models/m:predict",
        data=body,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        verify=str(env.certs / "ca.pem"),
        cert=(str(env.certs / "client.pem"), str(env.certs / "client.key")),
        timeout=30,
    )


ROW = ", ".join(["0.5"] * (IN - 1))
BAD_BODIES = {
    "nested 1000 deep": b'{"instances": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    "nested objects 100000 deep": b'{"instances": [' + b'{"a":' * 100000 + b"1" + b"}" * 100000 + b"]}",
    "integer 10**400": b'{"instances": [[' + str(10**400).encode() + b", " + ROW.encode() + b"]]}",
    "integer 10**30": b'{"instances": [[' + str(10**30).encode() + b", " + ROW.encode() + b"]]}",
    "NaN": f'{{"instances": [[NaN, {ROW}]]}}'.encode(),
    "Infinity": f'{{"instances": [[Infinity, {ROW}]]}}'.encode(),
    "-Infinity": f'{{"instances": [[-Infinity, {ROW}]]}}'.encode(),
    "1e400": f'{{"instances": [[1e400, {ROW}]]}}'.encode(),
    "1e39 beyond FP32": f'{{"instances": [[1e39, {ROW}]]}}'.encode(),
    "null": f'{{"instances": [[null, {ROW}]]}}'.encode(),
    "string number": f'{{"instances": [["1.0", {ROW}]]}}'.encode(),
    "string nan": f'{{"instances": [["nan", {ROW}]]}}'.encode(),
    "duplicate keys": f'{{"instances": [[0.1, {ROW}]], "instances": [[0.2, {ROW}]]}}'.encode(),
    "ragged": f'{{"instances": [[0.1, {ROW}], [0.1]]}}'.encode(),
    "not utf-8": b'{"instances": [[0.5]], "x": "\xff"}',
    "array body": b"[1, 2]",
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_json_is_400_audited_and_not_run(env: harness.Env, gw: Any, token: str, case: str) -> None:
    before = len(env.audit_lines(gw))
    started = time.monotonic()
    r = _post(env, gw, token, BAD_BODIES[case])
    assert r.status_code == 400, (case, r.status_code, r.text)
    assert time.monotonic() - started < 5
    assert set(r.json()) == {"error"} and "internal" not in r.json()["error"]
    lines = env.audit_lines(gw)[before:]
    assert [(x["method"], x["status"]) for x in lines] == [("rest:Predict", "INVALID_ARGUMENT")]
    predict_ok(env, gw, token)


def test_non_finite_outputs_are_strings_and_the_response_is_strict_json(env: harness.Env, gw: Any, token: str) -> None:
    """Inputs near the top of FP32 overflow the MLP: its outputs are inf/nan, written as documented strings."""
    body = json.dumps({"instances": [[3.0e38] * IN, [-3.0e38] * IN, [0.5] * IN]}).encode()
    r = _post(env, gw, token, body)
    assert r.status_code == 200, r.text

    def refuse(token: str) -> Any:
        raise AssertionError(f"bare {token} in a response")

    doc = json.loads(r.text, parse_constant=refuse)
    values = [v for row in doc["predictions"] for v in row]
    assert all(isinstance(v, float) or v in ("NaN", "Infinity", "-Infinity") for v in values), values
    assert any(isinstance(v, str) for v in values) and isinstance(values[-1], float)


def test_strict_json_unit_bounds() -> None:
    """The parser's own bounds, without a server: depth counted outside strings, types checked per input."""
    assert strict_json.nesting_depth(b'{"a": "[[[[[[", "b": [[1]]}') == 3
    assert strict_json.nesting_depth(b'"\\"[[[["') == 0
    assert strict_json.loads(b'{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}
    arr = strict_json.to_array([[1, 2], [3, 4]], "INT8", "x")
    assert arr.dtype == np.int8 and arr.shape == (2, 2)
    with pytest.raises(Exception, match="outside the range"):
        strict_json.to_array([300], "UINT8", "x")
    with pytest.raises(Exception, match="needs integers"):
        strict_json.to_array([1.5], "INT32", "x")
    assert strict_json.to_array([["a", "é"]], "BYTES", "x").tolist() == [[b"a", "é".encode()]]
    with pytest.raises(Exception, match="BYTES needs strings"):
        strict_json.to_array([["a", None]], "BYTES", "x")
    assert strict_json.jsonable(np.array([np.nan, np.inf, -np.inf, 1.0], np.float32)) == [
        "NaN",
        "Infinity",
        "-Infinity",
        1.0,
    ]
    with pytest.raises(ValueError):
        strict_json.dumps({"x": float("nan")})
