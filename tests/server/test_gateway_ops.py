"""Operating the gateway: versions appearing on disk, refused artifacts, SIGTERM drain, config validation,
key rotation without restart, metrics of refusals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.server.app import GatewayThread
from gateway.server.ports import free_loopback_port
from tests import harness
from tests.models import make_onnx_mlp, mlp_reference

IN = 8


def _infer(env: harness.Env, port: int, version: str = "") -> tuple[str, np.ndarray]:
    x = np.ones((1, IN), np.float32)
    with harness.triton(env, port) as c:
        inp = grpcclient.InferInput("input", [1, IN], "FP32")
        inp.set_data_from_numpy(x)
        r = c.infer("m", [inp], model_version=version, headers={"authorization": "Bearer " + harness.token(env)})
    return r.get_response().model_version, r.as_numpy("output")


@pytest.fixture()
def env(tmp_path: Path) -> harness.Env:
    env = harness.make_env(tmp_path)
    harness.seal_model(env, "m", 1, make_onnx_mlp(IN, (8,), 1, seed=1))
    return env


@pytest.fixture()
def gateway(env: harness.Env) -> Iterator[Any]:
    with GatewayThread(env.config) as gw:
        yield gw


def _wait_version(env: harness.Env, port: int, want: str, limit: float) -> float:
    t0 = time.time()
    while time.time() - t0 < limit:
        if _infer(env, port)[0] == want:
            return time.time() - t0
        time.sleep(0.05)
    raise AssertionError(f"version {want} not served within {limit} s")


def test_copied_version_served_without_restart_and_bad_ones_refused(
    env: harness.Env, gateway: Any, tmp_path: Path
) -> None:
    staged = harness.seal_model(env, "m", 2, make_onnx_mlp(IN, (8,), 1, seed=2), out=tmp_path / "2.sealed")
    os.replace(staged, env.models / "m" / "2.sealed")  # an operator's `mv` into the repository
    assert _wait_version(env, gateway.grpc_port, "2", 2.0) < 2.0
    np.testing.assert_allclose(
        _infer(env, gateway.grpc_port)[1], mlp_reference(IN, (8,), 1, 2)(np.ones((1, IN))), rtol=1e-5
    )
    tampered = bytearray(
        harness.seal_model(env, "m", 3, make_onnx_mlp(IN, (8,), 1, seed=3), out=tmp_path / "3.sealed").read_bytes()
    )
    tampered[-100] ^= 0xFF
    (tmp_path / "3.tmp").write_bytes(bytes(tampered))
    os.replace(tmp_path / "3.tmp", env.models / "m" / "3.sealed")
    from gateway.auth import pki

    pki.write_signing_keys(tmp_path / "rogue")
    rogue = harness.seal_model(
        env,
        "m",
        4,
        make_onnx_mlp(IN, (8,), 1, seed=4),
        out=tmp_path / "4.sealed",
        signer_key=tmp_path / "rogue" / "signing.key",
    )
    os.replace(rogue, env.models / "m" / "4.sealed")
    deadline = time.time() + 5
    states: dict[int, tuple[str, str]] = {}
    while time.time() < deadline:
        states = {s.version: (s.state.name, s.reason) for s in gateway.manager.status("m")}
        if states.get(3, ("",))[0] == "REFUSED" and states.get(4, ("",))[0] == "REFUSED":
            break
        time.sleep(0.05)
    assert states[3][0] == "REFUSED" and "signature" in states[3][1]
    assert states[4][0] == "REFUSED" and "trust" in states[4][1]
    assert _infer(env, gateway.grpc_port)[0] == "2"
    with harness.triton(env, gateway.grpc_port) as c, pytest.raises(InferenceServerException) as e:
        inp = grpcclient.InferInput("input", [1, IN], "FP32")
        inp.set_data_from_numpy(np.ones((1, IN), np.float32))
        c.infer("m", [inp], model_version="3", headers={"authorization": "Bearer " + harness.token(env)})
    assert "UNAVAILABLE" in str(e.value.status())


def test_jwks_rotation_without_restart(env: harness.Env, gateway: Any, tmp_path: Path) -> None:
    from gateway.auth import pki

    old = harness.token(env)
    rotated = tmp_path / "rotated"
    pki.write_jwt_issuer(rotated)
    time.sleep(1.1)  # the verifier looks at the JWKS file at most once a second
    for name in ("jwt-issuer.key", "jwt-issuer.pub", "jwks.json"):
        os.replace(rotated / name, env.certs / name)
    time.sleep(1.1)
    new = harness.token(env)
    assert new != old
    x = np.ones((1, IN), np.float32)
    with harness.triton(env, gateway.grpc_port) as c:
        inp = grpcclient.InferInput("input", [1, IN], "FP32")
        inp.set_data_from_numpy(x)
        assert c.infer("m", [inp], headers={"authorization": "Bearer " + new}).get_response().model_version == "1"
        with pytest.raises(InferenceServerException) as e:
            c.infer("m", [inp], headers={"authorization": "Bearer " + old})
    assert "UNAUTHENTICATED" in str(e.value.status())
    gateway.recorder.flush()
    metrics = gateway.metrics.render().decode()
    assert 'sealgate_auth_failures_total{reason="unknown_kid"} 1.0' in metrics


def test_config_is_validated(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\ngrpc_adress = '127.0.0.1:1'\n")
    with pytest.raises(ConfigError, match="unknown key 'grpc_adress' in \\[server\\]"):
        load_config(bad)
    bad.write_text("[serverr]\n")
    with pytest.raises(ConfigError, match="unknown section"):
        load_config(bad)
    bad.write_text("[auth]\nalgorithms = ['HS256']\n")
    with pytest.raises(ConfigError, match="HS256 is not allowed"):
        load_config(bad)
    bad.write_text("[repository]\nlatest = 'two'\n")
    with pytest.raises(ConfigError, match="must be a number"):
        load_config(bad)
    bad.write_text("[auth]\njwks_url = 'http://idp.example/jwks.json'\n")
    with pytest.raises(ConfigError, match="jwks_url must be an https"):
        load_config(bad)
    bad.write_text("[auth]\njwks_url = 'https://127.0.0.1:1/jwks.json'\njwks_ca = 'idp-ca.pem'\n")
    assert load_config(bad).auth.jwks_ca == str(tmp_path / "idp-ca.pem"), "paths are relative to the config file"
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr


def test_sigterm_drains_and_exits_zero(tmp_path: Path) -> None:
    gport = free_loopback_port()
    env = harness.make_env(tmp_path, gport, free_loopback_port())
    harness.seal_model(env, "m", 1, make_onnx_mlp(IN, (8,), 1, seed=1))
    # a drain long enough for any call in flight on a loaded machine (the harness's 1 s once cut one short:
    # CANCELLED); the server exits as soon as its last call is answered, so the test does not wait it out
    toml = env.root / "sealgate.toml"
    toml.write_text(toml.read_text().replace("drain_seconds = 1.0", "drain_seconds = 20.0"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(toml)],
        cwd=env.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                assert _infer(env, gport)[0] == "1"
                break
            except InferenceServerException:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        done: list[str] = []
        errors: list[BaseException] = []

        def hammer() -> None:
            try:
                for _ in range(200):
                    done.append(_infer(env, gport)[0])
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=hammer)
        t.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        t.join(30)
        assert done, "no request completed before the drain"
        # after SIGTERM, calls either completed or were refused cleanly (UNAVAILABLE), never half-answered
        seen = [(e.status(), e.message()) if isinstance(e, InferenceServerException) else repr(e) for e in errors]
        assert all(isinstance(s, tuple) and "UNAVAILABLE" in str(s[0]) for s in seen), seen
        assert b"draining" in proc.stderr.read()
        ok = [r for r in env.audit_lines() if r["method"] == "grpc:ModelInfer" and r["status"] == "OK"]
        assert len(ok) >= len(done) + 1, "every answered call has its audit line once the server has exited"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_cancelled_fetch_is_audited_as_cancelled_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import grpc

    from gateway.auth.tls import channel_credentials
    from gateway.protos.sealgate.v1 import release_pb2, release_pb2_grpc

    env = harness.make_env(tmp_path)
    harness.seal_model(env, "big", 1, make_onnx_mlp(IN, (1024, 2048), 1, seed=2))  # ~8 MB: many 1 MiB chunks
    creds = channel_credentials(env.certs / "ca.pem", env.certs / "client.pem", env.certs / "client.key")
    md = (("authorization", "Bearer " + harness.token(env, "fetch:big")),)
    with (
        caplog.at_level("ERROR", logger="sealgate.server"),
        GatewayThread(env.config) as gw,
        grpc.secure_channel(f"127.0.0.1:{gw.grpc_port}", creds) as channel,
    ):
        stream = release_pb2_grpc.ReleaseStub(channel).Fetch(release_pb2.FetchRequest(name="big"), metadata=md)
        assert next(stream).HasField("metadata")
        stream.cancel()  # the client stops reading after the first message
        deadline = time.time() + 10
        while not (fetches := [r for r in env.audit_lines(gw) if r["method"] == "grpc:Fetch"]):
            assert time.time() < deadline, "the cancelled Fetch was never recorded"
            time.sleep(0.05)
        assert [r["status"] for r in fetches] == ["CANCELLED"]
    assert not [r for r in caplog.records if "unexpected error" in r.getMessage()]
