"""Seal a model (OMS-sign, pack, encrypt to recipients) and open a sealed artifact into memory, verified.

This is the API every other part uses: the CLI's seal/unseal, the repository and the serving path
(which never writes plaintext to disk), the release path and the federated module.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric import ec

from gateway.artifact import container, envelope, signing
from gateway.artifact.container import DEFAULT_LIMITS, Limits, SourceFile
from gateway.artifact.envelope import Header
from gateway.artifact.keys import Identity, RecipientKey, signer_key_id
from gateway.backends import registry
from gateway.errors import ArtifactError, MetadataMismatch, SignatureError, UnsafeArchive, UntrustedSigner
from gateway.fsutil import atomic_write
from gateway.versions import check_version

PROVENANCE = "provenance.json"
SIGNATURE = signing.SIGNATURE_NAME
OVERLAP_MIN_BYTES = 8 << 20  # below this, copying then verifying beats starting a thread
OVERLAP_HEAD_START_S = 0.005


def now_rfc3339() -> str:
    """Current UTC time, second precision, as RFC 3339."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class OpenedArtifact:
    """A verified model in memory: its header, its files (model files + provenance + signature)."""

    header: Header
    files: dict[str, bytes]
    provenance: dict[str, Any]
    signer_key_id: str

    @property
    def model_files(self) -> dict[str, bytes]:
        """The files a backend loads: everything but the OMS signature and the provenance record."""
        return {n: b for n, b in self.files.items() if n not in (SIGNATURE, PROVENANCE)}


@dataclass
class TrustStore:
    """The signer keys an opener accepts, by key id."""

    keys: dict[str, ec.EllipticCurvePublicKey] = field(default_factory=dict)

    @classmethod
    def of(cls, keys: Sequence[ec.EllipticCurvePublicKey]) -> TrustStore:
        return cls({signer_key_id(k): k for k in keys})


def build_provenance(
    name: str, version: int, framework: str, extra: Mapping[str, Any] | None, created: str
) -> dict[str, Any]:
    """The provenance record sealed beside the model; caller-supplied fields win except name/version."""
    doc: dict[str, Any] = {"framework": framework, "created": created, "parent_version": None}
    if extra:
        doc.update(extra)
    doc["name"], doc["version"] = name, int(version)
    return doc


