"""The public Python API: `import gateway` is light, its surface is exactly `__all__` (typed, documented in
the README), each call works and refuses what it must, and the README's script seals and pushes to a real
gateway, run as written.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import gateway
from gateway import _api
from gateway.server.app import GatewayThread
from tests import harness
from tests.models import make_onnx_mlp

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
HEAVY = ("grpc", "torch", "tensorflow", "onnxruntime", "onnx", "numpy", "cryptography", "flwr")


def readme_section(title: str) -> str:
    """The README's `## title` section, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README.read_text(), re.M | re.S)
    assert match, f"the README has no {title!r} section"
    return match.group(1)


def readme_script() -> str:
    """The Python script of the README's "Python API" section (its first python block)."""
    blocks = re.findall(r"^```python\n(.*?)^```", readme_section("Python API"), re.M | re.S)
    assert blocks, "the Python API section has no python block"
    return str(blocks[0])


# --- the surface -----------------------------------------------------------------------------------
def test_import_gateway_loads_no_transport_or_framework() -> None:
    """A fresh `import gateway` imports neither gRPC nor any ML framework nor cryptography: only the stdlib."""
    script = "import json, sys; import gateway; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout)
    assert "gateway" in loaded
    assert not [m for m in loaded if m.split(".")[0] in HEAVY]


def test_the_surface_is_all_and_each_name_resolves() -> None:
    """`__all__` is sorted; each name resolves (the lazy ones too) to something defined in gateway's modules;
    `dir(gateway)` shows nothing else."""
    assert gateway.__all__ == sorted(gateway.__all__)
    for name in gateway.__all__:
        assert getattr(gateway, name).__module__.startswith("gateway."), name
    assert dir(gateway) == gateway.__all__
    with pytest.raises(AttributeError):
        gateway.ModelManager  # noqa: B018 (an internal stays an internal)


def test_every_public_call_is_typed_and_documented() -> None:
    """Each function and each public Client method has a docstring and annotations that resolve to real types."""
    names = {n: getattr(gateway, n) for n in gateway.__all__}
    namespace = {**vars(_api), **names}
    calls = [obj for obj in names.values() if inspect.isfunction(obj)]
    calls += [m for n, m in vars(gateway.Client).items() if inspect.isfunction(m) and not n.startswith("_")]
    assert len(calls) >= 13
    for fn in calls:
        assert fn.__doc__, fn.__qualname__
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn, globalns=namespace)
        assert "return" in hints, fn.__qualname__
        for param in signature.parameters.values():
            assert param.name == "self" or param.name in hints, f"{fn.__qualname__}({param.name})"


def test_the_readme_documents_every_public_name() -> None:
    """The README's Python API section names every public name, so the docs and `__all__` cannot drift."""
    section = readme_section("Python API")
    missing = [n for n in gateway.__all__ if f"`{n}" not in section and f".{n}(" not in section]
    assert not missing, missing


def test_the_package_ships_its_type_hints() -> None:
    """PEP 561: gateway/py.typed exists and pyproject.toml ships it as package data; mypy runs strict."""
    assert (ROOT / "gateway" / "py.typed").is_file()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["gateway"]
    assert project["tool"]["mypy"]["strict"] is True
    assert project["tool"]["mypy"]["files"] == ["gateway", "fl"]


# --- the offline calls -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    """A dev PKI, an empty repository, and a config on free loopback ports."""
    return harness.make_env(tmp_path_factory.mktemp("api"))


def test_seal_inspect_open_in_memory(env: harness.Env, tmp_path: Path) -> None:
    """seal writes a sealed file; inspect reads its header with no key; open verifies and decrypts in memory."""
    files = {"weights.bin": b"\x01\x02" * 100, "config.json": b"{}"}
    out = tmp_path / "m.sealed"
    header = gateway.seal(
        files, out, name="m", version=3, key=env.certs / "signing.key", recipients=str(env.certs / "gateway.pub")
    )
    assert (header.name, header.version, len(header.recipients)) == ("m", 3, 1)
    assert gateway.inspect(out) == header == gateway.inspect(out.read_bytes())
    opened = gateway.open(out, identities=env.certs / "gateway.key", trust=[env.certs / "signing.pub"])
    assert isinstance(opened, gateway.OpenedArtifact)
    assert opened.model_files == files
    assert opened.provenance["name"] == "m" and opened.provenance["version"] == 3
    assert not list(tmp_path.glob("*.bin")), "open writes nothing"


def test_open_refuses_a_stranger_an_untrusted_signer_and_tampering(env: harness.Env, tmp_path: Path) -> None:
    """The typed errors of the public surface: not a recipient, untrusted signer, tampered bytes."""
    out = tmp_path / "m.sealed"
    gateway.seal({"w.bin": b"w" * 64}, out, name="m", version=1, key=env.certs / "signing.key",
                 recipients=[env.certs / "gateway.pub"])  # fmt: skip
    stranger = tmp_path / "stranger"
    from gateway.auth import pki

    pki.write_recipient_keys(stranger)
    pki.write_signing_keys(stranger)
    with pytest.raises(gateway.NotARecipient):
        gateway.open(out, identities=stranger / "gateway.key", trust=env.certs / "signing.pub")
    with pytest.raises(gateway.UntrustedSigner):
        gateway.open(out, identities=env.certs / "gateway.key", trust=stranger / "signing.pub")
    data = bytearray(out.read_bytes())
    data[-40] ^= 1
    with pytest.raises(gateway.ArtifactError):
        gateway.open(bytes(data), identities=env.certs / "gateway.key", trust=env.certs / "signing.pub")
    with pytest.raises(gateway.ConfigError, match="at least one"):
        gateway.open(out, identities=[], trust=env.certs / "signing.pub")


