"""`sealgate seal`, `inspect` and `unseal` as a user runs them: real subprocesses, dev keys on disk.

Success paths print what was done; every refusal exits non-zero with one line on stderr that starts
with "error:" and never a traceback.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.artifact.keys import KEM_HYBRID, generate_identity_files, load_identity, load_recipient, load_trusted
from gateway.artifact.sealed import SIGNATURE
from gateway.artifact.signing import key_id
from gateway.auth import pki
from tests.e2e.cli_world import sealgate as run_cli
from tests.models import make_onnx_mlp, read_tree


@dataclass(frozen=True)
class Setup:
    """Keys as `sealgate init` writes them, an outsider's signing key, a model folder, and one sealed artifact."""

    root: Path
    keys: Path
    outsider: Path
    model: Path
    sealed: Path


def sealgate(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed `sealgate` console script (in `cwd`, else here): the CLI suites' one runner."""
    return run_cli(cwd or Path.cwd(), *args)


def assert_refused(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Non-zero exit, stderr opening with "error:", no traceback; returns stderr as one joined line."""
    assert result.returncode != 0, result.stdout
    assert result.stderr.startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    message = " ".join(result.stderr.split())
    for needle in needles:
        assert needle in message, message
    return message


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    """Write the keys and the model; seal it once with the CLI for the gateway and an edge recipient."""
    root = tmp_path_factory.mktemp("cli")
    keys = root / "certs"
    pki.write_signing_keys(keys)
    pki.write_recipient_keys(keys)
    pki.write_recipient_keys(keys, stem="edge")
    pki.write_recipient_keys(keys, stem="stranger")
    outsider = root / "outsider"
    pki.write_signing_keys(outsider)
    model = root / "model"
    model.mkdir()
    (model / "model.onnx").write_bytes(make_onnx_mlp(in_dim=8, hidden=(16,), out_dim=2)["model.onnx"])
    (root / "prov.json").write_text(json.dumps({"metrics": {"accuracy": 0.93}, "parent_version": 2}))
    sealed = root / "demo.sealed"
    result = sealgate(
        "seal", model, "--name", "demo", "--version", "3", "--key", keys / "signing.key",
        "--recipient", keys / "gateway.pub", "--recipient", keys / "edge.pub",
        "--provenance", root / "prov.json", "--out", sealed,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "sealed" in result.stdout and "demo v3" in result.stdout and "2 recipient(s)" in result.stdout
    return Setup(root, keys, outsider, model, sealed)


def test_seal_writes_a_readable_artifact(setup: Setup) -> None:
    assert setup.sealed.is_file() and setup.sealed.stat().st_size > 1000
    assert setup.sealed.read_bytes().startswith(b"SGSEALED")
    assert not list(setup.sealed.parent.glob(".demo.sealed.*.tmp"))  # atomic write left nothing behind


def test_inspect_needs_no_key_and_prints_the_header(setup: Setup, tmp_path: Path) -> None:
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    result = sealgate("inspect", setup.sealed, cwd=empty)  # no certs/ folder, no key argument
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["name"], doc["version"], doc["framework"]) == ("demo", 3, "onnx")
    assert doc["format"] == "sealgate-sealed/1" and doc["aead"] == "AES-256-GCM" and doc["chunks"] == 1
    expected = [load_recipient(setup.keys / f"{stem}.pub").key_id for stem in ("gateway", "edge")]
    assert [r["key_id"] for r in doc["recipients"]] == expected
    assert all(r["kem"] == "X25519" and r["wrapped_bytes"] == 80 for r in doc["recipients"])
    assert doc["signer"]["key_id"] == key_id(load_trusted(setup.keys / "signing.pub"))
    assert "wrapped" not in result.stdout.replace("wrapped_bytes", "")  # sizes only, no key material


@pytest.mark.parametrize("stem", ["gateway", "edge"])
def test_each_recipient_unseals_the_model(setup: Setup, tmp_path: Path, stem: str) -> None:
    out = tmp_path / "out"
    result = sealgate(
        "unseal", setup.sealed, "--identity", setup.keys / f"{stem}.key", "--trust", setup.keys / "signing.pub",
        "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "verified demo v3" in result.stdout and "wrote 3 files" in result.stdout
    files = read_tree(out)
    assert files["model.onnx"] == (setup.model / "model.onnx").read_bytes()
    assert set(files) == {"model.onnx", "provenance.json", SIGNATURE}
    provenance = json.loads(files["provenance.json"])
    assert provenance["name"] == "demo" and provenance["version"] == 3
    assert provenance["metrics"] == {"accuracy": 0.93} and provenance["parent_version"] == 2
    verified = sealgate("verify", out, "--pub", setup.keys / "signing.pub")
    assert verified.returncode == 0, verified.stderr


def test_unseal_with_several_identities_and_trusted_keys(setup: Setup, tmp_path: Path) -> None:
    result = sealgate(
        "unseal", setup.sealed, "--identity", setup.keys / "stranger.key", "--identity", setup.keys / "edge.key",
        "--trust", setup.outsider / "signing.pub", "--trust", setup.keys / "signing.pub", "--out", tmp_path / "o",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o" / "model.onnx").is_file()


def test_hybrid_recipient_through_the_cli(setup: Setup, tmp_path: Path) -> None:
    generate_identity_files(tmp_path / "pq.key", tmp_path / "pq.pub", KEM_HYBRID)
    sealed = tmp_path / "pq.sealed"
    result = sealgate(
        "seal", setup.model, "--name", "demo", "--version", "4", "--key", setup.keys / "signing.key",
        "--recipient", tmp_path / "pq.pub", "--out", sealed,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(sealgate("inspect", sealed).stdout)
    assert doc["recipients"] == [
        {"kem": KEM_HYBRID, "key_id": load_identity(tmp_path / "pq.key").public.key_id, "wrapped_bytes": 1168}
    ]
    result = sealgate(
        "unseal", sealed, "--identity", tmp_path / "pq.key", "--trust", setup.keys / "signing.pub",
        "--out", tmp_path / "o",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


# --- refusals: exit non-zero, one "error:" line, no traceback, nothing written ----------------------
def test_non_recipient_is_refused(setup: Setup, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = sealgate(
        "unseal", setup.sealed, "--identity", setup.keys / "stranger.key", "--trust", setup.keys / "signing.pub",
        "--out", out,
    )  # fmt: skip
    assert_refused(result, "not a recipient", load_identity(setup.keys / "stranger.key").public.key_id)
    assert not out.exists()


def test_untrusted_signer_is_refused(setup: Setup, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = sealgate(
        "unseal", setup.sealed, "--identity", setup.keys / "gateway.key", "--trust", setup.outsider / "signing.pub",
        "--out", out,
    )  # fmt: skip
    assert_refused(result, "not in the trust store")
    assert not out.exists()


def test_tampered_file_is_refused(setup: Setup, tmp_path: Path) -> None:
    data = bytearray(setup.sealed.read_bytes())
    data[-100] ^= 0x01
    bad = tmp_path / "bad.sealed"
    bad.write_bytes(bytes(data))
    result = sealgate(
        "unseal", bad, "--identity", setup.keys / "gateway.key", "--trust", setup.keys / "signing.pub",
        "--out", tmp_path / "out",
    )  # fmt: skip
    assert_refused(result, "signature does not match")
    assert not (tmp_path / "out").exists()


def test_inspect_refuses_what_is_not_an_artifact(setup: Setup, tmp_path: Path) -> None:
    junk = tmp_path / "junk.sealed"
    junk.write_bytes(b"PK\x03\x04 not a sealed model")
    assert_refused(sealgate("inspect", junk), "bad magic")
    truncated = tmp_path / "truncated.sealed"
    truncated.write_bytes(setup.sealed.read_bytes()[:40])
    assert_refused(sealgate("inspect", truncated), "truncated")


def test_seal_refuses_a_folder_with_a_link(setup: Setup, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.onnx").write_bytes((setup.model / "model.onnx").read_bytes())
    (model / "weights.bin").symlink_to(setup.keys / "signing.key")
    out = tmp_path / "x.sealed"
    result = sealgate(
        "seal", model, "--name", "demo", "--version", "1", "--key", setup.keys / "signing.key",
        "--recipient", setup.keys / "gateway.pub", "--out", out,
    )  # fmt: skip
    assert_refused(result, "refusing to seal", "weights.bin")
    assert not out.exists()


def test_seal_refuses_wrong_key_types(setup: Setup, tmp_path: Path) -> None:
    args = ["seal", setup.model, "--name", "demo", "--version", "1", "--out", tmp_path / "x.sealed"]
    swapped = sealgate(*args, "--key", setup.keys / "gateway.key", "--recipient", setup.keys / "gateway.pub")
    assert_refused(swapped, "ECDSA P-256")
    not_a_recipient = sealgate(*args, "--key", setup.keys / "signing.key", "--recipient", setup.keys / "signing.pub")
    assert_refused(not_a_recipient, "X25519 or hybrid")
    version = sealgate(
        "seal", setup.model, "--name", "demo", "--version", "0", "--key", setup.keys / "signing.key",
        "--recipient", setup.keys / "gateway.pub", "--out", tmp_path / "x.sealed",
    )  # fmt: skip
    assert_refused(version, "positive integer")
    assert not (tmp_path / "x.sealed").exists()


def test_unseal_refuses_a_missing_key_file(setup: Setup, tmp_path: Path) -> None:
    result = sealgate(
        "unseal", setup.sealed, "--identity", tmp_path / "absent.key", "--trust", setup.keys / "signing.pub",
        "--out", tmp_path / "out",
    )  # fmt: skip
    assert_refused(result, "cannot read key file")


def test_unseal_refuses_a_damaged_hybrid_key(setup: Setup, tmp_path: Path) -> None:
    generate_identity_files(tmp_path / "pq.key", tmp_path / "pq.pub", KEM_HYBRID)
    (tmp_path / "cut.key").write_bytes((tmp_path / "pq.key").read_bytes()[:100])
    result = sealgate(
        "unseal", setup.sealed, "--identity", tmp_path / "cut.key", "--trust", setup.keys / "signing.pub",
        "--out", tmp_path / "out",
    )  # fmt: skip
    assert_refused(result, "malformed", "private key")


def test_a_long_error_stays_on_one_line(setup: Setup, tmp_path: Path) -> None:
    result = sealgate(
        "unseal", setup.sealed, "--identity", setup.keys / "stranger.key", "--trust", setup.keys / "signing.pub",
        "--out", tmp_path / "out",
    )  # fmt: skip
    assert len(assert_refused(result, "not a recipient")) > 80
    assert result.stderr.count("\n") == 1, result.stderr


def test_an_error_naming_a_path_with_brackets_is_printed_verbatim(setup: Setup, tmp_path: Path) -> None:
    odd = tmp_path / "keys[/]x"
    odd.mkdir(parents=True)
    result = sealgate(
        "unseal", setup.sealed, "--identity", odd / "absent.key", "--trust", setup.keys / "signing.pub",
        "--out", tmp_path / "out",
    )  # fmt: skip
    assert_refused(result, "cannot read key file", "keys[/]x")
