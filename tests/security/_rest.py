"""Helpers for the REST security tests: a gateway with tight REST bounds, raw TLS sockets, response parsing."""

from __future__ import annotations

import re
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests import harness
from tests.models import make_onnx_mlp

IN = 8


def rest_env(root: Path, **server: Any) -> harness.Env:
    """A dev world with model "m" (FP32 [-1, 8] -> [-1, 1]), the metrics listener on a free port, and `server` set."""
    env = harness.make_env(root)
    harness.seal_model(env, "m", 1, make_onnx_mlp(IN, (8,), 1, seed=1))
    return env.with_config(server={"metrics_address": "127.0.0.1:0", **server})


def wait_serving(gw: Any, name: str = "m") -> None:
    """Wait until `name` serves (the repository is polled)."""
    deadline = time.time() + 60
    while not any(s.name == name and s.state.name == "SERVING" for s in gw.manager.status()):
        assert time.time() < deadline, f"{name} never served"
        time.sleep(0.05)


def tls_socket(env: harness.Env, port: int, client: str = "client", timeout: float = 10) -> ssl.SSLSocket:
    """A raw mTLS socket to the REST port with the named client certificate."""
    ctx = ssl.create_default_context(cafile=str(env.certs / "ca.pem"))
    ctx.load_cert_chain(env.certs / f"{client}.pem", env.certs / f"{client}.key")
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return ctx.wrap_socket(sock, server_hostname="localhost")


def read_all(sock: ssl.SSLSocket, timeout: float = 10) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True) or `timeout` passes without closing (False)."""
    sock.settimeout(0.5)
    out = bytearray()
    end = time.time() + timeout
    while time.time() < end:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except (ssl.SSLError, ConnectionError):
            return bytes(out), True
        if not chunk:
            return bytes(out), True
        out += chunk
    return bytes(out), False


def exchange(
    env: harness.Env, port: int, data: bytes, client: str = "client", timeout: float = 10
) -> tuple[bytes, bool]:
    """Send raw bytes over a fresh mTLS connection; what came back and whether the server closed."""
    with tls_socket(env, port, client) as sock:
        try:
            sock.sendall(data)
        except (ssl.SSLError, ConnectionError):
            pass
        return read_all(sock, timeout)


def statuses(raw: bytes) -> list[int]:
    """The status codes of every HTTP response in `raw`, in order."""
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3})", raw)]


def header(raw: bytes, name: str) -> str | None:
    """The value of header `name` in the first response of `raw`."""
    m = re.search(rb"\r\n" + name.encode() + rb": *([^\r]*)\r\n", raw.split(b"\r\n\r\n", 1)[0] + b"\r\n", re.I)
    return m.group(1).decode() if m else None


def predict_ok(env: harness.Env, gw: Any, token: str) -> None:
    """The server still serves: a valid predict over requests answers 200 with one prediction."""
    r = requests.post(
        f"https://127.0.0.1:{gw.rest_port}/v1/models/m:predict",
        json={"instances": [[0.5] * IN]},
        headers={"authorization": f"Bearer {token}"},
        verify=str(env.certs / "ca.pem"),
        cert=(str(env.certs / "client.pem"), str(env.certs / "client.key")),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 1


def scrape(gw: Any) -> str:
    """The metrics listener's text (plain HTTP on loopback)."""
    r = requests.get(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=10)
    assert r.status_code == 200
    return r.text


def requests_counted(gw: Any, protocol: str, method: str, status: str) -> float:
    """sealgate_requests_total for (protocol, method, status), from the metrics listener.

    A method or protocol outside the metrics' fixed label sets is counted under "_other": both are summed.
    """
    total = 0.0
    for family in text_string_to_metric_families(scrape(gw)):
        if family.name != "sealgate_requests":
            continue
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name.endswith("_total")
                and labels.get("protocol") in (protocol, "_other")
                and labels.get("method") in (method, "_other")
                and labels.get("status") == status
            ):
                total += sample.value
    return total