def seal(
    src: Path | Mapping[str, bytes],
    *,
    name: str,
    version: int,
    signer: ec.EllipticCurvePrivateKey,
    recipients: Sequence[RecipientKey],
    provenance: Mapping[str, Any] | None = None,
    chunk_size: int = envelope.DEFAULT_CHUNK,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[Header, Iterator[bytes]]:
    """Prepare a sealed artifact of `src` (a model file, a folder, or an in-memory mapping).

    Returns the header and an iterator of the artifact's bytes; memory stays bounded by one chunk
    plus the largest read block, whatever the model size (files are hashed, then streamed, from disk).
    """
    check_version(version)
    skip = frozenset({SIGNATURE, PROVENANCE})
    if isinstance(src, Mapping):
        files = container.from_mapping({n: b for n, b in src.items() if n not in skip}, limits)
        given = src.get(PROVENANCE)
    else:
        files = container.collect(Path(src), limits, skip=skip)
        given = _provenance_in(Path(src))
    base = _provenance_doc(given) if given else {}
    if provenance:
        base.update(provenance)
    created = now_rfc3339()
    framework = registry.framework_of([f.name for f in files])  # the backend that will load it, or unknown
    prov = build_provenance(name, version, framework, base, created)
    prov_bytes = json.dumps(prov, indent=2, sort_keys=True).encode() + b"\n"
    files.append(SourceFile(PROVENANCE, len(prov_bytes), data=prov_bytes))
    digests = {f.name: _sha256(f) for f in files}
    sig = signing.sign_digests(digests, signer)
    files.append(SourceFile(SIGNATURE, len(sig), data=sig))
    files.sort(key=lambda f: f.name)
    size = container.container_size(files)
    stream = envelope.seal_stream(
        name=name,
        version=int(version),
        created=created,
        framework=framework,
        plaintext=container.stream(files),
        plaintext_size=size,
        recipients=recipients,
        signer=signer,
        chunk_size=chunk_size,
    )
    first = next(stream)
    header, _ = envelope.read_header(io.BytesIO(first))

    def chained() -> Iterator[bytes]:
        yield first
        yield from stream

    return header, chained()


def _provenance_in(src: Path) -> bytes | None:
    """The provenance.json a model folder already holds, if any; a link or other non-file is refused."""
    if not src.is_dir():
        return None
    try:
        st = os.lstat(src / PROVENANCE)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeArchive(f"refusing to seal {PROVENANCE}: not a regular file (link, device, socket or fifo)")
    return (src / PROVENANCE).read_bytes()


def _provenance_doc(data: bytes) -> dict[str, Any]:
    """Parse a given provenance record; it must be a JSON object."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise ArtifactError(f"{PROVENANCE} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ArtifactError(f"{PROVENANCE} must hold a JSON object")
    return doc


def seal_to_file(src: Path | Mapping[str, bytes], out: Path, **kwargs: Any) -> Header:
    """Seal into `out` atomically (temp file, fsync, rename): a crash leaves no half artifact."""
    header, chunks = seal(src, **kwargs)
    atomic_write(Path(out), chunks, 0o644, force=True)
    return header


def _sha256(f: SourceFile) -> str:
    h = hashlib.sha256()
    for block in f.chunks():
        h.update(block)
    return h.hexdigest()


def open_artifact(
    source: Path | bytes | BinaryIO,
    identities: Sequence[Identity],
    trust: TrustStore,
    limits: Limits = DEFAULT_LIMITS,
) -> OpenedArtifact:
    """Decrypt and verify a sealed artifact into memory; any failure raises and returns nothing.

    Order: envelope (format, trusted signer, signature over every byte, recipient, every chunk) ->
    container (safe paths, limits) -> OMS signature over the files by the same signer ->
    provenance name/version equal to the header's.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        return _open(io.BytesIO(source), identities, trust, limits)
    if isinstance(source, Path | str):
        with open(source, "rb") as fh:
            return _open(fh, identities, trust, limits)
    return _open(source, identities, trust, limits)


def _open(stream: BinaryIO, identities: Sequence[Identity], trust: TrustStore, limits: Limits) -> OpenedArtifact:
    max_plain = limits.max_total_bytes + limits.max_manifest_bytes + 4
    header, plaintext = envelope.open_stream(stream, identities, trust.keys, max_plain)
    views = container.unpack_views(plaintext, limits)
    del plaintext
    sig = views.get(SIGNATURE)
    if sig is None:
        raise SignatureError("the sealed model carries no OMS signature (model.sig)")
    files, key = _copy_and_verify(views, bytes(sig), list(trust.keys.values()))
    del views
    if signer_key_id(key) != header.signer_key_id:
        raise UntrustedSigner("the model's OMS signature and the envelope were made by different keys")
    try:
        prov = json.loads(files[PROVENANCE])
    except (KeyError, ValueError, RecursionError):
        raise MetadataMismatch("the sealed model has no readable provenance.json") from None
    if not isinstance(prov, dict):
        raise MetadataMismatch("the sealed model's provenance.json is not an object")
    if prov.get("name") != header.name or prov.get("version") != header.version:
        raise MetadataMismatch(
            f"header says {header.name} v{header.version} but the signed provenance says "
            f"{prov.get('name')} v{prov.get('version')}"
        )
    return OpenedArtifact(header, files, prov, header.signer_key_id)


def _copy_and_verify(
    views: Mapping[str, memoryview], sig: bytes, trusted: list[ec.EllipticCurvePublicKey]
) -> tuple[dict[str, bytes], ec.EllipticCurvePublicKey]:
    """Copy the files out of the plaintext buffer and OMS-verify them; both at once for large models.

    hashlib releases the GIL while hashing, a copy does not: the verifier gets a short head start to
    reach its hashing before the copies begin (without it the two run one after the other; the result
    is the same either way). Nothing is returned unless the verification passed.
    """
    signed = {n: v for n, v in views.items() if n != SIGNATURE}
    if sum(v.nbytes for v in views.values()) < OVERLAP_MIN_BYTES:
        key = signing.verify_files(signed, sig, trusted)
        return {n: bytes(v) for n, v in views.items()}, key
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sealgate-oms") as pool:
        verified = pool.submit(signing.verify_files, signed, sig, trusted)
        concurrent.futures.wait([verified], timeout=OVERLAP_HEAD_START_S)
        if verified.done():
            verified.result()  # failed fast (or tiny): raise before copying anything
        files = {n: bytes(v) for n, v in views.items()}
        return files, verified.result()


def inspect(source: Path | bytes | BinaryIO) -> Header:
    """Read the header of a sealed artifact with no key at all."""
    if isinstance(source, bytes | bytearray | memoryview):
        return envelope.read_header(io.BytesIO(source))[0]
    if isinstance(source, Path | str):
        with open(source, "rb") as fh:
            return envelope.read_header(fh)[0]
    return envelope.read_header(source)[0]


def write_model_dir(opened: OpenedArtifact, out: Path) -> list[Path]:
    """Write an opened model to a folder (the edge `unseal` path; never used by the server)."""
    out = Path(out)
    written = []
    for name, data in sorted(opened.files.items()):
        container.check_path(name)
        target = out / name
        if out.resolve() not in target.resolve().parents:
            raise UnsafeArchive(f"refusing to write outside {out}: {name}")
        atomic_write(target, data, 0o600, force=True)
        written.append(target)
    return written
