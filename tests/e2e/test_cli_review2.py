"""The second outside review of the CLI (issue 10, finding 19 and its class): a careless operator's bad input
to every verb gets one `error:` line on stderr, exit 1 (2 for usage errors), no traceback, no C++ log line,
no "a bug" line, nothing half-written and no secret echoed. The real `sealgate` console script in a subprocess.

Each test names the input the first review did not try; the refusals that already held are kept as one
parametrized test so that they stay refused.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import jwt
import numpy as np
import pytest

from gateway.auth import pki
from tests.e2e.cli_world import Folder, sealgate, user_folder

VERSION_10_30 = str(10**30)


def refused(result: subprocess.CompletedProcess[str], *needles: str, code: int = 1) -> str:
    """Assert the documented refusal: exit `code`, one `error:` line on stderr, nothing on stdout; return it."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == "", result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "a bug" not in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Folder:
    """Keys as `sealgate init` writes them (0600), a model file, and that model sealed as mlp v1."""
    return user_folder(tmp_path_factory.mktemp("operator"), 4, (4,), 1)


@pytest.fixture(scope="module")
def closed_port() -> int:
    """A loopback port nothing listens on: a command that connects would say UNAVAILABLE."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _seal(f: Folder, out: Path, *extra: str | Path, name: str = "mlp", key: Path | None = None) -> list[str | Path]:
    return [
        "seal", f.model, "--name", name, "--version", "1", "--key", key or f.certs / "signing.key",
        "--recipient", f.certs / "gateway.pub", "--out", out, *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "name",
    ["a/b", "..", "x" * 200, "ml\u202ep", "\x1b[31mred", "-", ".hidden"],
    ids=["slash", "dotdot", "200 chars", "bidi", "ansi", "dash", "leading dot"],
)
def test_seal_refuses_a_name_the_gateway_would_never_store(folder: Folder, name: str) -> None:
    """Before: sealed with exit 0, then every push refused. Now: the repository's rule, clipped and escaped."""
    out = folder.root / "named.sealed"
    line = refused(sealgate(folder.root, *_seal(folder, out, name=name)), "invalid model name")
    assert len(line) < 300 and "\x1b" not in line and "\u202e" not in line
    assert not out.exists() and not list(folder.root.glob(".named*"))


@pytest.mark.parametrize("size", ["0", "-5", str(1 << 40)])
def test_seal_refuses_a_chunk_size_out_of_range_in_plain_words(folder: Folder, size: str) -> None:
    """Before: "unexpected ValueError ... (a bug)". Now: the option and its range."""
    out = folder.root / "chunk.sealed"
    refused(sealgate(folder.root, *_seal(folder, out, "--chunk-size", size)), "--chunk-size", "4096")
    assert not out.exists()


def test_a_private_key_every_user_can_read_is_refused_and_not_echoed(folder: Folder, tmp_path: Path) -> None:
    """Before: a 0644 signing or recipient key was used silently. Now refused (0440, a group mount, still works)."""
    signing = tmp_path / "signing.key"
    signing.write_bytes((folder.certs / "signing.key").read_bytes())
    identity = tmp_path / "gateway.key"
    identity.write_bytes((folder.certs / "gateway.key").read_bytes())
    secret_lines = {line for p in (signing, identity) for line in p.read_text().splitlines() if "-----" not in line}
    for path in (signing, identity):
        path.chmod(0o644)
    out = tmp_path / "loose.sealed"
    line = refused(sealgate(tmp_path, *_seal(folder, out, key=signing)), "every user", "0644", "chmod 600")
    assert not out.exists()
    unsealed = tmp_path / "unsealed"
    args: list[str | Path] = ["--trust", folder.certs / "signing.pub", "--out", unsealed]
    line2 = refused(sealgate(tmp_path, "unseal", folder.sealed, "--identity", identity, *args), "every user")
    assert not unsealed.exists()
    assert not any(secret in line + line2 for secret in secret_lines), "no key material in the message"
    identity.chmod(0o440)
    assert sealgate(tmp_path, "unseal", folder.sealed, "--identity", identity, *args).returncode == 0


@pytest.mark.parametrize("verb", ["fetch", "rollback"])
def test_a_version_protobuf_cannot_hold_is_refused_before_connecting(
    folder: Folder, closed_port: int, verb: str
) -> None:
    """Before: "unexpected ValueError: Value out of range (a bug)". Now: the version rule, and no connection."""
    extra: list[str | Path] = ["--out", folder.root / "v.sealed"] if verb == "fetch" else []
    result = sealgate(
        folder.root, verb, "mlp", "--version", VERSION_10_30, *extra, "--address", f"127.0.0.1:{closed_port}",
        "--dir", folder.certs, "--token", "t",
    )  # fmt: skip
    line = refused(result, "invalid model version", "18 digits")
    assert "UNAVAILABLE" not in line


