"""Sealed artifacts end to end: real ONNX and TF SavedModel models sealed, opened by each recipient, refused otherwise.

Covers the acceptance of issue 2 for round trips (one and three X25519 recipients, a hybrid ML-KEM-768 +
X25519 recipient), non-recipients, untrusted signers, a validly signed header that disagrees with the
signed provenance, unsafe source folders, hand-crafted containers, limits, writing a model folder, and
the unsealed folder verifying with the `model_signing` CLI.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.artifact import container, envelope, signing
from gateway.artifact.container import Limits
from gateway.artifact.keys import (
    KEM_HYBRID,
    KEM_X25519,
    Identity,
    RecipientKey,
    generate_identity,
    generate_identity_files,
    load_identity,
    load_recipient,
    load_signer,
    load_trusted,
)
from gateway.artifact.sealed import (
    PROVENANCE,
    SIGNATURE,
    OpenedArtifact,
    TrustStore,
    inspect,
    open_artifact,
    seal,
    seal_to_file,
    write_model_dir,
)
from gateway.auth import pki
from gateway.errors import (
    ArtifactError,
    ConfigError,
    MetadataMismatch,
    NotARecipient,
    SignatureError,
    TamperedArtifact,
    UnsafeArchive,
    UntrustedSigner,
)
from tests.models import make_onnx_mlp, make_tf_savedmodel, mlp_reference, read_tree

MODEL_SIGNING_CLI = Path(sys.executable).with_name("model_signing")
ONNX_ARGS = {"in_dim": 8, "hidden": (16,), "out_dim": 2, "seed": 3}


@dataclass(frozen=True)
class World:
    """Keys on disk (as `sealgate init` writes them) and loaded, plus models on disk."""

    root: Path
    signer: ec.EllipticCurvePrivateKey
    signer_pub: Path
    outsider: ec.EllipticCurvePrivateKey
    x25519: tuple[Identity, ...]
    hybrid: Identity
    stranger: Identity
    onnx_file: Path
    onnx_files: dict[str, bytes]
    tf_dir: Path
    tf_files: dict[str, bytes]

    @property
    def trust(self) -> TrustStore:
        """A trust store holding only the dev signing key."""
        return TrustStore.of([self.signer.public_key()])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Dev keys via gateway.auth.pki, extra identities, a real ONNX file and a real SavedModel (TF imported once)."""
    root = tmp_path_factory.mktemp("artifact")
    keys_dir = root / "keys"
    pki.write_signing_keys(keys_dir)
    pki.write_recipient_keys(keys_dir)
    onnx_files = make_onnx_mlp(**ONNX_ARGS)
    onnx_file = root / "onnx" / "model.onnx"
    onnx_file.parent.mkdir()
    onnx_file.write_bytes(onnx_files["model.onnx"])
    tf_files = make_tf_savedmodel(root / "tf")
    tf_dir = root / "tf" / "mlp-8-3-0"
    assert read_tree(tf_dir) == tf_files and "saved_model.pb" in tf_files and len(tf_files) >= 3
    gateway_identity = load_identity(keys_dir / "gateway.key")
    assert load_recipient(keys_dir / "gateway.pub") == gateway_identity.public
    return World(
        root=root,
        signer=load_signer(keys_dir / "signing.key"),
        signer_pub=keys_dir / "signing.pub",
        outsider=ec.generate_private_key(ec.SECP256R1()),
        x25519=(gateway_identity, generate_identity(), generate_identity()),
        hybrid=generate_identity(KEM_HYBRID),
        stranger=generate_identity(),
        onnx_file=onnx_file,
        onnx_files=onnx_files,
        tf_dir=tf_dir,
        tf_files=tf_files,
    )


