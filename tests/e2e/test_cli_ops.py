"""The operator's CLI (issue 15): `sealgate --version`, `sealgate health` as a probe, and `--json` on every listing
or status command. The installed console script runs in a subprocess against a real gateway on loopback with
the dev PKI: health answers over mutual TLS, fails fast and in one line when it cannot; each `--json` prints
exactly one JSON document on stdout, and a failure stays one line on stderr with a non-zero exit.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from gateway.auth import pki
from gateway.server.app import GatewayThread
from tests import harness
from tests.models import make_onnx_mlp

SEALGATE = Path(sys.executable).with_name("sealgate")


def sealgate(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed console script (no $SEALGATE_TOKEN from the caller's environment)."""
    run_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    if "SEALGATE_TOKEN" not in (env or {}):
        run_env.pop("SEALGATE_TOKEN", None)
    return subprocess.run(
        [str(SEALGATE), *map(str, args)], capture_output=True, text=True, timeout=60, cwd=cwd, env=run_env
    )


def one_json(result: subprocess.CompletedProcess[str]) -> Any:
    """Assert: exit 0, nothing on stderr but progress, exactly one line on stdout holding one JSON document."""
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def one_error(result: subprocess.CompletedProcess[str], code: int | None = None) -> str:
    """Assert: non-zero exit (or exactly `code`), no stdout, one `error: ` line on stderr; return it."""
    assert result.returncode != 0 if code is None else result.returncode == code, (result.returncode, result.stderr)
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    """A dev PKI and a repository holding mlp v1."""
    env = harness.make_env(tmp_path_factory.mktemp("ops"))
    harness.seal_model(env, "mlp", 1, make_onnx_mlp(in_dim=8, hidden=(8,), out_dim=2))
    return env


@pytest.fixture(scope="module")
def gw(env: harness.Env) -> Iterator[Any]:
    """A gateway on loopback serving env's repository, once it reports mlp v1 serving."""
    with GatewayThread(env.config) as running:
        deadline = time.monotonic() + 60
        while running.manager.default_version("mlp") != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        yield running


