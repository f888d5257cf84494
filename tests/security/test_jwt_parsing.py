"""Attack class: bearer tokens that parse differently for us and for the issuer, or live too long (issue 10,
finding 13).

A signed payload that repeats "scope" was read last-key-wins by PyJWT and `json`, so
{"scope": "infer:nothing", ..., "scope": "admin"} was granted admin. Header and payload are now pre-parsed
strictly (`preparse`): duplicate keys at any depth, non-objects, NaN/Infinity, oversized numbers or segments
are refused UNAUTHENTICATED (reason "malformed"), whatever the input, with no other exception. A token whose
lifetime exceeds `[auth] max_token_lifetime_s` (default one day) is refused (reason "lifetime").
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import ECAlgorithm
from tritonclient.utils import InferenceServerException

from gateway.auth import pki
from gateway.auth.jwt_verify import DEFAULT_MAX_LIFETIME_S, TokenVerifier, preparse
from gateway.auth.peer import peer_from_cert
from gateway.config import load_config
from gateway.errors import Unauthenticated
from gateway.server.app import Gateway, GatewayThread
from tests import harness
from tests.models import make_onnx_mlp

IN_DIM = 8


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _raw_token(certs: Path, header: str, payload: str) -> str:
    """A compact JWS over exactly these JSON texts (duplicate keys kept), ES256-signed by the dev issuer."""
    key = serialization.load_pem_private_key((certs / "jwt-issuer.key").read_bytes(), password=None)
    signing_input = f"{_b64(header.encode())}.{_b64(payload.encode())}"
    signature = ECAlgorithm(ECAlgorithm.SHA256).sign(signing_input.encode(), key)  # type: ignore[arg-type]
    return f"{signing_input}.{_b64(signature)}"


def _kid(certs: Path) -> str:
    return json.loads((certs / "jwks.json").read_text())["keys"][0]["kid"]


def _body(env: harness.Env, first_scope: str, **repeat: Any) -> str:
    """Good claims with scope `first_scope` as JSON text, then `repeat` members appended verbatim (duplicates kept)."""
    text = json.dumps(harness.claims(env, scope=first_scope), separators=(",", ":"))
    extra = "".join(f",{json.dumps(k)}:{json.dumps(v)}" for k, v in repeat.items())
    return text[:-1] + extra + "}"


def _header(env: harness.Env, extra: str = "") -> str:
    return f'{{"alg":"ES256","typ":"JWT","kid":{json.dumps(_kid(env.certs))}{extra}}}'


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    env = harness.make_env(tmp_path_factory.mktemp("jwt"))
    harness.seal_model(env, "m", 1, make_onnx_mlp(IN_DIM, (8,), 1, seed=1))
    return env


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Gateway]:
    """The gateway with the default maximum token lifetime."""
    with GatewayThread(env.config) as gw:
        yield gw


def _infer(env: harness.Env, gw: Gateway, token: str) -> Any:
    inp = grpcclient.InferInput("input", [1, IN_DIM], "FP32")
    inp.set_data_from_numpy(np.ones((1, IN_DIM), np.float32))
    with harness.triton(env, gw.grpc_port) as c:
        return c.infer("m", [inp], headers={"authorization": "Bearer " + token})


def _predict(env: harness.Env, gw: Gateway, token: str) -> requests.Response:
    return requests.post(
        f"https://127.0.0.1:{gw.rest_port}/v1/models/m:predict",
        json={"instances": [[1.0] * IN_DIM]},
        headers={"authorization": "Bearer " + token},
        cert=(str(env.certs / "client.pem"), str(env.certs / "client.key")),
        verify=str(env.certs / "ca.pem"),
        timeout=30,
    )


def _failures(gw: Gateway, reason: str) -> float:
    return gw.metrics.registry.get_sample_value("sealgate_auth_failures_total", {"reason": reason}) or 0.0


def _refused_everywhere(env: harness.Env, gw: Gateway, token: str, reason: str, words: str) -> None:
    """gRPC UNAUTHENTICATED and REST 401, both audited, counted under `reason`; nothing served or changed."""
    before, seen = _failures(gw, reason), len(env.audit_lines(gw))
    served = [(s.name, s.version, s.state.name) for s in gw.manager.status()]
    with pytest.raises(InferenceServerException) as info:
        _infer(env, gw, token)
    assert "UNAUTHENTICATED" in str(info.value.status()) and words in str(info.value)
    reply = _predict(env, gw, token)
    assert reply.status_code == 401 and words in reply.json()["error"]
    lines = env.audit_lines(gw)[seen:]
    assert sorted(r["method"] for r in lines) == ["grpc:ModelInfer", "rest:Predict"]
    assert all(r["status"] == "UNAUTHENTICATED" and r["subject"] is None and words in r["reason"] for r in lines)
    assert _failures(gw, reason) == before + 2
    assert [(s.name, s.version, s.state.name) for s in gw.manager.status()] == served
    good = harness.token(env, "infer:m")
    assert _infer(env, gw, good).as_numpy("output").shape == (1, 1)
    assert _predict(env, gw, good).status_code == 200


def test_repeated_scope_does_not_grant_admin(env: harness.Env, gateway: Gateway) -> None:
    """{"scope": "infer:nothing", ..., "scope": "admin"}, validly signed, is malformed, not admin."""
    _refused_everywhere(
        env,
        gateway,
        _raw_token(env.certs, _header(env), _body(env, "infer:nothing", scope="admin")),
        "malformed",
        "malformed",
    )


@pytest.mark.parametrize("where", ["header", "nested"])
def test_duplicate_keys_anywhere_are_malformed(env: harness.Env, gateway: Gateway, where: str) -> None:
    """A repeated header member, or a repeated member inside a claim object, is refused like a repeated claim."""
    if where == "header":
        header = _header(env, extra="")[:-1].replace('"kid":', '"kid":"someone-else","kid":') + "}"
        token = _raw_token(env.certs, header, _body(env, "infer:m"))
    else:
        mine = peer_from_cert((env.certs / "client.pem").read_bytes()).thumbprint
        cnf = f'"cnf":{{"x5t#S256":"someone-else","x5t#S256":"{mine}"}}'  # last wins: bound to this client
        body = _body(env, "infer:m")[:-1] + "," + cnf + "}"
        token = _raw_token(env.certs, _header(env), body)
    _refused_everywhere(env, gateway, token, "malformed", "malformed")


def test_token_lifetime_above_the_maximum_is_refused(env: harness.Env, gateway: Gateway) -> None:
    """A well-formed token valid for two days (or issued three days ago) is refused "lifetime"."""
    now = int(time.time())
    two_days = harness.signed(env, harness.claims(env, scope="infer:m", exp=now + 2 * DEFAULT_MAX_LIFETIME_S))
    _refused_everywhere(env, gateway, two_days, "lifetime", "lifetime")
    old = harness.signed(env, harness.claims(env, scope="infer:m", iat=now - 3 * 86_400, nbf=now - 3 * 86_400))
    _refused_everywhere(env, gateway, old, "lifetime", "lifetime")


def test_configured_maximum_lifetime(tmp_path: Path) -> None:
    """`[auth] max_token_lifetime_s` is read from the config and enforced by the gateway."""
    toml = tmp_path / "sealgate.toml"
    toml.write_text("[auth]\nmax_token_lifetime_s = 600\n")
    assert load_config(toml).auth.max_token_lifetime_s == 600
    env = harness.make_env(tmp_path / "gw")
    harness.seal_model(env, "m", 1, make_onnx_mlp(IN_DIM, (8,), 1, seed=1))
    env = env.with_config(auth={"max_token_lifetime_s": 600})
    with GatewayThread(env.config) as gw:
        with pytest.raises(InferenceServerException) as info:
            _infer(env, gw, harness.token(env, "infer:m", ttl=3600))
        assert "UNAUTHENTICATED" in str(info.value.status()) and "lifetime" in str(info.value)
        assert _infer(env, gw, harness.token(env, "infer:m", ttl=600)).as_numpy("output").shape == (1, 1)


def test_lifetime_limit_in_the_verifier(env: harness.Env) -> None:
    """0 means unlimited; a refusal is never cached; a negative maximum is a configuration error."""
    now = int(time.time())
    long_lived = harness.signed(env, harness.claims(env, exp=now + 10 * 86_400))
    unlimited = TokenVerifier(env.certs / "jwks.json", pki.ISSUER, pki.AUDIENCE, max_lifetime=0)
    assert unlimited.verify(long_lived).sub == "tester"
    strict = TokenVerifier(env.certs / "jwks.json", pki.ISSUER, pki.AUDIENCE)
    for _ in range(2):
        with pytest.raises(Unauthenticated) as info:
            strict.verify(long_lived)
        assert info.value.reason == "lifetime"
    assert strict.cache_entries == 0 and strict.stats.verifications == 2
    with pytest.raises(Exception, match="lifetime"):
        TokenVerifier(env.certs / "jwks.json", pki.ISSUER, pki.AUDIENCE, max_lifetime=-1)


# --- preparse: the contract the fuzz harness relies on ---------------------------------------------------
def test_preparse_returns_header_and_payload(env: harness.Env) -> None:
    token = harness.token(env, "infer:m")
    header, payload = preparse(token)
    assert header["alg"] == "ES256" and payload["scope"] == "infer:m" and payload["sub"] == "tester"


def _seg(text: str) -> str:
    return _b64(text.encode("utf-8", "surrogatepass"))


def _t(payload: str, header: str = '{"alg":"ES256"}', tail: str = ".x") -> str:
    """A token string from header and payload JSON texts, and the rest as given."""
    return _seg(header) + "." + _seg(payload) + tail


GOOD_HEADER = _seg('{"alg":"ES256"}')
BAD_INPUTS: dict[str, Any] = {
    "not a string": b"a.b.c",
    "none": None,
    "empty": "",
    "two parts": _t("{}", tail=""),
    "four parts": _t("{}", tail=".x.y"),
    "padding": _t("{}", tail="==.x"),
    "standard alphabet": _t("{}", tail="+/.x"),
    "impossible length": GOOD_HEADER + ".abcde.x",
    "non-ascii": GOOD_HEADER + ".\u00e9.x",
    "too long": GOOD_HEADER + "." + "A" * 9000 + ".x",
    "huge header": "A" * 2000 + "." + _seg("{}") + ".x",
    "duplicate claim": _t('{"scope":"a","scope":"admin"}'),
    "duplicate header": _t("{}", header='{"alg":"ES256","alg":"none"}'),
    "duplicate nested": _t('{"cnf":{"a":1,"a":2}}'),
    "array payload": _t("[1,2]"),
    "string header": _t("{}", header='"ES256"'),
    "NaN": _t('{"exp":NaN}'),
    "Infinity": _t('{"exp":-Infinity}'),
    "1e400": _t('{"exp":1e400}'),
    "huge integer": _t('{"exp":' + "9" * 5000 + "}"),
    "deep nesting": _t("[" * 3000 + "]" * 3000),
    "invalid utf-8": GOOD_HEADER + "." + _b64(b'{"a":"\xff"}') + ".x",
    "trailing data": _t("{} {}"),
    "not json": _t("scope=admin"),
}


@pytest.mark.parametrize("token", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_preparse_refuses_with_unauthenticated_only(token: Any) -> None:
    with pytest.raises(Unauthenticated) as info:
        preparse(token)
    assert info.value.reason == "malformed"


def test_preparse_random_inputs_raise_nothing_else() -> None:
    """Mutations of a valid token, and random strings, either parse to two dicts or raise Unauthenticated."""
    rng = random.Random(10)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ é\x00"
    base = _t('{"sub":"a","scope":"infer:m","exp":1,"cnf":{"x5t#S256":"q"}}', tail=".sig")
    for i in range(3000):
        if i % 2:
            chars = list(base)
            for _ in range(rng.randint(1, 4)):
                chars[rng.randrange(len(chars))] = rng.choice(alphabet)
            token = "".join(chars)
        else:
            token = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        try:
            header, payload = preparse(token)
        except Unauthenticated as exc:
            assert exc.reason == "malformed"
        else:
            assert isinstance(header, dict) and isinstance(payload, dict)