def test_fetch_into_an_existing_file_is_refused_unless_forced(folder: Folder, closed_port: int) -> None:
    """Before: fetch replaced any existing --out file (your only copy of another artifact). Now: --force."""
    keep = folder.root / "keep.sealed"
    keep.write_bytes(b"the operator's own file")
    common: list[str | Path] = ["--address", f"127.0.0.1:{closed_port}", "--dir", folder.certs, "--token", "t"]
    refused(sealgate(folder.root, "fetch", "mlp", "--out", keep, *common), "exists", "--force")
    assert keep.read_bytes() == b"the operator's own file"
    forced = sealgate(folder.root, "fetch", "mlp", "--out", keep, "--force", *common)
    refused(forced, "UNAVAILABLE")  # it went on to connect (nothing listens): --force lets it through
    assert keep.read_bytes() == b"the operator's own file", "a failed fetch leaves the file as it was"


@pytest.mark.parametrize("which", ["ca-certificate", "mismatched-key"])
def test_a_wrong_client_certificate_is_one_line_without_grpc_logs(
    folder: Folder, closed_port: int, tmp_path: Path, which: str
) -> None:
    """Before: gRPC's C++ core printed "Invalid cert chain file" lines, then UNAVAILABLE. Now: what is wrong."""
    if which == "ca-certificate":
        cert, needle = folder.certs / "ca.pem", "is a CA certificate"
    else:
        other = pki.write_dev_pki(tmp_path / "other")  # a client key of another PKI beside our client.pem
        cert, needle = tmp_path / "client.pem", "is not the key of"
        cert.write_bytes((folder.certs / "client.pem").read_bytes())
        key = next(p for p in other if p.name == "client.key")
        (tmp_path / "client.key").write_bytes(key.read_bytes())
    common: list[str | Path] = ["--address", f"127.0.0.1:{closed_port}", "--dir", folder.certs, "--cert", cert]
    refused(sealgate(folder.root, "push", folder.sealed, *common, "--token", "t"), needle)
    refused(sealgate(folder.root, "health", *common), needle)


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        (b"\xff\xfe[server]\n", "not UTF-8"),
        (b"[server]\nmax_message_bytes = 1e999\n", "finite number"),
        (b"[server]\ndrain_seconds = nan\n", "finite number"),
        (b"[server]\nmax_message_bytes = 99999999999999999999999\n", "finite number"),
        (b"[server]\nmax_message_bytes = 4294967296\n", "2**31"),
        (b"[server]\nmax_message_bytes = 2048.5\n", "must be an integer"),
        (b'[server]\ngrpc_address = "127.0.0.1:99999"\n', "0 to 65535"),
        (b'[server]\nrest_address = "127.0.0.1:8x"\n', "0 to 65535"),
        (b'[repository]\npath = "afile"\n', "is not a folder"),
    ],
    ids=["not utf-8", "inf", "nan", "10**23", "4 GiB message", "fraction", "port 99999", "port 8x", "repo is a file"],
)
def test_serve_refuses_a_config_value_that_used_to_crash_or_mislead(
    folder: Folder, tmp_path: Path, toml: bytes, needle: str
) -> None:
    """Before: UnicodeDecodeError/OverflowError/ValueError "(a bug)", 1.5 read as 1, or gRPC on port 34463."""
    shutil.copytree(folder.certs, tmp_path / "certs")  # so that only the value under test is wrong
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "bad.toml").write_bytes(toml)
    refused(sealgate(tmp_path, "serve", "--config", "bad.toml"), needle)
    assert (tmp_path / "afile").read_text() == "not a folder"