def sealed_bytes(
    src: Path | Mapping[str, bytes], recipients: list[RecipientKey], signer: ec.EllipticCurvePrivateKey, **kw: Any
) -> bytes:
    """Seal `src` in memory (name "m", version 1 unless given) and return the artifact's bytes."""
    kw.setdefault("name", "m")
    kw.setdefault("version", 1)
    _, chunks = seal(src, recipients=recipients, signer=signer, **kw)
    return b"".join(chunks)


def model_source(world: World, kind: str) -> tuple[Path, dict[str, bytes]]:
    """The on-disk source and expected model files of `kind` (onnx: a single file; tf: a SavedModel folder)."""
    return (world.onnx_file, world.onnx_files) if kind == "onnx" else (world.tf_dir, world.tf_files)


def envelope_of(
    files: Mapping[str, bytes],
    signer: ec.EllipticCurvePrivateKey,
    recipients: list[RecipientKey],
    name: str = "m",
    version: int = 1,
) -> bytes:
    """A validly signed envelope around an arbitrary container of `files` (nothing checks their content)."""
    entries = container.from_mapping(files)
    return b"".join(
        envelope.seal_stream(
            name=name,
            version=version,
            created="2026-01-01T00:00:00Z",
            framework="onnx",
            plaintext=container.stream(entries),
            plaintext_size=container.container_size(entries),
            recipients=recipients,
            signer=signer,
            chunk_size=envelope.MIN_CHUNK,
        )
    )


def signed_model(
    model: Mapping[str, bytes], signer: ec.EllipticCurvePrivateKey, provenance: dict[str, Any]
) -> dict[str, bytes]:
    """Model files plus provenance.json, OMS-signed by `signer` (what sealed.seal packs)."""
    files = dict(model)
    files[PROVENANCE] = json.dumps(provenance).encode()
    files[SIGNATURE] = signing.sign_files(files, signer)
    return files


# --- round trips ----------------------------------------------------------------------------------
@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("kind", ["onnx", "tf"])
def test_each_recipient_opens_the_exact_files(world: World, kind: str, count: int, tmp_path: Path) -> None:
    src, expected = model_source(world, kind)
    recipients = list(world.x25519[:count])
    out = tmp_path / "model.sealed"
    header = seal_to_file(
        src, out, name=f"{kind}-model", version=7, signer=world.signer, recipients=[r.public for r in recipients]
    )
    assert [r.key_id for r in header.recipients] == [r.public.key_id for r in recipients]
    assert inspect(out) == header
    assert header.framework == ("onnx" if kind == "onnx" else "tensorflow")
    for identity in recipients:
        opened = open_artifact(out, [identity], world.trust)
        assert opened.model_files == expected
        assert set(opened.files) == {*expected, PROVENANCE, SIGNATURE}
        assert (opened.header.name, opened.header.version) == (f"{kind}-model", 7)
        assert opened.provenance["name"] == f"{kind}-model" and opened.provenance["version"] == 7
        assert opened.provenance["framework"] == header.framework
        assert opened.signer_key_id == header.signer_key_id
    with pytest.raises(NotARecipient):
        open_artifact(out, [world.stranger], world.trust)


