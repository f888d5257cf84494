"""Client-certificate revocation: `sealgate revoke` writes the CA's CRL; the gateway refuses revoked
certificates over gRPC and REST with UNAUTHENTICATED / 401 and an audit line, and picks up a new CRL
without a restart."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from cryptography import x509
from tritonclient.utils import InferenceServerException

from gateway.auth import peer_from_cert, pki
from gateway.auth.revocation import RevocationList
from gateway.errors import ConfigError, Unauthenticated
from gateway.server.app import GatewayThread
from tests import harness
from tests.models import make_onnx_mlp

ROOT = Path(__file__).resolve().parents[2]


def _peer(certs: Path, name: str) -> Any:
    return peer_from_cert((certs / f"{name}.pem").read_bytes())


def test_revoke_and_check(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    pki.write_dev_pki(certs)
    pki.add_client(certs, "a")
    pki.add_client(certs, "b")
    crl = pki.revoke(certs, certs / "client-a.pem")
    revoked = RevocationList(crl, certs / "ca.pem", reload_interval=0)
    with pytest.raises(Unauthenticated) as info:
        revoked.check(_peer(certs, "client-a"))
    assert info.value.reason == "revoked"
    revoked.check(_peer(certs, "client-b"))
    revoked.check(_peer(certs, "client"))
    pki.revoke(certs, certs / "client-b.pem")  # appends: a stays revoked
    with pytest.raises(Unauthenticated):
        revoked.check(_peer(certs, "client-b"))
    with pytest.raises(Unauthenticated):
        revoked.check(_peer(certs, "client-a"))
    assert revoked.revoked_count == 2
    listed = {e.serial_number for e in x509.load_pem_x509_crl(crl.read_bytes())}
    assert listed == {
        x509.load_pem_x509_certificate((certs / f"client-{n}.pem").read_bytes()).serial_number for n in "ab"
    }


def test_foreign_or_broken_crls_are_refused(tmp_path: Path) -> None:
    certs, other = tmp_path / "certs", tmp_path / "other"
    pki.write_dev_pki(certs)
    pki.write_dev_pki(other)
    foreign = pki.revoke(other, other / "client.pem")
    with pytest.raises(ConfigError, match="not signed by a CA"):
        RevocationList(foreign, certs / "ca.pem")
    with pytest.raises(ConfigError, match="not issued by the CA"):
        pki.revoke(certs, other / "client.pem")
    good = pki.revoke(certs, certs / "client.pem")
    revoked = RevocationList(good, certs / "ca.pem", reload_interval=0)
    shutil.copy(foreign, good)  # a replacement signed by someone else is not loaded
    assert revoked.reload() is False
    good.write_bytes(b"not a crl")
    assert revoked.reload() is False
    with pytest.raises(Unauthenticated):
        revoked.check(_peer(certs, "client"))


def test_cli_revoke(tmp_path: Path) -> None:
    certs, other = tmp_path / "certs", tmp_path / "other"
    pki.write_dev_pki(certs)
    pki.write_dev_pki(other)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = [sys.executable, "-m", "gateway.cli", "revoke", "--dir", str(certs)]
    ok = subprocess.run([*run, str(certs / "client.pem")], capture_output=True, text=True, timeout=60, env=env)
    assert ok.returncode == 0 and "crl.pem" in ok.stdout
    bad = subprocess.run([*run, str(other / "client.pem")], capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr


def _infer(env: harness.Env, port: int, client: str) -> Any:
    inp = grpcclient.InferInput("input", [1, 8], "FP32")
    inp.set_data_from_numpy(np.ones((1, 8), np.float32))
    with harness.triton(env, port, client=client) as c:
        return c.infer("m", [inp], headers={"authorization": "Bearer " + harness.token(env)})


def test_gateway_refuses_revoked_certificates_and_reloads_the_crl(tmp_path: Path) -> None:
    env = harness.make_env(tmp_path)
    harness.seal_model(env, "m", 1, make_onnx_mlp(8, (8,), 1, seed=1))
    env = env.with_config(tls={"crl": str(pki.revoke(env.certs, env.certs / "client-other.pem"))})
    with GatewayThread(env.config) as gw:
        before = [(s.name, s.version, s.state.name) for s in gw.manager.status()]
        assert _infer(env, gw.grpc_port, "client").as_numpy("output").shape == (1, 1)
        with pytest.raises(InferenceServerException) as e:
            _infer(env, gw.grpc_port, "client-other")
        assert "UNAUTHENTICATED" in str(e.value.status()) and "revoked" in str(e.value)
        rest = requests.post(
            f"https://127.0.0.1:{gw.rest_port}/v1/models/m:predict",
            json={"instances": [[1.0] * 8]},
            headers={"authorization": "Bearer " + harness.token(env)},
            cert=(str(env.certs / "client-other.pem"), str(env.certs / "client-other.key")),
            verify=str(env.certs / "ca.pem"),
            timeout=30,
        )
        assert rest.status_code == 401 and "revoked" in rest.json()["error"]
        lines = [r for r in env.audit_lines(gw) if r.get("reason") == "client certificate revoked"]
        assert {r["method"] for r in lines} == {"grpc:ModelInfer", "rest:Predict"}
        assert all(r["status"] == "UNAUTHENTICATED" for r in lines)
        assert [(s.name, s.version, s.state.name) for s in gw.manager.status()] == before

        pki.revoke(env.certs, env.certs / "client.pem")  # no restart: the next check re-reads the file
        deadline = time.time() + 10
        while True:
            try:
                _infer(env, gw.grpc_port, "client")
            except InferenceServerException as exc:
                assert "revoked" in str(exc)
                break
            assert time.time() < deadline, "the new CRL was never enforced"
            time.sleep(0.1)