def test_version_names_sealgate_and_its_runtimes(tmp_path: Path) -> None:
    """`sealgate --version`: exit 0, one line with sealgate's version and the grpcio and onnxruntime it runs."""
    result = sealgate("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith(f"sealgate {metadata.version('sealgate')} ")
    assert f"grpcio {metadata.version('grpcio')}" in line and f"onnxruntime {metadata.version('onnxruntime')}" in line


def test_health_serving_in_one_line_and_as_json(env: harness.Env, gw: Any) -> None:
    """A serving gateway: exit 0 and one line naming SERVING and the address; --json is one object with ok true."""
    address = f"127.0.0.1:{gw.grpc_port}"
    result = sealgate("health", "--address", address, "--dir", env.certs, cwd=env.root)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith(f"SERVING {address}: "), line
    doc = one_json(sealgate("health", "--address", address, "--dir", env.certs, "--json", cwd=env.root))
    assert doc["ok"] is True and doc["status"] == "SERVING" and doc["address"] == address
    assert doc["latency_ms"] < 2000


def test_health_with_a_model_needs_it_ready_and_a_token(env: harness.Env, gw: Any) -> None:
    """--model: ready model -> 0; unknown model -> 1 (NOT_READY); a token without infer on it -> 3 (refused)."""
    address = f"127.0.0.1:{gw.grpc_port}"
    base = ("health", "--address", address, "--dir", env.certs)
    good = {"SEALGATE_TOKEN": harness.token(env, "infer:mlp infer:ghost")}
    ready = sealgate(*base, "--model", "mlp", cwd=env.root, env=good)
    assert ready.returncode == 0 and "model mlp" in ready.stdout, ready.stderr
    missing = one_error(sealgate(*base, "--model", "ghost", cwd=env.root, env=good), 1)
    assert "NOT_READY" in missing and "ghost" in missing
    narrow = {"SEALGATE_TOKEN": harness.token(env, "infer:other")}
    refused = one_error(sealgate(*base, "--model", "mlp", cwd=env.root, env=narrow), 3)
    assert "PERMISSION_DENIED" in refused
    assert "no token" in one_error(sealgate(*base, "--model", "mlp", cwd=env.root), 1)


def test_health_fails_fast_in_one_line_when_it_cannot_ask(env: harness.Env, gw: Any, tmp_path: Path) -> None:
    """Closed port, foreign CA (TLS failure), a peer that accepts and never answers: exit 3, one line, within
    the timeout (plus the interpreter's start), never a traceback."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connections are refused
        refused = one_error(sealgate("health", "--address", f"127.0.0.1:{port}", "--dir", env.certs, cwd=env.root), 3)
    assert "UNREACHABLE" in refused
    stranger = tmp_path / "stranger"
    pki.write_dev_pki(stranger)
    tls = one_error(sealgate("health", "--address", f"127.0.0.1:{gw.grpc_port}", "--dir", stranger, cwd=env.root), 3)
    assert "TLS_FAILURE" in tls or "UNREACHABLE" in tls, tls
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        held: list[socket.socket] = []
        stop = threading.Event()

        def hold() -> None:
            silent.settimeout(0.2)
            while not stop.is_set():
                try:
                    held.append(silent.accept()[0])
                except TimeoutError:
                    continue

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        start = time.monotonic()
        hung = sealgate(
            "health", "--address", f"127.0.0.1:{silent.getsockname()[1]}", "--dir", env.certs, "--timeout", "1",
            cwd=env.root,
        )  # fmt: skip
        took = time.monotonic() - start
        stop.set()
        holder.join(5)
        for conn in held:
            conn.close()
    assert "TIMEOUT" in one_error(hung, 3)
    assert took < 6, took


def test_json_on_models_push_fetch_rollback(env: harness.Env, gw: Any, tmp_path: Path) -> None:
    """push, models, fetch, rollback with --json each print one JSON object with the protocol's field names."""
    address = f"127.0.0.1:{gw.grpc_port}"
    run_env = {"SEALGATE_TOKEN": harness.token(env, "infer:mlp fetch:mlp release:mlp"), "SEALGATE_ADDRESS": address}
    sealed = harness.seal_model(env, "mlp", 2, make_onnx_mlp(in_dim=8, hidden=(8,), out_dim=2, seed=2),
                                out=tmp_path / "mlp-2.sealed")  # fmt: skip
    pushed = one_json(sealgate("push", sealed, "--dir", env.certs, "--json", cwd=env.root, env=run_env))
    assert (pushed["name"], pushed["version"], pushed["state"]) == ("mlp", 2, "SERVING")
    assert pushed["already_stored"] is False and len(pushed["sha256"]) == 64
    listed = one_json(sealgate("models", "mlp", "--dir", env.certs, "--json", cwd=env.root, env=run_env))
    (model,) = listed["models"]
    assert model["name"] == "mlp"
    states = {v["version"]: v["state"] for v in model["versions"]}
    assert states[2] == "SERVING" and 1 in states
    assert model["versions"][0]["provenance"]["epsilon"] is None  # unset optional: null, not 0
    out = tmp_path / "back.sealed"
    fetched = one_json(
        sealgate("fetch", "mlp", "--out", out, "--version", "2", "--dir", env.certs, "--json", cwd=env.root,
                 env=run_env)
    )  # fmt: skip
    assert fetched["version"] == 2 and fetched["size"] == sealed.stat().st_size and fetched["out"] == str(out)
    assert out.read_bytes() == sealed.read_bytes()
    rolled = one_json(
        sealgate("rollback", "mlp", "--version", "1", "--dir", env.certs, "--json", cwd=env.root, env=run_env)
    )
    assert (rolled["name"], rolled["version"], rolled["previous_version"]) == ("mlp", 1, 2)
    # a refusal with --json: still one line on stderr, nothing on stdout, non-zero exit
    again = sealgate("push", sealed, "--dir", env.certs, "--json", cwd=env.root,
                     env={**run_env, "SEALGATE_TOKEN": harness.token(env, "infer:mlp")})  # fmt: skip
    assert "PERMISSION_DENIED" in one_error(again)


def test_json_on_offline_commands(env: harness.Env, tmp_path: Path) -> None:
    """inspect, verify and token with --json: one JSON object each; the token's claims are its own."""
    sealed = harness.seal_model(env, "ops", 1, make_onnx_mlp(in_dim=4, hidden=(4,), out_dim=1),
                                out=tmp_path / "ops.sealed")  # fmt: skip
    header = one_json(sealgate("inspect", sealed, "--json", cwd=tmp_path))
    assert header["verified"] is False and header["name"] == "ops" and header["version"] == 1
    minted = one_json(sealgate("token", "--sub", "ci", "--scope", "infer:ops", "--ttl", "60", "--dir", env.certs,
                               "--json", cwd=tmp_path))  # fmt: skip
    assert minted["sub"] == "ci" and minted["scope"] == ["infer:ops"] and minted["exp"] - minted["iat"] == 60
    assert minted["token"].count(".") == 2 and minted["bound"] is False
    folder = tmp_path / "signed"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(make_onnx_mlp(in_dim=4, hidden=(4,), out_dim=1)["model.onnx"])
    assert sealgate("sign", folder, "--key", env.certs / "signing.key", cwd=tmp_path).returncode == 0
    verified = one_json(sealgate("verify", folder, "--pub", env.certs / "signing.pub", "--json", cwd=tmp_path))
    assert verified["verified"] is True and verified["path"] == str(folder)
    (folder / "model.onnx").write_bytes(b"tampered")
    one_error(sealgate("verify", folder, "--pub", env.certs / "signing.pub", "--json", cwd=tmp_path))


def test_health_not_serving_exits_1(env: harness.Env) -> None:
    """A gRPC Health server over mTLS that answers NOT_SERVING (as a draining or still-loading gateway does):
    exit 1, one line naming NOT_SERVING, nothing on stdout."""
    from concurrent import futures

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials(
        [((env.certs / "server.key").read_bytes(), (env.certs / "server.pem").read_bytes())],
        root_certificates=(env.certs / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        result = sealgate("health", "--address", f"127.0.0.1:{port}", "--dir", env.certs, "--json", cwd=env.root)
        assert "NOT_SERVING" in one_error(result, 1)
    finally:
        server.stop(0)
