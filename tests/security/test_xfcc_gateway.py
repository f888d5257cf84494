"""Behind a mesh, on a real gateway (issue 15): `[tls] mode = "proxy"` with a proxy client certificate from the
harness's PKI. The proxy forwarding a client in x-forwarded-client-cert acts as that client (its certificate
checked, its binding, its audit identity) over gRPC and REST; any other peer sending the header, a proxy
sending none, a forwarded certificate from another CA, and a token bound to another certificate are refused
with their status codes, audited, and nothing runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests

from gateway.auth import pki
from gateway.auth.xfcc import header_for
from gateway.server.app import GatewayThread
from tests import harness
from tests.security import _grpc

PROXY_ID = "spiffe://sealgate.local/client/proxy"
CLIENT_ID = "spiffe://sealgate.local/client/dev"
XFCC = "x-forwarded-client-cert"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    env = _grpc.served_env(tmp_path_factory.mktemp("mesh"), rest=True)
    pki.add_client(env.certs, "proxy")
    return env.with_config(tls={"mode": "proxy", "proxy_identities": [PROXY_ID]})


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Any]:
    with GatewayThread(env.config) as gw:
        _grpc.wait_serving(gw)
        yield gw


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A client certificate from an unrelated CA (never valid here)."""
    d = tmp_path_factory.mktemp("stranger")
    pki.write_dev_pki(d)
    return d / "client.pem"


def _forward(env: harness.Env, stem: str = "client") -> str:
    return header_for((env.certs / f"{stem}.pem").read_bytes(), by="spiffe://sealgate.local/gateway")


def _runs(gateway: Any) -> int:
    """Inferences the data plane ran on model m, successful or not."""
    return sum(s.success + s.failure for (name, _), s in gateway.dataplane.stats.snapshot().items() if name == "m")


def _infer(env: harness.Env, gateway: Any, peer: str, metadata: tuple[tuple[str, str], ...]) -> Any:
    with _grpc.channel(env, gateway, peer) as chan:
        return _grpc.stub(chan).ModelInfer(_grpc.good_request(), metadata=metadata, timeout=30)


def _refused(env: harness.Env, gateway: Any, peer: str, metadata: Any, code: grpc.StatusCode, needle: str) -> None:
    before = _runs(gateway)
    with pytest.raises(grpc.RpcError) as info:
        _infer(env, gateway, peer, metadata)
    assert info.value.code() == code, info.value.details()
    assert needle in (info.value.details() or ""), info.value.details()
    assert _runs(gateway) == before  # nothing ran


def test_proxy_forwards_the_clients_identity_and_binding(env: harness.Env, gateway: Any) -> None:
    bound = harness.token(env, "infer:m", sub="app", bind=env.certs / "client.pem")
    before = _runs(gateway)
    reply = _infer(env, gateway, "proxy", (("authorization", f"Bearer {bound}"), (XFCC, _forward(env))))
    assert np.frombuffer(reply.raw_output_contents[0], np.float32).shape == (1,)
    assert _runs(gateway) == before + 1
    [record] = [r for r in _grpc.records(env, gateway, "grpc:ModelInfer", "OK") if r.get("subject") == "app"]
    assert record["identity"] == CLIENT_ID  # the forwarded client, not the proxy


def test_a_token_bound_to_another_certificate_is_refused(env: harness.Env, gateway: Any) -> None:
    """RFC 8705 against the forwarded certificate's hash: bound to the proxy's own or another client's."""
    for holder in ("client-proxy.pem", "client-other.pem"):
        bound = harness.token(env, "infer:m", bind=env.certs / holder)
        md = (("authorization", f"Bearer {bound}"), (XFCC, _forward(env)))
        _refused(env, gateway, "proxy", md, grpc.StatusCode.PERMISSION_DENIED, "bound to another client certificate")


def test_a_peer_that_is_not_a_proxy_may_not_send_the_header(env: harness.Env, gateway: Any) -> None:
    before = len(_grpc.records(env, gateway, "grpc:ModelInfer", "UNAUTHENTICATED"))
    md = (*_grpc.auth(env, "infer:m"), (XFCC, _forward(env)))
    _refused(env, gateway, "other", md, grpc.StatusCode.UNAUTHENTICATED, "not a configured proxy")
    audited = _grpc.records(env, gateway, "grpc:ModelInfer", "UNAUTHENTICATED")
    assert len(audited) == before + 1
    assert audited[-1]["identity"] == "spiffe://sealgate.local/client/other"
    assert "x-forwarded-client-cert" in (audited[-1].get("reason") or "")
    assert 'reason="xfcc"' in _grpc.scrape(gateway)
    _grpc.assert_serves(env, gateway, "other")  # the same peer without the header is an ordinary client


def test_the_proxy_must_forward_a_valid_client(env: harness.Env, gateway: Any, stranger: Path) -> None:
    token = _grpc.auth(env, "infer:m")
    code = grpc.StatusCode.UNAUTHENTICATED
    _refused(env, gateway, "proxy", token, code, "must forward")  # no header: the proxy is no client itself
    foreign = ((XFCC, header_for(stranger.read_bytes())),)
    _refused(env, gateway, "proxy", (*token, *foreign), code, "client certificate not accepted")  # chain checked
    broken = ((XFCC, _forward(env).replace("Hash=", "Hash=0", 1)),)
    _refused(env, gateway, "proxy", (*token, *broken), code, "x-forwarded-client-cert refused")


def _rest(env: harness.Env, gateway: Any, peer: str, headers: dict[str, str]) -> requests.Response:
    cert, key = _grpc.cert_paths(env, peer)
    body: dict[str, Any] = {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [1.0] * 8}]}
    return requests.post(
        f"https://127.0.0.1:{gateway.rest_port}/v2/models/m/infer",
        json=body,
        headers=headers,
        verify=str(env.certs / "ca.pem"),
        cert=(str(cert), str(key)),
        timeout=30,
    )


def test_rest_through_the_proxy_and_refused_from_others(env: harness.Env, gateway: Any) -> None:
    auth = {"authorization": f"Bearer {harness.token(env, 'infer:m')}", XFCC: _forward(env)}
    before = _runs(gateway)
    ok = _rest(env, gateway, "proxy", auth)
    assert ok.status_code == 200, ok.text
    assert _runs(gateway) == before + 1
    refused = _rest(env, gateway, "other", auth)
    assert refused.status_code == 401 and "not a configured proxy" in refused.json()["error"]
    assert _runs(gateway) == before + 1


def test_direct_mode_refuses_the_header(tmp_path: Path) -> None:
    """The default: a client sending the header is refused (a proxy in front of a direct-mode gateway is loud)."""
    env = _grpc.served_env(tmp_path)
    with GatewayThread(env.config) as gw:
        _grpc.wait_serving(gw)
        md = (*_grpc.auth(env, "infer:m"), (XFCC, _forward(env, "client-other")))
        _refused(env, gw, "client", md, grpc.StatusCode.UNAUTHENTICATED, "mode is 'direct'")
        _grpc.assert_serves(env, gw)