@pytest.mark.parametrize(
    ("ledger", "needle"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "not valid repository state"),
        (
            b'{"format": "sealgate-repository-state/1", "models": {"mlp": {"highest_seen": 9, "highest_seen": 1,'
            b' "pinned": null, "rollbacks": []}}}',
            "duplicate key 'highest_seen'",
        ),
    ],
    ids=["nested 100000 deep", "duplicate floor"],
)
def test_serve_refuses_a_ledger_it_cannot_trust(folder: Folder, tmp_path: Path, ledger: bytes, needle: str) -> None:
    """Before: RecursionError "(a bug)", or the last duplicate silently lowered the anti-rollback floor to 1."""
    models = tmp_path / "models"
    (models / "mlp").mkdir(parents=True)
    (models / "mlp" / "1.sealed").write_bytes(folder.sealed.read_bytes())
    (models / ".sealgate-state.json").write_bytes(ledger)
    shutil.copytree(folder.certs, tmp_path / "certs")  # the default [tls] and key paths: ./certs
    (tmp_path / "sealgate.toml").write_text(
        '[server]\ngrpc_address = "127.0.0.1:0"\nrest_address = "127.0.0.1:0"\nmetrics_address = ""\n'
        '[repository]\npath = "models"\n'
    )
    line = refused(sealgate(tmp_path, "serve", "--config", "sealgate.toml"), needle, "refusing to guess")
    assert len(line) < 700
    assert (models / ".sealgate-state.json").read_bytes() == ledger, "the file is left for the operator"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["inspect", "{root}/mlp-1.sealed.cut"], "truncated"),
        (["inspect", "{certs}"], "Is a directory"),
        (["inspect", "{certs}/gateway.key"], "bad magic"),
        (["unseal", "{root}/mlp-1.sealed", "--identity", "{certs}/gateway.pub", "--trust", "{certs}/signing.pub",
          "--out", "{root}/u"], "not a readable private key"),
        (["unseal", "{root}/mlp-1.sealed", "--identity", "{certs}/signing.key", "--trust", "{certs}/signing.pub",
          "--out", "{root}/u"], "X25519"),
        (["unseal", "{root}/mlp-1.sealed", "--identity", "{certs}/gateway.key", "--trust", "{certs}/ca.pem",
          "--out", "{root}/u"], "not a readable public key"),
        (["unseal", "{root}/mlp-1.sealed", "--identity", "{certs}/gateway.key", "--trust", "{certs}/signing.pub",
          "--out", "{root}/model.onnx"], "File exists"),
        (["seal", "{root}/model.onnx", "--name", "mlp", "--version", "1", "--key", "{certs}/client.pem",
          "--recipient", "{certs}/gateway.pub", "--out", "{root}/x.sealed"], "not a readable private key"),
        (["seal", "{root}/model.onnx", "--name", "mlp", "--version", "1", "--key", "{certs}/signing.key",
          "--recipient", "{certs}/gateway.key", "--out", "{root}/x.sealed"], "not a readable public key"),
        (["seal", "{root}/model.onnx", "--name", "mlp", "--version", VERSION_10_30, "--key", "{certs}/signing.key",
          "--recipient", "{certs}/gateway.pub", "--out", "{root}/x.sealed"], "18 digits"),
        (["push", "{root}/mlp-1.sealed", "--address", "127.0.0.1:{port}", "--dir", "{certs}"], "no token"),
        (["push", "{root}/mlp-1.sealed", "--address", "127.0.0.1:{port}", "--dir", "{certs}", "--token", "t"],
         "UNAVAILABLE"),
    ],
    ids=["truncated artifact", "folder as artifact", "key as artifact", "public as identity", "ECDSA as identity",
         "certificate as signer", "unseal over a file", "certificate as key", "private as recipient",
         "version 10**30", "push without token", "push to a closed port"],
)  # fmt: skip
def test_inputs_the_first_review_missed_were_already_refused(
    folder: Folder, closed_port: int, args: list[str], needle: str
) -> None:
    """Kept so they stay refused: one line, exit 1, nothing written."""
    cut = folder.root / "mlp-1.sealed.cut"
    cut.write_bytes(folder.sealed.read_bytes()[:100])
    fill = {"root": folder.root, "certs": folder.certs, "port": closed_port}
    before = sorted(p.name for p in folder.root.iterdir())
    refused(sealgate(folder.root, *(a.format(**fill) for a in args)), needle)
    assert sorted(p.name for p in folder.root.iterdir()) == before


def test_release_refuses_a_bad_name_before_running_gates_or_writing(folder: Folder, closed_port: int) -> None:
    """Before: the gates ran, then `../x-1.sealed` was sealed OUTSIDE the folder, then the push failed."""
    work = folder.root / "work"
    work.mkdir()
    np.savez(work / "data.npz", x=np.ones((8, 4), np.float32), y=np.zeros(8, np.int64))
    result = sealgate(
        work, "release", folder.model, "--name", "../escaped", "--version", "1", "--data", "data.npz",
        "--key", folder.certs / "signing.key", "--recipient", folder.certs / "gateway.pub",
        "--token", "t", "--address", f"127.0.0.1:{closed_port}", "--dir", folder.certs,
    )  # fmt: skip
    refused(result, "invalid model name")
    assert not (folder.root / "escaped-1.sealed").exists() and sorted(p.name for p in work.iterdir()) == ["data.npz"]


