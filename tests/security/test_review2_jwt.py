"""Second review, bearer tokens (issue 10, class of finding 13): validly signed tokens whose header or
claims are of a shape the issuer would never produce.

Accepted on the main of the review, refused now: a header that carries or points at its own key (`jku`,
`jwk`, `x5u`, `x5c`; ignored, but keys come only from the configured JWKS), and `nbf` that is not a JSON
number (`"0"` and `false`: PyJWT reads them through `int()`). Every case is UNAUTHENTICATED / 401 with a
reason from the fixed set. The other new cases were already refused and stay pinned here.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import ECAlgorithm

from gateway.auth import pki
from gateway.auth.jwt_verify import REASONS, TokenVerifier
from gateway.errors import Unauthenticated
from gateway.server.app import Gateway, GatewayThread
from tests import harness
from tests.models import make_onnx_mlp

IN_DIM = 8


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _token(env: harness.Env, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A compact JWS with exactly this header (kid and alg added) and payload, ES256-signed by the dev issuer."""
    key = serialization.load_pem_private_key((env.certs / "jwt-issuer.key").read_bytes(), password=None)
    head = {"alg": "ES256", "typ": "JWT", "kid": harness.kid(env), **header}
    signing_input = f"{_b64(json.dumps(head).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = ECAlgorithm(ECAlgorithm.SHA256).sign(signing_input.encode(), key)  # type: ignore[arg-type]
    return f"{signing_input}.{_b64(signature)}"


def _cases(env: harness.Env) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Case -> (extra header, claims), every one validly signed and refused."""
    now = int(time.time())
    embedded = {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}
    claims = harness.claims(env)
    return {
        # new refusals
        "header jku": ({"jku": "https://127.0.0.1:1/jwks.json"}, claims),
        "header jwk": ({"jwk": embedded}, claims),
        "header x5u": ({"x5u": "https://127.0.0.1:1/cert.pem"}, claims),
        "header x5c": ({"x5c": ["MIIB"]}, claims),
        "nbf numeric string": ({}, {**claims, "nbf": "0"}),
        "nbf null": ({}, {**claims, "nbf": None}),
        "nbf list": ({}, {**claims, "nbf": []}),
        "nbf bool": ({}, {**claims, "nbf": False}),
        "iat numeric string": ({}, {**claims, "iat": str(now)}),
        "iat bool": ({}, {**claims, "iat": True}),
        # already refused: pinned
        "crit exp": ({"crit": ["exp"]}, claims),
        "kid path": ({"kid": "../../certs/jwt-issuer"}, claims),
        "kid bidi": ({"kid": "k\u202e\n"}, claims),
        "typ unknown": ({"typ": "JOSE+evil"}, claims),
        "nbf in the future": ({}, {**claims, "nbf": now + 3600}),
        "iat in the future": ({}, {**claims, "iat": now + 3600}),
        "exp numeric string": ({}, {**claims, "exp": str(now + 600)}),
        "exp bool": ({}, {**claims, "exp": True}),
        "aud list mixed types": ({}, {**claims, "aud": [env.config.auth.audience, 5, None]}),
        "iss list": ({}, {**claims, "iss": [env.config.auth.issuer]}),
        "scope list": ({}, {**claims, "scope": ["admin"]}),
        "sub number": ({}, {**claims, "sub": 5}),
        "sub empty": ({}, {**claims, "sub": ""}),
        "cnf string": ({}, {**claims, "cnf": "x"}),
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    env = harness.make_env(tmp_path_factory.mktemp("jwt2"))
    harness.seal_model(env, "m", 1, make_onnx_mlp(IN_DIM, (8,), 1, seed=1))
    return env.with_config(server={"metrics_address": ""})


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Gateway]:
    with GatewayThread(env.config) as gw:
        deadline = time.time() + 60
        while not any(s.name == "m" and s.state.name == "SERVING" for s in gw.manager.status()):
            assert time.time() < deadline, "m never served"
            time.sleep(0.05)
        yield gw


def test_every_case_is_refused_by_the_verifier(env: harness.Env) -> None:
    """Each token is UNAUTHENTICATED with a reason of the fixed set (never TypeError, never accepted)."""
    verifier = TokenVerifier(env.certs / "jwks.json", pki.ISSUER, pki.AUDIENCE)
    assert verifier.verify(_token(env, {}, harness.claims(env))).sub == "tester"
    for case, (header, claims) in _cases(env).items():
        with pytest.raises(Unauthenticated) as info:
            verifier.verify(_token(env, header, claims))
        assert info.value.reason in REASONS, case
    assert verifier.cache_entries == 1, "no refusal is cached"


def test_legitimate_variants_still_verify(env: harness.Env) -> None:
    """What real issuers send stays accepted: x5t in the header, a float exp, aud as a list, at+jwt."""
    verifier = TokenVerifier(env.certs / "jwks.json", pki.ISSUER, pki.AUDIENCE)
    now = time.time()
    claims = harness.claims(env)
    for header, body in (
        ({"x5t": "AAAA"}, claims),
        ({"typ": "at+jwt"}, claims),
        ({}, {**claims, "exp": now + 600.5, "iat": now, "nbf": now - 1.5}),
        ({}, {**claims, "aud": [env.config.auth.audience, "other"]}),
    ):
        assert verifier.verify(_token(env, header, body)).sub == "tester"


@pytest.mark.parametrize("case", ["header jku", "header jwk", "nbf numeric string", "nbf null"])
def test_new_refusals_on_the_live_gateway(env: harness.Env, gateway: Gateway, case: str) -> None:
    """Over REST: 401, audited UNAUTHENTICATED without a subject, and the server still serves."""
    header, claims = _cases(env)[case]
    seen = len(env.audit_lines(gateway))
    kwargs: dict[str, Any] = {
        "json": {"instances": [[1.0] * IN_DIM]},
        "cert": (str(env.certs / "client.pem"), str(env.certs / "client.key")),
        "verify": str(env.certs / "ca.pem"),
        "timeout": 30,
    }
    url = f"https://127.0.0.1:{gateway.rest_port}/v1/models/m:predict"
    reply = requests.post(url, headers={"authorization": "Bearer " + _token(env, header, claims)}, **kwargs)
    assert reply.status_code == 401, reply.text
    lines = env.audit_lines(gateway)[seen:]
    assert [(r["method"], r["status"], r["subject"]) for r in lines] == [("rest:Predict", "UNAUTHENTICATED", None)]
    good = requests.post(url, headers={"authorization": "Bearer " + harness.token(env, "infer:m")}, **kwargs)
    assert good.status_code == 200
