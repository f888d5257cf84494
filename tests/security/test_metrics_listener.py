"""/metrics on its own listener (issue 10, finding 7 for REST; 11 for /metrics access).

The mTLS REST port answered /metrics to a revoked certificate with no token. Now it answers 404 and shows no
metric to anyone; the metrics listener (plain HTTP, loopback, its own port) serves GET /metrics only, writes
pending call records first, and audits scrapes and refusals. '' turns it off.
"""

from __future__ import annotations

import socket
from pathlib import Path

import requests

from gateway.auth import pki
from gateway.server.app import GatewayThread
from tests import harness
from tests.security._rest import predict_ok, requests_counted, rest_env, scrape, wait_serving


def test_rest_port_no_longer_serves_metrics_and_the_listener_does(tmp_path: Path) -> None:
    env = rest_env(tmp_path)
    env = env.with_config(tls={"crl": str(pki.revoke(env.certs, env.certs / "client-other.pem"))})
    token = harness.token(env)
    with GatewayThread(env.config) as gw:
        wait_serving(gw)
        assert gw.metrics_port and gw.metrics_port not in (gw.rest_port, gw.grpc_port)
        for client, headers in (("client-other", {}), ("client", {}), ("client", {"authorization": f"Bearer {token}"})):
            r = requests.get(
                f"https://127.0.0.1:{gw.rest_port}/metrics",
                headers=headers,
                verify=str(env.certs / "ca.pem"),
                cert=(str(env.certs / f"{client}.pem"), str(env.certs / f"{client}.key")),
                timeout=10,
            )
            assert r.status_code == 404 and "sealgate_" not in r.text, (client, r.text[:200])
        predict_ok(env, gw, token)
        # no flush by the test: the listener writes what the recorder holds before rendering
        text = scrape(gw)
        assert 'sealgate_requests_total{method="Predict",model="m",protocol="rest",status="OK",version="1"} 1.0' in text
        refusals_before = requests_counted(gw, "metrics", "http-parse", "UNIMPLEMENTED")
        url = f"http://127.0.0.1:{gw.metrics_port}"
        assert requests.get(url + "/v1/models/m", timeout=10).status_code == 404
        assert requests.post(url + "/metrics", data=b"x", timeout=10).status_code == 405
        assert requests.get(url + "/metrics?x=1", timeout=10).status_code == 200
        with socket.create_connection(("127.0.0.1", gw.metrics_port), timeout=10) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 501")
        assert requests_counted(gw, "metrics", "http-parse", "UNIMPLEMENTED") == refusals_before + 2
        lines = env.audit_lines(gw)
        scrapes = [r for r in lines if r["method"] == "metrics:Scrape"]
        refused = [r for r in lines if r["method"] == "metrics:http-parse"]
        assert len(scrapes) >= 3 and all(r["status"] == "OK" for r in scrapes)
        assert sorted(r["status"] for r in refused) == ["NOT_FOUND", "UNIMPLEMENTED", "UNIMPLEMENTED"]
        predict_ok(env, gw, token)


def test_metrics_listener_can_be_turned_off(tmp_path: Path) -> None:
    env = rest_env(tmp_path, metrics_address="")
    with GatewayThread(env.config) as gw:
        wait_serving(gw)
        assert gw.metrics_port == 0
        predict_ok(env, gw, harness.token(env))