def test_opened_onnx_runs_like_the_reference(world: World) -> None:
    blob = sealed_bytes(world.onnx_file, [world.x25519[0].public], signer=world.signer)
    opened = open_artifact(blob, [world.x25519[0]], world.trust)
    session = ort.InferenceSession(opened.model_files["model.onnx"], providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((5, ONNX_ARGS["in_dim"])).astype(np.float32)
    (y,) = session.run(None, {"input": x})
    np.testing.assert_allclose(y, mlp_reference(**ONNX_ARGS)(x), rtol=1e-5, atol=1e-5)


def test_hybrid_post_quantum_recipient(world: World) -> None:
    blob = sealed_bytes(world.tf_dir, [world.hybrid.public, world.x25519[1].public], signer=world.signer)
    header = inspect(blob)
    assert [r.kem for r in header.recipients] == [KEM_HYBRID, KEM_X25519]
    assert len(header.recipients[0].wrapped) == 1168 and len(header.recipients[1].wrapped) == 80
    for identity in (world.hybrid, world.x25519[1]):
        assert open_artifact(blob, [identity], world.trust).model_files == world.tf_files
    with pytest.raises(NotARecipient):
        open_artifact(blob, [generate_identity(KEM_HYBRID), world.stranger], world.trust)


def test_hybrid_key_files_round_trip(world: World, tmp_path: Path) -> None:
    public = generate_identity_files(tmp_path / "pq.key", tmp_path / "pq.pub", KEM_HYBRID)
    assert (tmp_path / "pq.key").stat().st_mode & 0o777 == 0o600
    blob = sealed_bytes(world.onnx_file, [load_recipient(tmp_path / "pq.pub")], signer=world.signer)
    assert inspect(blob).recipients[0].key_id == public.key_id
    opened = open_artifact(blob, [load_identity(tmp_path / "pq.key")], world.trust)
    assert opened.model_files == world.onnx_files


def test_damaged_hybrid_key_files_are_config_errors(tmp_path: Path) -> None:
    generate_identity_files(tmp_path / "pq.key", tmp_path / "pq.pub", KEM_HYBRID)
    private, public = (tmp_path / "pq.key").read_bytes(), (tmp_path / "pq.pub").read_bytes()
    damaged = {
        "cut.key": private[: len(private) // 2],
        "cut.pub": public[: len(public) // 2],
        "garbled.pub": public.replace(b"-----\n", b"-----\n*", 1),
        "short.pub": public.replace(public.splitlines()[1], b"AAAA"),
    }
    for name, data in damaged.items():
        (tmp_path / name).write_bytes(data)
        load = load_identity if name.endswith(".key") else load_recipient
        with pytest.raises(ConfigError, match="malformed"):
            load(tmp_path / name)


def test_sources_bytes_stream_and_path_open_alike(world: World, tmp_path: Path) -> None:
    blob = sealed_bytes(world.onnx_file, [world.x25519[0].public], signer=world.signer)
    (tmp_path / "a.sealed").write_bytes(blob)
    opened = [
        open_artifact(blob, [world.x25519[0]], world.trust),
        open_artifact(io.BytesIO(blob), [world.x25519[0]], world.trust),
        open_artifact(tmp_path / "a.sealed", [world.x25519[0]], world.trust),
        open_artifact(str(tmp_path / "a.sealed"), [world.x25519[0]], world.trust),
    ]
    assert all(o.files == opened[0].files for o in opened)
    assert inspect(blob) == inspect(memoryview(blob)) == inspect(io.BytesIO(blob)) == inspect(tmp_path / "a.sealed")


def test_one_of_several_identities_suffices(world: World) -> None:
    blob = sealed_bytes(world.onnx_file, [world.x25519[2].public], signer=world.signer)
    opened = open_artifact(blob, [world.stranger, world.hybrid, world.x25519[2]], world.trust)
    assert opened.model_files == world.onnx_files


def test_large_model_takes_the_threaded_paths(world: World) -> None:
    """Over 8 MiB the ciphertext is hashed in a worker thread and the OMS check overlaps the copies."""
    assert envelope.HASH_THREAD_MIN <= 9 << 20
    big = {"model.onnx": world.onnx_files["model.onnx"], "weights.bin": os.urandom(9 << 20)}
    blob = sealed_bytes(big, [world.x25519[0].public], signer=world.signer)
    assert open_artifact(blob, [world.x25519[0]], world.trust).model_files == big
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x40
    with pytest.raises(TamperedArtifact):
        open_artifact(bytes(flipped), [world.x25519[0]], world.trust)
    with pytest.raises(NotARecipient):
        open_artifact(blob, [world.stranger], world.trust)


# --- who may open, who may sign -------------------------------------------------------------------
def test_non_recipient_gets_not_a_recipient_and_nothing_else(world: World) -> None:
    blob = sealed_bytes(world.onnx_file, [r.public for r in world.x25519], signer=world.signer)
    with pytest.raises(NotARecipient, match="not a recipient"):
        open_artifact(blob, [world.stranger], world.trust)
    with pytest.raises(NotARecipient):
        open_artifact(blob, [], world.trust)


def test_signer_outside_the_trust_store_is_untrusted(world: World) -> None:
    blob = sealed_bytes(world.onnx_file, [world.x25519[0].public], signer=world.outsider)
    with pytest.raises(UntrustedSigner, match="not in the trust store"):
        open_artifact(blob, [world.x25519[0]], world.trust)
    with pytest.raises(UntrustedSigner):
        open_artifact(blob, [world.x25519[0]], TrustStore())
    both = TrustStore.of([world.signer.public_key(), world.outsider.public_key()])
    assert open_artifact(blob, [world.x25519[0]], both).model_files == world.onnx_files


def test_trusted_key_loaded_from_its_pem_file(world: World) -> None:
    blob = sealed_bytes(world.onnx_file, [world.x25519[0].public], signer=world.signer)
    trust = TrustStore.of([load_trusted(world.signer_pub)])
    assert open_artifact(blob, [world.x25519[0]], trust).model_files == world.onnx_files


@pytest.mark.parametrize(("field", "claimed"), [("version", 2), ("name", "other")])
def test_header_disagreeing_with_signed_provenance_is_refused(world: World, field: str, claimed: Any) -> None:
    """A trusted signer's envelope saying v2 (or another name) around a model whose signed provenance says v1."""
    files = signed_model(world.onnx_files, world.signer, {"name": "m", "version": 1})
    header_says = {"name": "m", "version": 1, field: claimed}
    blob = envelope_of(files, world.signer, [world.x25519[0].public], **header_says)
    assert (inspect(blob).name, inspect(blob).version) == (header_says["name"], header_says["version"])
    with pytest.raises(MetadataMismatch, match="signed provenance says m v1"):
        open_artifact(blob, [world.x25519[0]], world.trust)
    honest = envelope_of(files, world.signer, [world.x25519[0].public])
    assert open_artifact(honest, [world.x25519[0]], world.trust).provenance == {"name": "m", "version": 1}


def test_oms_signature_by_another_trusted_key_is_refused(world: World) -> None:
    files = signed_model(world.onnx_files, world.outsider, {"name": "m", "version": 1})
    blob = envelope_of(files, world.signer, [world.x25519[0].public])
    both = TrustStore.of([world.signer.public_key(), world.outsider.public_key()])
    with pytest.raises(UntrustedSigner, match="different keys"):
        open_artifact(blob, [world.x25519[0]], both)
    with pytest.raises(UntrustedSigner):  # the OMS signer is not trusted at all
        open_artifact(blob, [world.x25519[0]], world.trust)


UNCOVERED = {
    "no signature": (lambda f: {n: b for n, b in f.items() if n != SIGNATURE}, SignatureError),
    "extra file": (lambda f: {**f, "evil.so": b"\x7fELF"}, SignatureError),
    "changed model": (lambda f: {**f, "model.onnx": f["model.onnx"] + b"\0"}, SignatureError),
    "garbage signature": (lambda f: {**f, SIGNATURE: b"{}"}, SignatureError),
}


@pytest.mark.parametrize("case", sorted(UNCOVERED))
def test_container_content_that_the_oms_signature_does_not_cover(world: World, case: str) -> None:
    """The envelope is valid (trusted signer); what it carries does not match its OMS signature."""
    mutate, error = UNCOVERED[case]
    files = mutate(signed_model(world.onnx_files, world.signer, {"name": "m", "version": 1}))
    blob = envelope_of(files, world.signer, [world.x25519[0].public])
    with pytest.raises(error):
        open_artifact(blob, [world.x25519[0]], world.trust)


def test_signed_provenance_that_is_not_an_object(world: World) -> None:
    files = dict(world.onnx_files)
    files[PROVENANCE] = b"[1]"
    files[SIGNATURE] = signing.sign_files(files, world.signer)
    blob = envelope_of(files, world.signer, [world.x25519[0].public])
    with pytest.raises(MetadataMismatch, match="not an object"):
        open_artifact(blob, [world.x25519[0]], world.trust)


# --- sources that must not be sealed --------------------------------------------------------------
def _copy_tree(src: Mapping[str, bytes], root: Path) -> Path:
    """Write `src` (path -> bytes) under `root`; returns root."""
    for name, data in src.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.mark.parametrize("kind", ["file link", "folder link", "fifo", "provenance link", "source is a link"])
def test_links_and_fifos_in_the_source_are_refused(world: World, tmp_path: Path, kind: str) -> None:
    folder = _copy_tree(world.tf_files, tmp_path / "model")
    src = folder
    if kind == "file link":
        (folder / "variables" / "extra.bin").symlink_to(world.onnx_file)
    elif kind == "folder link":
        (folder / "linked").symlink_to(world.onnx_file.parent, target_is_directory=True)
    elif kind == "fifo":
        os.mkfifo(folder / "assets.fifo")
    elif kind == "provenance link":
        secret = tmp_path / "secret.json"
        secret.write_text('{"secret": "do not seal me"}')
        (folder / PROVENANCE).symlink_to(secret)
    else:
        src = tmp_path / "link-to-model"
        src.symlink_to(folder, target_is_directory=True)
    with pytest.raises(UnsafeArchive):
        seal(src, name="m", version=1, signer=world.signer, recipients=[world.x25519[0].public])


def test_provenance_in_the_folder_is_sealed_with_name_and_version_forced(world: World, tmp_path: Path) -> None:
    folder = _copy_tree(world.tf_files, tmp_path / "model")
    (folder / PROVENANCE).write_text(json.dumps({"name": "liar", "version": 99, "metrics": {"accuracy": 0.9}}))
    blob = sealed_bytes(folder, [world.x25519[0].public], signer=world.signer, provenance={"parent_version": 3})
    opened = open_artifact(blob, [world.x25519[0]], world.trust)
    assert opened.provenance["name"] == "m" and opened.provenance["version"] == 1
    assert opened.provenance["metrics"] == {"accuracy": 0.9} and opened.provenance["parent_version"] == 3
    (folder / PROVENANCE).write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="JSON object"):
        seal(folder, name="m", version=1, signer=world.signer, recipients=[world.x25519[0].public])


# --- hand-made containers (plaintext-level checks) ------------------------------------------------
def craft(entries: list[Any], data: bytes, fmt: str = container.MANIFEST_FORMAT, raw: bytes | None = None) -> bytes:
    """A container with an arbitrary manifest (or raw manifest bytes) followed by `data`."""
    body = raw if raw is not None else json.dumps({"format": fmt, "files": entries}).encode()
    return struct.pack(">I", len(body)) + body + data


def test_crafted_container_control_unpacks() -> None:
    blob = craft([["a/b.bin", 3], ["c", 2]], b"xyzuv")
    assert container.unpack(blob) == {"a/b.bin": b"xyz", "c": b"uv"}
    views = container.unpack_views(blob)
    assert {n: bytes(v) for n, v in views.items()} == {"a/b.bin": b"xyz", "c": b"uv"}


CRAFTED = {
    "absolute path": craft([["/etc/passwd", 1]], b"x"),
    "dot-dot": craft([["../evil", 1]], b"x"),
    "dot-dot inside": craft([["a/../../evil", 1]], b"x"),
    "empty component": craft([["a//b", 1]], b"x"),
    "trailing slash": craft([["a/", 1]], b"x"),
    "dot component": craft([["./a", 1]], b"x"),
    "empty name": craft([["", 1]], b"x"),
    "backslash": craft([["a\\..\\b", 1]], b"x"),
    "nul": craft([["a\0b", 1]], b"x"),
    "duplicate": craft([["a", 1], ["a", 1]], b"xy"),
    "case duplicate": craft([["A", 1], ["a", 1]], b"xy"),
    "file and folder": craft([["a", 1], ["a/b", 1]], b"xy"),
    "sizes short": craft([["a", 5]], b"xyz"),
    "sizes long": craft([["a", 1]], b"xyz"),
    "negative size": craft([["a", -1], ["b", 2]], b"x"),
    "float size": craft([["a", 1.0]], b"x"),
    "bool size": craft([["a", True]], b"x"),
    "string size": craft([["a", "1"]], b"x"),
    "infinite size": craft([], b"x", raw=b'{"format":"sealgate-container/1","files":[["a",1e999]]}'),
    "non-string name": craft([[7, 1]], b"x"),
    "entry of three": craft([["a", 1, 2]], b"x"),
    "no files": craft([], b""),
    "unknown format": craft([["a", 1]], b"x", fmt="tar"),
    "manifest not json": craft([], b"x", raw=b"{nope"),
    "manifest not an object": craft([], b"x", raw=b"[1]"),
    "deeply nested manifest": craft([], b"", raw=b"[" * 50_000 + b"]" * 50_000),
    "manifest length past the end": struct.pack(">I", 1000) + b"{}",
    "manifest longer than the limit": struct.pack(">I", (4 << 20) + 1) + b"\0" * ((4 << 20) + 1),
    "too short": b"\0\0",
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_containers_are_refused(case: str) -> None:
    with pytest.raises(UnsafeArchive):
        container.unpack(CRAFTED[case])


def test_unpack_limits() -> None:
    blob = craft([["a", 3], ["b", 3]], b"abcdef")
    assert container.unpack(blob, Limits())
    for limits in (Limits(max_files=1), Limits(max_total_bytes=5), Limits(max_path_length=0)):
        with pytest.raises(UnsafeArchive):
            container.unpack(blob, limits)
    with pytest.raises(UnsafeArchive, match="manifest length"):
        container.unpack(blob, Limits(max_manifest_bytes=10))


def test_crafted_container_inside_a_valid_envelope_is_refused_after_authentication(world: World) -> None:
    """Sealed with seal_stream by the trusted signer: the envelope opens, the unpacker refuses."""
    body = craft([["../escape", 1]], b"x")
    blob = b"".join(
        envelope.seal_stream(
            name="m",
            version=1,
            created="2026-01-01T00:00:00Z",
            framework="onnx",
            plaintext=[body],
            plaintext_size=len(body),
            recipients=[world.x25519[0].public],
            signer=world.signer,
            chunk_size=envelope.MIN_CHUNK,
        )
    )
    with pytest.raises(UnsafeArchive, match="unsafe path"):
        open_artifact(blob, [world.x25519[0]], world.trust)
    with pytest.raises(UntrustedSigner):  # an unknown sender's container is never unpacked
        open_artifact(blob, [world.x25519[0]], TrustStore.of([world.outsider.public_key()]))


# --- limits ---------------------------------------------------------------------------------------
def test_limits_are_enforced_when_sealing_and_opening(world: World) -> None:
    recipients = [world.x25519[0].public]
    total = sum(len(b) for b in world.tf_files.values())
    with pytest.raises(UnsafeArchive, match="exceed the limit"):
        seal(
            world.tf_dir,
            name="m",
            version=1,
            signer=world.signer,
            recipients=recipients,
            limits=Limits(max_total_bytes=1000),
        )
    with pytest.raises(UnsafeArchive, match="files exceed"):
        seal(world.tf_dir, name="m", version=1, signer=world.signer, recipients=recipients, limits=Limits(max_files=2))
    blob = sealed_bytes(world.tf_dir, recipients, signer=world.signer)
    assert open_artifact(blob, [world.x25519[0]], world.trust, Limits(max_total_bytes=total + 20_000))
    # Within the envelope's allowance (limit + manifest), refused by the container's total.
    with pytest.raises(UnsafeArchive, match="exceed the limit"):
        open_artifact(blob, [world.x25519[0]], world.trust, Limits(max_total_bytes=total // 2))
    # Announced size beyond limit + manifest allowance: refused from the header, before reading any chunk.
    with pytest.raises(UnsafeArchive, match="announced size"):
        open_artifact(blob, [world.x25519[0]], world.trust, Limits(max_total_bytes=100, max_manifest_bytes=100))
    with pytest.raises(UnsafeArchive, match="files exceed"):
        open_artifact(blob, [world.x25519[0]], world.trust, Limits(max_files=2))


def test_seal_refuses_bad_chunk_sizes_and_no_recipients(world: World) -> None:
    for chunk in (envelope.MIN_CHUNK - 1, envelope.MAX_CHUNK + 1):
        with pytest.raises(ValueError, match="chunk size"):
            sealed_bytes(world.onnx_file, [world.x25519[0].public], signer=world.signer, chunk_size=chunk)
    with pytest.raises(ValueError, match="recipient"):
        sealed_bytes(world.onnx_file, [], signer=world.signer)


# --- writing a model folder (the edge `unseal` path) ----------------------------------------------
def test_write_model_dir_writes_exact_private_files(world: World, tmp_path: Path) -> None:
    opened = open_artifact(
        sealed_bytes(world.tf_dir, [world.x25519[0].public], signer=world.signer), [world.x25519[0]], world.trust
    )
    out = tmp_path / "out"
    written = write_model_dir(opened, out)
    assert sorted(p.relative_to(out).as_posix() for p in written) == sorted(opened.files)
    assert read_tree(out) == opened.files
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in written)


def test_write_model_dir_refuses_writing_outside(world: World, tmp_path: Path) -> None:
    opened = open_artifact(
        sealed_bytes(world.tf_dir, [world.x25519[0].public], signer=world.signer), [world.x25519[0]], world.trust
    )
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("../escape", "/abs/escape", "a/../../escape"):
        forged = replace(opened, files={name: b"x"})
        with pytest.raises(UnsafeArchive):
            write_model_dir(forged, tmp_path / "out-name")
    out = tmp_path / "out-link"
    out.mkdir()
    (out / "variables").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeArchive, match="outside"):
        write_model_dir(opened, out)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "escape").exists()


# --- OMS interoperability of what comes out -------------------------------------------------------
def _cli_verify(folder: Path, pub: Path) -> subprocess.CompletedProcess[str]:
    """`model_signing verify key FOLDER` with the signature inside the folder."""
    return subprocess.run(
        [
            str(MODEL_SIGNING_CLI),
            "verify",
            "key",
            str(folder),
            "--public_key",
            str(pub),
            "--signature",
            str(folder / SIGNATURE),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("kind", ["onnx", "tf"])
def test_unsealed_folder_verifies_with_the_model_signing_cli(world: World, tmp_path: Path, kind: str) -> None:
    """provenance.json is signed with the model, so the folder verifies as written, with no ignore flag."""
    src, expected = model_source(world, kind)
    opened: OpenedArtifact = open_artifact(
        sealed_bytes(src, [world.x25519[0].public], signer=world.signer), [world.x25519[0]], world.trust
    )
    out = tmp_path / "unsealed"
    write_model_dir(opened, out)
    result = _cli_verify(out, world.signer_pub)
    assert result.returncode == 0, result.stdout + result.stderr
    signing.verify_directory(out, world.signer_pub)
    (out / PROVENANCE).write_text(json.dumps({**opened.provenance, "version": 8}))
    result = _cli_verify(out, world.signer_pub)
    assert result.returncode != 0 and PROVENANCE in result.stdout + result.stderr
    assert set(expected) < set(read_tree(out))
