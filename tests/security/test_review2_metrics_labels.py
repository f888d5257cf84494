"""Second review, metrics labels (issue 10, class of finding 5): a client-chosen version string beside a
model that exists must not become a label, whether the caller has no token (gRPC Explain and
Release.Rollback copy the requested version into the call record before authenticating) or is authorized
and asks for versions that do not exist (REST puts the path's version in the record before resolving it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import requests

from gateway.protos.sealgate.v1 import explain_pb2, explain_pb2_grpc, release_pb2, release_pb2_grpc
from gateway.server.app import GatewayThread
from tests import harness
from tests.security import _grpc

CALLS = 20
FIRST = 400_000  # versions FIRST .. FIRST + CALLS - 1 do not exist; model "m" has version 1 only


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    """Model "m" served over gRPC and REST (no metrics listener: metrics are read in-process)."""
    return _grpc.served_env(tmp_path_factory.mktemp("labels2")).with_config(server={"rest": True})


@pytest.fixture(scope="module")
def gateway(env: harness.Env) -> Iterator[Any]:
    with GatewayThread(env.config) as gw:
        _grpc.wait_serving(gw)
        yield gw


def _version_labels(text: str) -> set[str]:
    """Every version label value of model "m" in a scrape."""
    return set(re.findall(r'model="m"[^}]*version="([0-9]+)"', text))


def test_token_less_calls_naming_versions_leave_no_label(env: harness.Env, gateway: Any) -> None:
    """UNAUTHENTICATED Explain / Rollback calls on a real model with made-up versions: counted, never a label."""
    with _grpc.channel(env, gateway) as chan:
        explain = explain_pb2_grpc.ExplainStub(chan)
        release = release_pb2_grpc.ReleaseStub(chan)
        for i in range(CALLS):
            version = str(FIRST + i)
            with pytest.raises(grpc.RpcError) as refused:
                explain.Explain(explain_pb2.ExplainRequest(model_name="m", model_version=version), timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as refused:
                release.Rollback(release_pb2.RollbackRequest(name="m", version=int(version), reason="x"), timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    text = _grpc.scrape(gateway)
    assert not {v for v in _version_labels(text) if int(v) >= FIRST}, "a refused call's version became a label"
    assert 'model="",protocol="grpc",status="UNAUTHENTICATED",version=""' in text, "refusals are still counted"
    _grpc.assert_serves(env, gateway)


def test_authorized_unknown_versions_over_rest_leave_no_label(env: harness.Env, gateway: Any) -> None:
    """404s for versions that do not exist fold into version=""; the served version keeps its label."""
    auth = {"authorization": "Bearer " + harness.token(env)}
    kwargs: dict[str, Any] = {
        "verify": str(env.certs / "ca.pem"),
        "cert": (str(env.certs / "client.pem"), str(env.certs / "client.key")),
        "timeout": 30,
        "headers": auth,
    }
    base = f"https://127.0.0.1:{gateway.rest_port}"
    with requests.Session() as session:
        for i in range(CALLS):
            assert session.get(f"{base}/v2/models/m/versions/{FIRST + 100 + i}", **kwargs).status_code == 404
            assert session.get(f"{base}/v1/models/m/versions/{FIRST + 200 + i}", **kwargs).status_code == 404
        assert session.get(f"{base}/v2/models/m/versions/1", **kwargs).status_code == 200
    text = _grpc.scrape(gateway)
    assert not {v for v in _version_labels(text) if int(v) >= FIRST}, "an unknown version became a label"
    assert 'model="m",protocol="rest",status="NOT_FOUND",version=""' in text
    assert 'model="m",protocol="rest",status="OK",version="1"' in text, "a served version keeps its label"
    _grpc.assert_serves(env, gateway)
