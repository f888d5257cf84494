"""Every CLI verb turns an expected failure into one line on stderr and a non-zero exit (issue 10 finding 19,
issue 16 item 1): missing input files, an output folder that does not exist, a port in use, usage errors,
scopes the gateway would never grant. The real `sealgate` console script runs in a subprocess.
"""

from __future__ import annotations

import errno
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest

from gateway.auth.policy import ACTIONS, is_allowed
from gateway.auth.tokens import mint_token
from gateway.errors import ConfigError
from tests.e2e.cli_world import Folder, sealgate, user_folder


def one_error_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Assert: non-zero exit, exactly one line on stderr starting "error: ", no traceback; return that line."""
    assert result.returncode != 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Folder:
    """Keys as `sealgate init` writes them, a model file, and that model sealed for the gateway."""
    world = user_folder(tmp_path_factory.mktemp("user"), 8, (16,), 2)
    assert (
        sealgate(world.root, "inspect", world.sealed).returncode == 0
    )  # the folder is sound: failures are the inputs'
    return world


MISSING_INPUTS: dict[str, list[str]] = {
    "inspect": ["inspect", "gone.sealed"],
    "seal": ["seal", "gone.onnx", "--name", "m", "--version", "1", "--key", "certs/signing.key",
             "--recipient", "certs/gateway.pub", "--out", "out.sealed"],
    "seal-key": ["seal", "model.onnx", "--name", "m", "--version", "1", "--key", "gone.key",
                 "--recipient", "certs/gateway.pub", "--out", "out.sealed"],
    "unseal": ["unseal", "gone.sealed", "--identity", "certs/gateway.key", "--trust", "certs/signing.pub",
               "--out", "out"],
    "push": ["push", "gone.sealed", "--token", "t"],
    "verify": ["verify", "gone", "--pub", "certs/signing.pub"],
    "sign": ["sign", "gone", "--key", "certs/signing.key"],
    "token-bind-cert": ["token", "--sub", "me", "--scope", "infer:m", "--bind-cert", "gone.pem"],
    "token-issuer": ["token", "--sub", "me", "--scope", "infer:m", "--dir", "gone"],
    "revoke": ["revoke", "gone.pem"],
    "serve-config": ["serve", "--config", "gone.toml"],
    "release": ["release", "gone", "--name", "m", "--version", "2", "--data", "gone.npz",
                "--key", "certs/signing.key", "--recipient", "certs/gateway.pub", "--token", "t"],
    "check": ["check", "model.onnx", "--data", "gone.npz"],
}  # fmt: skip


@pytest.mark.parametrize("verb", sorted(MISSING_INPUTS))
def test_a_missing_input_file_is_one_line(folder: Folder, verb: str) -> None:
    """Each verb names the missing file in one line, exits 1, and writes nothing."""
    before = sorted(p.relative_to(folder.root) for p in folder.root.rglob("*"))
    one_error_line(sealgate(folder.root, *MISSING_INPUTS[verb]), "gone")
    assert sorted(p.relative_to(folder.root) for p in folder.root.rglob("*")) == before


def test_fetch_into_a_missing_folder_is_refused_before_connecting(folder: Folder) -> None:
    """`fetch --out` into a folder that does not exist fails at once (no gateway is listening), writing nothing."""
    port = _free_port()
    result = sealgate(folder.root, "fetch", "mlp", "--out", "gone/mlp.sealed", "--address", f"127.0.0.1:{port}",
                      "--token", "t")  # fmt: skip
    one_error_line(result, "--out", "gone", "does not exist")
    assert not (folder.root / "gone").exists()


def test_a_directory_where_a_file_is_expected_is_one_line(folder: Folder) -> None:
    """A folder given as the sealed file is an OSError too (IsADirectoryError), not a traceback."""
    one_error_line(sealgate(folder.root, "inspect", folder.certs), "certs")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port some other process listens on (as another gRPC server would: SO_REUSEPORT set)."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.mark.parametrize("listener", ["grpc_address", "rest_address"])
def test_serve_on_a_taken_port_is_one_line(folder: Folder, taken_port: int, listener: str, tmp_path: Path) -> None:
    """`serve` names the taken address in one line and exits 1 before loading anything or opening its log."""
    ports = {"grpc_address": _free_port(), "rest_address": _free_port(), listener: taken_port}
    config = tmp_path / "sealgate.toml"
    config.write_text(
        f"""