def test_sign_and_verify_a_model_folder(env: harness.Env, tmp_path: Path) -> None:
    """sign writes model.sig; verify passes, then refuses a changed file and a key that did not sign."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not really onnx")
    assert gateway.sign(folder, env.certs / "signing.key") == folder / "model.sig"
    assert gateway.verify(folder, env.certs / "signing.pub") is None
    other = tmp_path / "other"
    from gateway.auth import pki

    pki.write_signing_keys(other)
    with pytest.raises(gateway.UntrustedSigner):
        gateway.verify(folder, other / "signing.pub")
    (folder / "model.onnx").write_bytes(b"changed")
    with pytest.raises(gateway.SignatureError):
        gateway.verify(folder, env.certs / "signing.pub")


def test_load_config_reads_a_file_and_refuses_unknown_keys(env: harness.Env, tmp_path: Path) -> None:
    """load_config gives the Config `sealgate serve` would use; a typo is a ConfigError naming the key."""
    config = gateway.load_config(env.root / "sealgate.toml")
    assert isinstance(config, gateway.Config)
    assert config.repository.path == env.models
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\ngrpc_adress = "127.0.0.1:1"\n')
    with pytest.raises(gateway.ConfigError, match="grpc_adress"):
        gateway.load_config(bad)


# --- against a real gateway ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gw(env: harness.Env) -> Iterator[Any]:
    """A gateway on loopback ports with real mTLS, serving env's repository."""
    with GatewayThread(env.config) as running:
        yield running


def test_the_readme_script_seals_and_pushes(env: harness.Env, gw: Any, tmp_path: Path) -> None:
    """The README's script, as written, in a fresh folder holding certs/ and model.onnx: mlp v2 is sealed,
    pushed, verified by the gateway and served."""
    work = tmp_path / "fresh"
    work.mkdir()
    (work / "certs").symlink_to(env.certs)
    (work / "model.onnx").write_bytes(make_onnx_mlp(in_dim=64, hidden=(32,), out_dim=10, seed=3)["model.onnx"])
    token = harness.token(env, "infer:mlp fetch:mlp release:mlp")
    run_env = {**os.environ, "SEALGATE_ADDRESS": f"127.0.0.1:{gw.grpc_port}", "SEALGATE_TOKEN": token}
    run_env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-"], input=readme_script(), cwd=work, env=run_env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pushed mlp v2: SERVING" in done.stdout
    assert "mlp serving v2" in done.stdout
    assert (work / "mlp-2.sealed").is_file() and (env.models / "mlp" / "2.sealed").is_file()
    assert gw.manager.get("mlp").version == 2


def test_the_client_fetches_lists_rolls_back_and_raises_remote_errors(
    env: harness.Env, gw: Any, tmp_path: Path
) -> None:
    """push twice, list, fetch (bytes equal), roll back; a missing scope is a RemoteError PERMISSION_DENIED."""
    model = make_onnx_mlp(in_dim=8, hidden=(8,), out_dim=2, seed=1)
    paths = []
    for version in (1, 2):
        path = tmp_path / f"c-{version}.sealed"
        gateway.seal(model, path, name="c", version=version, key=env.certs / "signing.key",
                     recipients=env.certs / "gateway.pub")  # fmt: skip
        paths.append(path)
    address = f"127.0.0.1:{gw.grpc_port}"
    with gateway.connect(address, certs=env.certs, token=harness.token(env, "release:c fetch:c")) as client:
        assert [client.push(p).state for p in paths] == ["SERVING", "SERVING"]
        again = client.push(paths[1])
        assert again.already_stored and again.version == 2
        (listed,) = client.list("c")
        assert isinstance(listed, gateway.ModelInfo) and listed.serving_version == 2
        assert [v.version for v in listed.versions] == [1, 2]
        fetched = client.fetch("c", tmp_path / "back.sealed", version=1)
        assert fetched.path.read_bytes() == paths[0].read_bytes() and fetched.size == paths[0].stat().st_size
        rolled = client.rollback("c", 1, reason="test")
        assert (rolled.version, rolled.previous_version) == (1, 2)
    with gateway.connect(address, certs=env.certs, token=harness.token(env, "fetch:c")) as client:
        with pytest.raises(gateway.RemoteError) as refused:
            client.rollback("c", 2)
    assert refused.value.code.name == "PERMISSION_DENIED"
    assert isinstance(refused.value, gateway.SealgateError)


def test_serve_runs_the_gateway_until_sigterm(env: harness.Env, tmp_path: Path) -> None:
    """gateway.serve(path) in a process of its own serves (a client lists its empty repository) and exits 0 on
    SIGTERM."""
    config = tmp_path / "sealgate.toml"  # its own empty repository, the PKI of env beside it
    config.write_text((env.root / "sealgate.toml").read_text())
    (tmp_path / "models").mkdir()
    (tmp_path / "certs").symlink_to(env.certs)
    script = f"import gateway, sys; sys.exit(gateway.serve({str(config)!r}))"
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + 90
        port = None
        assert proc.stderr is not None
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            port = re.search(r"gRPC \S+ \(port (\d+)\)", line)
        assert port, f"no start line; exit {proc.poll()}"
        with gateway.connect(f"127.0.0.1:{port.group(1)}", certs=env.certs, token=harness.token(env)) as client:
            assert client.list() == []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
