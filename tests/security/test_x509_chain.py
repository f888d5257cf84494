"""Attack class: client certificates that chain to the CA but must not authenticate (issue 10, finding 6).

A CA:TRUE certificate issued by the dev CA (root pathlen:0), a leaf issued by such an intermediate claiming
the dev client's SPIFFE ID, a leaf without EKU clientAuth, and a leaf of a revoked intermediate: each is
refused UNAUTHENTICATED / 401 on gRPC and REST alike, audited and counted, nothing is served or changed, and
the dev client is still served afterwards.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from tritonclient.utils import InferenceServerException

from gateway.auth import pki
from gateway.auth.chain import REFUSED, ClientCertVerifier
from gateway.auth.peer import peer_from_cert
from gateway.errors import Unauthenticated
from gateway.server.app import Gateway, GatewayThread
from tests import harness
from tests.models import make_onnx_mlp
from tests.security.mint import Minted, mint

IN_DIM = 8


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    """A dev PKI and one small model."""
    env = harness.make_env(tmp_path_factory.mktemp("x509"))
    harness.seal_model(env, "m", 1, make_onnx_mlp(IN_DIM, (8,), 1, seed=1))
    return env


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Gateway]:
    """The gateway with the stock configuration: [tls] ca is the dev CA alone."""
    with GatewayThread(env.config) as gw:
        yield gw


def _infer_grpc(env: harness.Env, port: int, client: str, token: str) -> Any:
    """ModelInfer through stock tritonclient, presenting certs/<client>.pem."""
    inp = grpcclient.InferInput("input", [1, IN_DIM], "FP32")
    inp.set_data_from_numpy(np.ones((1, IN_DIM), np.float32))
    with harness.triton(env, port, client=client) as c:
        return c.infer("m", [inp], headers={"authorization": "Bearer " + token})


def _predict_rest(env: harness.Env, port: int, client: str, token: str) -> requests.Response:
    """REST :predict presenting certs/<client>.pem."""
    return requests.post(
        f"https://127.0.0.1:{port}/v1/models/m:predict",
        json={"instances": [[1.0] * IN_DIM]},
        headers={"authorization": "Bearer " + token},
        cert=(str(env.certs / f"{client}.pem"), str(env.certs / f"{client}.key")),
        verify=str(env.certs / "ca.pem"),
        timeout=30,
    )


def _grpc_refused(env: harness.Env, port: int, client: str, token: str) -> InferenceServerException:
    """The refusal of a gRPC inference with certs/<client>.pem (AssertionError if it was served)."""
    with pytest.raises(InferenceServerException) as info:
        _infer_grpc(env, port, client, token)
    return info.value


def _rest_refused(env: harness.Env, port: int, client: str, token: str) -> int | None:
    """The HTTP status of a refused REST call, or None when the TLS handshake itself refused the client."""
    try:
        reply = _predict_rest(env, port, client, token)
    except requests.exceptions.ConnectionError:  # SSLError included: the handshake refused the certificate
        return None
    assert reply.status_code != 200, reply.text
    return reply.status_code


def _failures(gw: Gateway, reason: str) -> float:
    """sealgate_auth_failures_total for `reason`."""
    return gw.metrics.registry.get_sample_value("sealgate_auth_failures_total", {"reason": reason}) or 0.0


def _status(gw: Gateway) -> list[tuple[str, int, str]]:
    """What the manager serves, to show that nothing changed."""
    return [(s.name, s.version, s.state.name) for s in gw.manager.status()]


def _still_serves(env: harness.Env, gw: Gateway) -> None:
    """The dev client is served on gRPC and REST after the refusals."""
    token = harness.token(env)
    assert _infer_grpc(env, gw.grpc_port, "client", token).as_numpy("output").shape == (1, 1)
    assert _predict_rest(env, gw.rest_port, "client", token).status_code == 200


def _assert_refused_everywhere(env: harness.Env, gw: Gateway, client: str, rest_may_fail_handshake: bool) -> None:
    """gRPC UNAUTHENTICATED (reason "certificate"), REST 401 or a refused handshake; audited and counted."""
    token = harness.token(env, "admin")
    before, served, seen = _failures(gw, "certificate"), _status(gw), len(env.audit_lines(gw))
    refusal = _grpc_refused(env, gw.grpc_port, client, token)
    assert "UNAUTHENTICATED" in str(refusal.status()) and REFUSED in str(refusal)
    rest = _rest_refused(env, gw.rest_port, client, token)
    assert rest == 401 or (rest is None and rest_may_fail_handshake), rest
    lines = [r for r in env.audit_lines(gw)[seen:] if r["method"] != "rest:tls-handshake"]
    expected = ["grpc:ModelInfer"] + (["rest:Predict"] if rest == 401 else [])
    assert sorted(r["method"] for r in lines) == expected, lines
    assert all(r["status"] == "UNAUTHENTICATED" and r["reason"] == REFUSED and r["subject"] is None for r in lines)
    assert _failures(gw, "certificate") >= before + (2 if rest == 401 else 1)
    assert _status(gw) == served
    _still_serves(env, gw)


def test_ca_certificate_as_client_is_refused(env: harness.Env, gateway: Gateway) -> None:
    """A CA:TRUE certificate from the dev CA (clientAuth, the dev client's SPIFFE ID) authenticates nothing."""
    mint(env.certs, "ca-as-client", ca=True)
    _assert_refused_everywhere(env, gateway, "ca-as-client", rest_may_fail_handshake=False)


def test_leaf_of_an_intermediate_is_refused(env: harness.Env, gateway: Gateway) -> None:
    """A leaf issued by a CA:TRUE certificate of the dev CA (path length 0 violated), claiming the dev client's
    SPIFFE ID and presenting its issuer, is refused: served on gRPC before the fix."""
    intermediate = mint(env.certs, "rogue-ca", ca=True)
    mint(env.certs, "rogue-leaf", issuer=intermediate)
    _assert_refused_everywhere(env, gateway, "rogue-leaf", rest_may_fail_handshake=True)


def test_leaf_without_extended_key_usage_is_refused(env: harness.Env, gateway: Gateway) -> None:
    """A leaf of the dev CA with no EKU at all is no client certificate: gRPC's TLS stack accepted it (a
    serverAuth-only EKU it does refuse at the handshake; the verifier's own refusal is tested below)."""
    mint(env.certs, "no-eku", eku=[])
    _assert_refused_everywhere(env, gateway, "no-eku", rest_may_fail_handshake=True)


def test_revoking_an_intermediate_stops_its_leaves(tmp_path: Path) -> None:
    """With an intermediate in the CA bundle, its leaves are served until the CRL revokes the intermediate;
    then every one of them is refused "revoked" within the reload interval, though the leaf itself is not listed.
    """
    env = harness.make_env(tmp_path)
    harness.seal_model(env, "m", 1, make_onnx_mlp(IN_DIM, (8,), 1, seed=1))
    intermediate = mint(env.certs, "team-ca", ca=True, spiffe=None)
    mint(env.certs, "team-leaf", issuer=intermediate)
    bundle = env.certs / "bundle.pem"
    bundle.write_bytes((env.certs / "ca.pem").read_bytes() + intermediate.cert.public_bytes(serialization.Encoding.PEM))
    env = env.with_config(tls={"ca": bundle, "crl": str(pki.revoke(env.certs, env.certs / "client-other.pem"))})
    token = harness.token(env)
    with GatewayThread(env.config) as gw:
        served = _status(gw)
        assert _infer_grpc(env, gw.grpc_port, "team-leaf", token).as_numpy("output").shape == (1, 1)
        before = _failures(gw, "revoked")
        pki.revoke(env.certs, intermediate.pem)
        deadline = time.monotonic() + 10
        refusal: InferenceServerException | None = None
        while refusal is None and time.monotonic() < deadline:
            try:
                _infer_grpc(env, gw.grpc_port, "team-leaf", token)
                time.sleep(0.2)
            except InferenceServerException as exc:
                refusal = exc
        assert refusal is not None, "a leaf of a revoked intermediate was still served"
        assert "UNAUTHENTICATED" in str(refusal.status()) and "revoked" in str(refusal)
        lines = [r for r in env.audit_lines(gw) if r.get("reason") == "client certificate revoked"]
        assert [(r["method"], r["status"]) for r in lines] == [("grpc:ModelInfer", "UNAUTHENTICATED")]
        assert lines[0]["identity"] == pki.client_spiffe_id("dev") and lines[0].get("subject") is None
        assert _failures(gw, "revoked") == before + 1
        assert _status(gw) == served
        assert _infer_grpc(env, gw.grpc_port, "client", token).as_numpy("output").shape == (1, 1)


def test_verification_is_cached_per_certificate(env: harness.Env) -> None:
    """One full verification per distinct certificate; a repeat costs a dict lookup; refusals are cached too."""
    verifier = ClientCertVerifier(env.certs / "ca.pem")
    good = peer_from_cert((env.certs / "client.pem").read_bytes())
    bad = peer_from_cert(mint(env.certs, "cached-ca", ca=True).pem.read_bytes())
    ids = verifier.chain_ids(good)
    assert ids[0] == (good.issuer, good.serial) and len(ids) == 2
    server_only = peer_from_cert(mint(env.certs, "server-only", eku=[ExtendedKeyUsageOID.SERVER_AUTH]).pem.read_bytes())
    for peer in (bad, server_only):
        with pytest.raises(Unauthenticated) as info:
            verifier.chain_ids(peer)
        assert info.value.reason == "certificate"
    n = 20_000
    started = time.perf_counter()
    for _ in range(n):
        verifier.chain_ids(good)
    per_call_us = (time.perf_counter() - started) / n * 1e6
    print(f"cached chain check: {per_call_us:.2f} µs/call")
    assert per_call_us < 20
    assert len(verifier._cache) == 3


def test_anonymous_and_foreign_bundle(env: harness.Env, tmp_path: Path) -> None:
    """Without a certificate there is no chain; a certificate of another CA never verifies."""
    verifier = ClientCertVerifier(env.certs / "ca.pem")
    assert verifier.chain_ids(peer_from_cert(None)) == ()
    other = tmp_path / "other"
    pki.write_dev_pki(other)
    with pytest.raises(Unauthenticated):
        verifier.chain_ids(peer_from_cert((other / "client.pem").read_bytes()))
    mint_dir = tmp_path / "mint"
    mint_dir.mkdir()
    for name in ("ca.pem", "ca.key"):
        shutil.copy(env.certs / name, mint_dir / name)  # the key keeps its mode 0600
    leaf: Minted = mint(mint_dir, "plain", spiffe=None)
    assert len(verifier.chain_ids(peer_from_cert(leaf.pem.read_bytes()))) == 2  # no SAN: the DN names it