[server]
grpc_address = "127.0.0.1:{ports["grpc_address"]}"
rest_address = "127.0.0.1:{ports["rest_address"]}"

[repository]
path = "{folder.root / "models"}"

[tls]
ca = "{folder.certs / "ca.pem"}"
cert = "{folder.certs / "server.pem"}"
key = "{folder.certs / "server.key"}"

[auth]
jwks = "{folder.certs / "jwks.json"}"

[keys]
identities = ["{folder.certs / "gateway.key"}"]
trusted_signers = ["{folder.certs / "signing.pub"}"]

[audit]
path = "{tmp_path / "audit.log"}"
"""
    )
    result = sealgate(folder.root, "serve", env={"SEALGATE_CONFIG": str(config)})
    line = one_error_line(result, f"port 127.0.0.1:{taken_port} is in use", listener)
    assert result.returncode == 1, line
    assert not (tmp_path / "audit.log").exists()
    free = ports["grpc_address" if listener == "rest_address" else "rest_address"]
    with socket.socket() as again:  # the other port was never left bound
        again.bind(("127.0.0.1", free))


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (
            RuntimeError(
                "Failed to bind to address 127.0.0.1:8500; set GRPC_VERBOSITY=debug environment variable to see "
                "detailed error message."
            ),
            "port 127.0.0.1:8500 is in use",
        ),
        (
            OSError(
                errno.EADDRINUSE,
                "error while attempting to bind on address ('127.0.0.1', 8501): address already in use",
            ),
            "port 127.0.0.1:8501 is in use",
        ),
        (OSError(errno.EADDRINUSE, "Address already in use"), "a port is in use: Address already in use"),
    ],
)
def test_the_servers_own_bind_failures_read_the_same(raised: BaseException, expected: str) -> None:
    """The backstop for a port taken between the check and the bind: gRPC's and asyncio's errors, one line."""
    from gateway.cli import _bind_message

    assert _bind_message(raised) == expected


@pytest.mark.parametrize("args", [["seal"], ["frobnicate"], ["seal", "model.onnx", "--name", "m", "--version", "one"]])
def test_usage_errors_are_one_line(folder: Folder, args: list[str]) -> None:
    """Click's usage errors (missing argument, unknown command, bad value) are one line naming the --help."""
    one_error_line(sealgate(folder.root, *args), "--help")


UNGRANTABLE = {
    "*": "a bare * grants nothing",
    "admin:mlp": "unknown action 'admin'",
    "read:mlp": "unknown action 'read'",
    "infer": "is not one the gateway grants",
    "infer:": "names no possible model",
    "infer:../mlp": "names no possible model",
    "infer:" + "m" * 65: "names no possible model",
    "*:*": "unknown action '*'",
}


@pytest.mark.parametrize("scope", ["*", "admin:mlp", "infer:mlp infer:"])
def test_token_refuses_a_scope_the_gateway_never_grants(folder: Folder, scope: str) -> None:
    """`sealgate token` mints nothing for a scope that policy.is_allowed could never match."""
    result = sealgate(folder.root, "token", "--sub", "me", "--scope", scope)
    one_error_line(result, UNGRANTABLE[scope.split()[-1]])
    assert result.stdout == ""


@pytest.mark.parametrize("scope", sorted(UNGRANTABLE))
def test_mint_token_applies_the_same_rule(folder: Folder, scope: str) -> None:
    """The library path refuses each one too, and the gateway's policy indeed grants it nothing on any model
    a repository can hold: the refusal tells the truth."""
    with pytest.raises(ConfigError, match=re.escape(UNGRANTABLE[scope])):
        mint_token(folder.certs / "jwt-issuer.key", folder.certs / "jwks.json", "me", [scope])
    possible = ["mlp", "m" * 64, "a.b-c_1", "*"]
    assert not any(is_allowed({scope}, action, model) for action in ACTIONS for model in possible)
    grantable = "infer:mlp fetch:mlp release:mlp infer:* fetch:* release:* admin"
    minted = mint_token(folder.certs / "jwt-issuer.key", folder.certs / "jwks.json", "me", f"{grantable} infer:m")
    assert jwt.decode(minted, options={"verify_signature": False})["scope"] == f"{grantable} infer:m"