def test_revoking_the_ca_itself_is_refused(folder: Folder, tmp_path: Path) -> None:
    """Before: `sealgate revoke certs/ca.pem` wrote a CRL revoking the root, exit 0 (every client locked out)."""
    certs = tmp_path / "certs"
    shutil.copytree(folder.certs, certs)
    refused(sealgate(tmp_path, "revoke", certs / "ca.pem", "--dir", certs), "is the CA itself")
    assert not (certs / "crl.pem").exists()
    revoked = sealgate(tmp_path, "revoke", certs / "client.pem", "--dir", certs)
    assert revoked.returncode == 0 and (certs / "crl.pem").exists(), revoked.stderr  # a client still can be


@pytest.mark.parametrize("wait", ["1e999", "nan"])
def test_models_refuses_a_wait_that_never_ends(folder: Folder, closed_port: int, wait: str) -> None:
    """Before: `--wait 1e999` retried an unreachable gateway for ever."""
    result = sealgate(
        folder.root, "models", "--wait", wait, "--address", f"127.0.0.1:{closed_port}", "--dir", folder.certs,
        "--token", "t",
    )  # fmt: skip
    refused(result, "--wait")


@pytest.mark.parametrize("key", ["server.key", "jwt-issuer.key", "client.key", "ca.key"])
def test_every_private_key_every_user_can_read_is_refused(
    folder: Folder, tmp_path: Path, closed_port: int, key: str
) -> None:
    """Before: only signing and recipient keys were checked; a 0644 TLS key, token issuer key or CA key was used
    silently. Now each verb that reads one refuses it by name, before it listens, mints, connects or issues."""
    certs = tmp_path / "certs"
    shutil.copytree(folder.certs, certs)
    secret = {line for line in (certs / key).read_text().splitlines() if "-----" not in line}
    (certs / key).chmod(0o644)
    port = "127.0.0.1:0"
    (tmp_path / "s.toml").write_text(f'[server]\ngrpc_address = "{port}"\nrest_address = "{port}"\n')
    verbs: dict[str, list[str | Path]] = {
        "server.key": ["serve", "--config", "s.toml"],
        "jwt-issuer.key": ["token", "--sub", "ops", "--scope", "infer:mlp", "--dir", certs],
        "client.key": ["health", "--address", f"127.0.0.1:{closed_port}", "--dir", certs],
        "ca.key": ["init", "--client", "second", "--dir", certs],
    }
    result = sealgate(tmp_path, *verbs[key])
    if key == "server.key":  # serve logs its start-up before it reads the TLS files: the refusal ends it
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        result = subprocess.CompletedProcess(result.args, 1, "", result.stderr.splitlines()[-1] + "\n")
    line = refused(result, key, "every user", "0644", "chmod 600")
    assert not any(part in line for part in secret), "no key material in the message"
    assert not (certs / "client-second.pem").exists(), "nothing issued with a loose CA key"
    (certs / key).chmod(0o440)  # a group mount (Kubernetes secret) is still fine
    if key != "server.key":  # (serving would not return; the other verbs end)
        done = sealgate(tmp_path, *verbs[key])
        assert "every user" not in done.stderr, done.stderr


@pytest.mark.parametrize("problem", ["expired token", "no JWT", "loose signing key", "missing reference"])
def test_release_refuses_what_would_fail_the_push_before_running_its_gates(
    folder: Folder, closed_port: int, tmp_path: Path, problem: str
) -> None:
    """Before: the gates ran (minutes on a real model), then the token, the signing key or the reference rows
    failed the push. Now checked first: no gate table on stdout, nothing sealed."""
    np.savez(tmp_path / "data.npz", x=np.ones((8, 4), np.float32), y=np.zeros(8, np.int64))
    key = tmp_path / "signing.key"
    key.write_bytes((folder.certs / "signing.key").read_bytes())
    key.chmod(0o644 if problem == "loose signing key" else 0o600)
    token = {
        "expired token": jwt.encode({"sub": "ops", "exp": int(time.time()) - 60}, "k" * 32, algorithm="HS256"),
        "no JWT": "not-a-jwt",
    }.get(problem, jwt.encode({"sub": "ops", "exp": int(time.time()) + 600}, "k" * 32, algorithm="HS256"))
    extra = ["--reference", "gone.npz"] if problem == "missing reference" else []
    result = sealgate(
        tmp_path, "release", folder.model, "--name", "mlp", "--version", "2", "--data", "data.npz",
        "--key", key, "--recipient", folder.certs / "gateway.pub", *extra,
        "--token", token, "--address", f"127.0.0.1:{closed_port}", "--dir", folder.certs,
    )  # fmt: skip
    needle = {"expired token": "expired", "no JWT": "not a JWT", "loose signing key": "every user"}
    refused(result, needle.get(problem, "gone.npz"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", "signing.key"], "nothing sealed"
