"""OMS signing (gateway.artifact.signing) against the real `model_signing` CLI and `openssl`-made keys.

Interoperability both ways (CLI-signed models verify here, sealgate-signed ones verify with the CLI),
in-memory verification, and every way a model or signature can be wrong.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import model_signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from model_signing._signing import sign_ec_key, sign_sigstore_pb

from gateway.artifact import signing
from gateway.errors import ConfigError, SignatureError, UntrustedSigner

CLI = Path(sys.executable).with_name("model_signing")
SAVED_MODEL = "saved_model.pb"
INDEX = "variables/variables.index"
DATA = "variables/variables.data-00000-of-00001"


@dataclass(frozen=True)
class Keys:
    """An openssl-made P-256 pair (SEC1 and PKCS#8 forms) and an unrelated second pair."""

    sec1: Path
    pkcs8: Path
    pub: Path
    private: ec.EllipticCurvePrivateKey
    public: ec.EllipticCurvePublicKey
    other_pkcs8: Path
    other_pub: Path
    other_public: ec.EllipticCurvePublicKey


def _openssl(*args: str) -> bytes:
    """Run openssl, return its stdout."""
    return subprocess.run(["openssl", *args], check=True, capture_output=True).stdout


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """Key pairs made once per session (private keys 0600)."""
    d = tmp_path_factory.mktemp("keys")
    old = os.umask(0o077)
    try:
        _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(d / "sec1.pem"))
        _openssl("pkcs8", "-topk8", "-nocrypt", "-in", str(d / "sec1.pem"), "-out", str(d / "pkcs8.pem"))
        _openssl("pkey", "-in", str(d / "sec1.pem"), "-pubout", "-out", str(d / "pub.pem"))
        other = ec.generate_private_key(ec.SECP256R1())
        (d / "other.pem").write_bytes(
            other.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    finally:
        os.umask(old)
    other_pub = other.public_key()
    (d / "other.pub").write_bytes(
        other_pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    private = serialization.load_pem_private_key((d / "pkcs8.pem").read_bytes(), None)
    public = serialization.load_pem_public_key((d / "pub.pem").read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(public, ec.EllipticCurvePublicKey)
    return Keys(
        d / "sec1.pem", d / "pkcs8.pem", d / "pub.pem", private, public, d / "other.pem", d / "other.pub", other_pub
    )


def saved_model_files() -> dict[str, bytes]:
    """A TF SavedModel-like layout, with an empty file and a nested asset."""
    return {
        SAVED_MODEL: os.urandom(3000),
        INDEX: os.urandom(200),
        DATA: os.urandom(300_000),
        "assets/vocab.txt": b"a\nb\nc\n",
        "fingerprint.pb": b"",
    }


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Write files under root; returns root."""
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def read_tree(root: Path) -> dict[str, bytes]:
    """All files under root, by POSIX relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run the model_signing CLI."""
    return subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True, timeout=60)


def cli_verify(model: Path, pub: Path, sig: Path) -> subprocess.CompletedProcess[str]:
    """`model_signing verify key`."""
    return cli("verify", "key", model, "--public_key", pub, "--signature", sig)


def statement(bundle: bytes) -> dict:
    """The in-toto statement inside an OMS bundle."""
    return json.loads(base64.b64decode(json.loads(bundle)["dsseEnvelope"]["payload"]))


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A fresh SavedModel-like directory named `model`."""
    return write_tree(tmp_path / "model", saved_model_files())


# --- interoperability with the CLI ----------------------------------------------------------------
def test_sign_directory_verifies_with_cli(model_dir: Path, keys: Keys) -> None:
    sig = signing.sign_directory(model_dir, keys.pkcs8)
    assert sig == model_dir / signing.SIGNATURE_NAME
    result = cli_verify(model_dir, keys.pub, sig)
    assert result.returncode == 0, result.stderr
    assert "Verification succeeded" in result.stdout
    signing.verify_directory(model_dir, keys.pub)
    names = [r["name"] for r in statement(sig.read_bytes())["predicate"]["resources"]]
    assert names == sorted(saved_model_files())


def test_cli_signature_verifies_on_disk_and_in_memory(model_dir: Path, keys: Keys) -> None:
    result = cli("sign", "key", model_dir, "--private_key", keys.sec1, "--signature", model_dir / "model.sig")
    assert result.returncode == 0, result.stderr
    signing.verify_directory(model_dir, keys.pub)
    files = read_tree(model_dir)  # model.sig included: ignored, as the CLI ignores it
    assert "model.sig" in files
    found = signing.verify_files(files, files["model.sig"], [keys.other_public, keys.public])
    assert found.public_numbers() == keys.public.public_numbers()


def test_sign_files_is_the_cli_bundle(tmp_path: Path, keys: Keys) -> None:
    files = saved_model_files()
    ours = write_tree(tmp_path / "ours" / signing.MEMORY_MODEL_NAME, files)
    (ours / "model.sig").write_bytes(signing.sign_files(files, keys.private))
    result = cli_verify(ours, keys.pub, ours / "model.sig")
    assert result.returncode == 0, result.stderr

    theirs = write_tree(tmp_path / "theirs" / signing.MEMORY_MODEL_NAME, files)
    result = cli("sign", "key", theirs, "--private_key", keys.sec1, "--signature", theirs / "model.sig")
    assert result.returncode == 0, result.stderr
    a, b = json.loads((ours / "model.sig").read_bytes()), json.loads((theirs / "model.sig").read_bytes())
    assert a["mediaType"] == b["mediaType"] and a["verificationMaterial"] == b["verificationMaterial"]
    assert a["dsseEnvelope"]["payloadType"] == b["dsseEnvelope"]["payloadType"]
    sa, sb = statement((ours / "model.sig").read_bytes()), statement((theirs / "model.sig").read_bytes())
    for s in (sa, sb):  # the CLI writes ignore_paths in set order
        s["predicate"]["serialization"]["ignore_paths"].sort()
    assert sa == sb


def test_sign_digests_equals_sign_files_statement(keys: Keys) -> None:
    files = saved_model_files()
    digests = {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}
    assert statement(signing.sign_digests(digests, keys.private)) == statement(signing.sign_files(files, keys.private))
    with pytest.raises(SignatureError, match="not a SHA-256"):
        signing.sign_digests({"a": "abcd"}, keys.private)


def test_signature_outside_the_directory(model_dir: Path, keys: Keys, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere.sig"
    assert signing.sign_directory(model_dir, keys.pkcs8, out) == out
    assert not (model_dir / "model.sig").exists()
    assert cli_verify(model_dir, keys.pub, out).returncode == 0
    signing.verify_directory(model_dir, keys.pub, out)
    with pytest.raises(SignatureError, match="cannot read"):
        signing.verify_directory(model_dir, keys.pub)


# --- what must fail -------------------------------------------------------------------------------
MUTATIONS = {
    "tampered": (lambda f: f.update({INDEX: f[INDEX][:-1] + bytes([f[INDEX][-1] ^ 1])}), "changed: " + INDEX),
    "extra": (lambda f: f.update({"variables/evil.so": b"x"}), "extra .*variables/evil.so"),
    "missing": (lambda f: f.pop(DATA), "missing: " + DATA),
    "emptied": (lambda f: f.update({SAVED_MODEL: b""}), "changed: " + SAVED_MODEL),
}


@pytest.mark.parametrize("kind", sorted(MUTATIONS))
def test_changed_model_is_refused_like_the_cli(kind: str, tmp_path: Path, keys: Keys) -> None:
    files = saved_model_files()
    sig = signing.sign_files(files, keys.private)
    mutate, message = MUTATIONS[kind]
    mutate(files)
    with pytest.raises(SignatureError, match=message):
        signing.verify_files(files, sig, [keys.public])
    d = write_tree(tmp_path / "m", files)
    (d / "model.sig").write_bytes(sig)
    with pytest.raises(SignatureError, match=message):
        signing.verify_directory(d, keys.pub)
    assert cli_verify(d, keys.pub, d / "model.sig").returncode == 1


def test_wrong_key_is_untrusted(model_dir: Path, keys: Keys) -> None:
    sig = signing.sign_directory(model_dir, keys.pkcs8).read_bytes()
    files = saved_model_files() | {"x": b""}  # even with wrong files, the signer is checked first
    with pytest.raises(UntrustedSigner):
        signing.verify_files(files, sig, [keys.other_public])
    with pytest.raises(UntrustedSigner):
        signing.verify_files(files, sig, [])
    with pytest.raises(UntrustedSigner):
        signing.verify_directory(model_dir, keys.other_pub)
    assert cli_verify(model_dir, keys.other_pub, model_dir / "model.sig").returncode == 1


def test_forged_or_malformed_signature(keys: Keys) -> None:
    files = saved_model_files()
    sig = signing.sign_files(files, keys.private)
    doc = json.loads(sig)
    st = statement(sig)
    st["predicate"]["resources"][0]["digest"] = hashlib.sha256(b"evil").hexdigest()
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(st).encode()).decode()
    with pytest.raises(UntrustedSigner):  # payload changed under the same DSSE signature
        signing.verify_files(files, json.dumps(doc).encode(), [keys.public])
    for bad in (b"", b"not json", b"{}", b'{"mediaType": "x", "verificationMaterial": {}}'):
        with pytest.raises(SignatureError):
            signing.verify_files(files, bad, [keys.public])
    doc = json.loads(sig)
    doc["dsseEnvelope"]["signatures"] = []
    with pytest.raises(SignatureError, match="no DSSE"):
        signing.verify_files(files, json.dumps(doc).encode(), [keys.public])


def test_signed_statement_of_another_kind_is_refused(keys: Keys) -> None:
    """A validly signed bundle whose statement is not an OMS v1.0 manifest is a SignatureError."""
    files = {"m.onnx": b"abc"}
    sig = json.loads(signing.sign_files(files, keys.private))
    st = statement(json.dumps(sig).encode())
    st["predicateType"] = "https://model_signing/Digests/v0.1"
    payload = json.dumps(st).encode()
    der = keys.private.sign(sign_sigstore_pb.pae(payload), ec.ECDSA(sign_ec_key.get_ec_key_hash(keys.public)))
    sig["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    sig["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(der).decode()
    with pytest.raises(SignatureError, match="predicate type"):
        signing.verify_files(files, json.dumps(sig).encode(), [keys.public])


# --- layouts, names, ignores ----------------------------------------------------------------------
def test_git_files_and_signature_are_ignored_like_the_cli(model_dir: Path, keys: Keys) -> None:
    extra = {".gitignore": b"*.tmp\n", ".git/HEAD": b"ref: main\n", "model.sig": b"old"}
    sig = signing.sign_files(saved_model_files() | extra, keys.private)
    assert ".gitignore" not in {r["name"] for r in statement(sig)["predicate"]["resources"]}
    write_tree(model_dir, extra)
    (model_dir / "model.sig").write_bytes(signing.sign_files(read_tree(model_dir), keys.private))
    assert cli_verify(model_dir, keys.pub, model_dir / "model.sig").returncode == 0
    signing.verify_files(read_tree(model_dir), (model_dir / "model.sig").read_bytes(), [keys.public])


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a//b", "./a", "a/./b", "a/../b", ""])
def test_unnormalized_names_are_refused(name: str, keys: Keys) -> None:
    sig = signing.sign_files({"a": b"1"}, keys.private)
    with pytest.raises(SignatureError, match="invalid model file name"):
        signing.verify_files({"a": b"1", name: b"2"}, sig, [keys.public])
    with pytest.raises(SignatureError, match="invalid model file name"):
        signing.sign_files({name: b"2"}, keys.private)


def test_sharded_signature_from_the_library(model_dir: Path, keys: Keys) -> None:
    shard = 64 * 1024
    hashing = (
        model_signing.hashing.Config().use_shard_serialization(shard_size=shard).set_ignored_paths(paths=["model.sig"])
    )
    model_signing.signing.Config().use_elliptic_key_signer(private_key=keys.pkcs8).set_hashing_config(hashing).sign(
        model_dir, model_dir / "model.sig"
    )
    sig = (model_dir / "model.sig").read_bytes()
    assert statement(sig)["predicate"]["serialization"]["method"] == "shards"
    files = {k: v for k, v in read_tree(model_dir).items() if k != "model.sig"}
    signing.verify_files(files, sig, [keys.public])
    signing.verify_directory(model_dir, keys.pub)
    data = bytearray(files[DATA])
    data[3 * shard + 5] ^= 1  # a byte in the fourth shard
    with pytest.raises(SignatureError, match="changed: " + DATA):
        signing.verify_files(files | {DATA: bytes(data)}, sig, [keys.public])
    with pytest.raises(SignatureError, match="changed: " + DATA):
        signing.verify_files(files | {DATA: files[DATA] + b"x"}, sig, [keys.public])


def test_key_id_is_spki_der_sha256(keys: Keys) -> None:
    der = _openssl("pkey", "-pubin", "-in", str(keys.pub), "-outform", "DER")
    assert signing.key_id(keys.public) == hashlib.sha256(der).hexdigest()[:16]
    assert signing.key_id(keys.private.public_key()) == signing.key_id(keys.public)
    assert signing.key_id(keys.other_public) != signing.key_id(keys.public)


def test_refuses_non_directories_empty_models_and_bad_keys(tmp_path: Path, keys: Keys) -> None:
    (tmp_path / "f.onnx").write_bytes(b"x")
    with pytest.raises(SignatureError, match="not a model directory"):
        signing.sign_directory(tmp_path / "f.onnx", keys.pkcs8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SignatureError, match="no file"):
        signing.sign_directory(tmp_path / "empty", keys.pkcs8)
    with pytest.raises(ConfigError):
        signing.sign_directory(tmp_path, keys.pub)
    with pytest.raises(SignatureError, match="no model file"):
        signing.sign_files({"model.sig": b"x"}, keys.private)


@pytest.mark.slow
def test_verify_files_costs_one_hash_pass(keys: Keys) -> None:
    data = os.urandom(256 << 20)
    sig = signing.sign_files({"model.onnx": data}, keys.private)
    t = time.perf_counter()
    hashlib.sha256(data).digest()
    one_pass = time.perf_counter() - t
    t = time.perf_counter()
    signing.verify_files({"model.onnx": data}, sig, [keys.public])
    took = time.perf_counter() - t
    assert took < 1.5 * one_pass + 0.05, (took, one_pass)
