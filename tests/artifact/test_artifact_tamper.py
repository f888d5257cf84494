"""Tamper property tests: every change to a sealed artifact is refused with a specific error, and nothing opens.

One small artifact (a real ONNX MLP of ~10 KB, 4 KiB chunks, so several DATA frames, a FINAL frame and
the SIG frame) sealed for an X25519 and a hybrid ML-KEM-768 + X25519 recipient. Hypothesis changes one
byte anywhere (drawn per region, so the header, each wrapped key, every frame header, chunk body, tag and
the signature are all hit), truncates it anywhere, appends to it, and splices in bytes from a second
artifact; frame swaps, repeats and drops are enumerated exhaustively: 2,000 generated cases plus ~100 enumerated.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass

import blake3
import pytest
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.artifact import envelope, signing
from gateway.artifact.keys import KEM_HYBRID, Identity, generate_identity
from gateway.artifact.sealed import TrustStore, inspect, open_artifact, seal
from gateway.errors import (
    MetadataMismatch,
    NotARecipient,
    SealgateError,
    SignatureError,
    TamperedArtifact,
    UnsafeArchive,
    UnsupportedFormat,
    UntrustedSigner,
)
from tests.models import make_onnx_mlp

# The specific errors a refused artifact may raise: never their base class, never anything else.
SPECIFIC = (
    TamperedArtifact,
    UntrustedSigner,
    NotARecipient,
    UnsupportedFormat,
    MetadataMismatch,
    SignatureError,
    UnsafeArchive,
)


def budget(examples: int) -> settings:
    """Hypothesis settings for `examples` cases: no deadline, no example database written to disk."""
    return settings(max_examples=examples, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Region:
    """A named byte range [start, end) of the artifact."""

    name: str
    start: int
    end: int


@dataclass(frozen=True, repr=False)
class Case:
    """The artifact under attack, its map, and who opens it."""

    blob: bytes
    other: bytes  # a second sealing of the same model for the same recipients (fresh key, new signatures)
    regions: tuple[Region, ...]
    frames: tuple[bytes, ...]  # every frame after the header, the SIG frame last
    body_start: int
    signer_id_span: tuple[int, int]
    openers: tuple[Identity, ...]  # X25519 recipient, hybrid recipient, a stranger
    trust: TrustStore

    def open(self, blob: bytes, opener: int = 0) -> object:
        """Open `blob` as identity number `opener` (0: X25519 recipient, 1: hybrid, 2: stranger)."""
        return open_artifact(blob, [self.openers[opener]], self.trust)

    def __repr__(self) -> str:
        """Short, so that Hypothesis reports stay readable."""
        return f"Case({len(self.blob)} bytes, {len(self.frames)} frames)"


def layout(blob: bytes, signer_key_id: str) -> tuple[list[Region], list[bytes], int, tuple[int, int]]:
    """Map the artifact: prefix fields, header, wrapped keys, signer id, each frame's header/body/tag, signature."""
    magic, _, hlen = envelope.PREFIX.unpack_from(blob)
    assert magic == envelope.MAGIC
    hstart = envelope.PREFIX.size
    header = blob[hstart : hstart + hlen]
    regions = [Region("magic", 0, 8), Region("format", 8, 10), Region("header length", 10, 14)]
    regions.append(Region("header json", hstart, hstart + hlen))
    for recipient in inspect(blob).recipients:
        b64 = base64.b64encode(recipient.wrapped)
        at = header.index(b64)
        regions.append(Region(f"wrapped {recipient.kem}", hstart + at, hstart + at + len(b64)))
        at = header.index(recipient.key_id.encode())
        regions.append(Region(f"key id {recipient.kem}", hstart + at, hstart + at + len(recipient.key_id)))
    at = header.index(b'"signer":{"alg":"ECDSA-P256-BLAKE3","key_id":"') + len(b'"signer":{"alg":"ECDSA-P256-BLAKE3"')
    signer_span = (hstart + at, hstart + at + len(f',"key_id":"{signer_key_id}"'))
    regions.append(Region("signer key id", *signer_span))
    frames: list[bytes] = []
    pos = body_start = hstart + hlen
    while pos < len(blob):
        kind, length = envelope.FRAME.unpack_from(blob, pos)
        payload = pos + envelope.FRAME.size
        label = {envelope.DATA: f"data {len(frames)}", envelope.FINAL: "final", envelope.SIG: "sig"}[kind]
        regions.append(Region(f"{label} frame header", pos, payload))
        if kind == envelope.SIG:
            regions.append(Region("signature", payload, payload + length))
        else:
            regions.append(Region(f"{label} ciphertext", payload, payload + length - envelope.TAG))
            regions.append(Region(f"{label} tag", payload + length - envelope.TAG, payload + length))
        frames.append(blob[pos : payload + length])
        pos = payload + length
    assert pos == len(blob) and blob[body_start:] == b"".join(frames)
    return regions, frames, body_start, signer_span


@pytest.fixture(scope="module")
def case() -> Case:
    """The small artifact (built once) and everything the tests need to attack it."""
    signer = ec.generate_private_key(ec.SECP256R1())
    ours, hybrid, stranger = generate_identity(), generate_identity(KEM_HYBRID), generate_identity()
    model = make_onnx_mlp(in_dim=8, hidden=(128, 16), out_dim=2, seed=1)

    def sealed() -> bytes:
        """One sealing of the model (fresh data key, new signatures each time)."""
        _, chunks = seal(
            model,
            name="tamper",
            version=3,
            signer=signer,
            recipients=[ours.public, hybrid.public],
            chunk_size=envelope.MIN_CHUNK,
        )
        return b"".join(chunks)

    blob, other = sealed(), sealed()
    header = inspect(blob)
    assert header.num_chunks >= 4 and 10_000 <= header.plaintext_size <= 20_000
    regions, frames, body_start, signer_span = layout(blob, header.signer_key_id)
    trust = TrustStore.of([signer.public_key()])
    for opener in (ours, hybrid):
        assert open_artifact(blob, [opener], trust).model_files == model
    assert other != blob
    return Case(blob, other, tuple(regions), tuple(frames), body_start, signer_span, (ours, hybrid, stranger), trust)


def refused(case: Case, blob: bytes, opener: int = 0) -> type[SealgateError]:
    """Open `blob`; it must raise exactly one of the specific errors (returned), and never return a model."""
    try:
        opened = case.open(blob, opener)
    except SealgateError as exc:
        assert type(exc) in SPECIFIC, f"{type(exc).__name__} is not a specific error: {exc}"
        assert str(exc) and "\n" not in str(exc)
        return type(exc)
    pytest.fail(f"a tampered artifact opened: {opened!r:.200}")


def expected_for_byte(case: Case, pos: int) -> tuple[type[SealgateError], ...]:
    """What a one-byte change at `pos` must raise."""
    if pos < 10:  # magic and format version
        return (UnsupportedFormat,)
    start, end = case.signer_id_span
    if start <= pos < end:  # pointing at another (unknown) signer, or breaking the JSON
        return (UntrustedSigner, TamperedArtifact)
    return (TamperedArtifact,)


def flipped(blob: bytes, pos: int, xor: int) -> bytes:
    """`blob` with the byte at `pos` XORed with `xor` (non-zero: the byte really changes)."""
    out = bytearray(blob)
    out[pos] ^= xor
    return bytes(out)


# --- control --------------------------------------------------------------------------------------
def test_untampered_artifact_opens_and_the_map_covers_every_byte(case: Case) -> None:
    assert case.open(case.blob, 0) and case.open(case.blob, 1)
    assert refused(case, case.blob, 2) is NotARecipient
    names = {r.name for r in case.regions}
    assert {"magic", "wrapped X25519", "wrapped MLKEM768-X25519", "final tag", "signature"} <= names
    assert sum(1 for n in names if n.startswith("data ") and n.endswith("ciphertext")) >= 2
    covered = set()
    for r in case.regions:
        covered.update(range(r.start, r.end))
    assert covered == set(range(len(case.blob)))


# --- one changed byte ------------------------------------------------------------------------------
@budget(600)
@given(data=st.data())
def test_any_changed_byte_in_any_region_is_refused(case: Case, data: st.DataObject) -> None:
    region = data.draw(st.sampled_from(case.regions), label="region")
    pos = data.draw(st.integers(region.start, region.end - 1), label="position")
    xor = data.draw(st.integers(1, 255), label="xor")
    error = refused(case, flipped(case.blob, pos, xor))
    assert error in expected_for_byte(case, pos), (region.name, pos, xor, error)


@budget(400)
@given(data=st.data())
def test_any_changed_byte_refused_for_every_opener(case: Case, data: st.DataObject) -> None:
    """Uniform positions; the hybrid recipient and a non-recipient are refused the same way (signature first)."""
    pos = data.draw(st.integers(0, len(case.blob) - 1), label="position")
    xor = data.draw(st.integers(1, 255), label="xor")
    opener = data.draw(st.sampled_from([0, 1, 2]), label="opener")
    error = refused(case, flipped(case.blob, pos, xor), opener)
    assert error in expected_for_byte(case, pos), (pos, xor, opener, error)


@budget(300)
@given(data=st.data())
def test_any_changed_span_is_refused(case: Case, data: st.DataObject) -> None:
    """Several bytes overwritten at once (random content, at least one byte really changed)."""
    start = data.draw(st.integers(0, len(case.blob) - 1), label="start")
    size = data.draw(st.integers(1, min(64, len(case.blob) - start)), label="size")
    new = data.draw(st.binary(min_size=size, max_size=size), label="bytes")
    blob = case.blob[:start] + new + case.blob[start + size :]
    if blob == case.blob:
        return
    error = refused(case, blob)
    if start >= 10 and not (start < case.signer_id_span[1] and start + size > case.signer_id_span[0]):
        assert error is TamperedArtifact, (start, size, error)


# --- truncation and appending ---------------------------------------------------------------------
@budget(300)
@given(data=st.data())
def test_truncation_anywhere_is_refused(case: Case, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(case.blob) - 1), label="length kept")
    opener = data.draw(st.sampled_from([0, 2]), label="opener")
    error = refused(case, case.blob[:cut], opener)
    assert error is (UnsupportedFormat if cut < envelope.PREFIX.size else TamperedArtifact), (cut, error)


def test_truncation_at_every_frame_boundary(case: Case) -> None:
    boundaries = [case.body_start]
    for frame in case.frames[:-1]:
        boundaries.append(boundaries[-1] + len(frame))
    for cut in boundaries:
        assert refused(case, case.blob[:cut]) is TamperedArtifact, cut


@budget(100)
@given(tail=st.binary(min_size=1, max_size=300))
def test_appended_bytes_are_refused(case: Case, tail: bytes) -> None:
    assert refused(case, case.blob + tail) is TamperedArtifact


# --- frames moved, repeated, dropped, or taken from another artifact --------------------------------
def _swapped(frames: list[bytes], i: int, j: int) -> list[bytes]:
    """`frames` with frames i and j exchanged."""
    out = list(frames)
    out[i], out[j] = frames[j], frames[i]
    return out


def frame_operations(n: int) -> dict[str, Callable[[list[bytes]], list[bytes]]]:
    """Every swap, every repetition at every place, every drop, reversal, and duplicated tail of n frames."""
    ops: dict[str, Callable[[list[bytes]], list[bytes]]] = {}
    for i in range(n):
        for j in range(i + 1, n):
            ops[f"swap {i}<->{j}"] = lambda f, i=i, j=j: _swapped(f, i, j)
        for j in range(n + 1):
            ops[f"repeat {i} at {j}"] = lambda f, i=i, j=j: [*f[:j], f[i], *f[j:]]
        ops[f"drop {i}"] = lambda f, i=i: [x for k, x in enumerate(f) if k != i]
    ops["reverse chunks"] = lambda f: [*reversed(f[:-1]), f[-1]]
    ops["chunks twice"] = lambda f: [*f[:-1], *f[:-1], f[-1]]
    ops["no frames at all"] = lambda f: []
    return ops


def test_frames_swapped_repeated_or_dropped_are_tampered(case: Case) -> None:
    ops = frame_operations(len(case.frames))
    assert len(ops) >= 45
    prefix = case.blob[: case.body_start]
    for name, op in ops.items():
        for opener in (0, 2):
            blob = prefix + b"".join(op(list(case.frames)))
            assert blob != case.blob, name
            assert refused(case, blob, opener) is TamperedArtifact, (name, opener)


def test_frames_or_header_from_another_artifact_are_tampered(case: Case) -> None:
    """Same model, signer and recipients, sealed twice: nothing can be mixed between the two."""
    _, other_frames, other_body, _ = layout(case.other, inspect(case.other).signer_key_id)
    assert len(other_frames) == len(case.frames)
    for i in range(len(case.frames)):
        mixed = list(case.frames)
        mixed[i] = other_frames[i]
        assert refused(case, case.blob[: case.body_start] + b"".join(mixed)) is TamperedArtifact, i
    assert refused(case, case.other[:other_body] + case.blob[case.body_start :]) is TamperedArtifact
    assert refused(case, case.blob[: case.body_start] + case.other[other_body:]) is TamperedArtifact


@budget(300)
@given(data=st.data())
def test_spliced_ranges_from_another_artifact_are_refused(case: Case, data: st.DataObject) -> None:
    size = min(len(case.blob), len(case.other))
    start = data.draw(st.integers(envelope.PREFIX.size, size - 1), label="start")
    end = data.draw(st.integers(start + 1, size), label="end")
    blob = case.blob[:start] + case.other[start:end] + case.blob[end:]
    if blob in (case.blob, case.other):  # nothing changed, or the whole other (valid) artifact
        return
    assert refused(case, blob) in (TamperedArtifact, UntrustedSigner)


# --- the header is parsed strictly, before any key is used ----------------------------------------
def test_header_length_field_and_format_version(case: Case) -> None:
    hlen = envelope.PREFIX.unpack_from(case.blob)[2]
    for bad in (0, 1, hlen - 1, hlen + 1, envelope.MAX_HEADER + 1, 0xFFFFFFFF):
        blob = envelope.PREFIX.pack(envelope.MAGIC, envelope.FORMAT_VERSION, bad) + case.blob[envelope.PREFIX.size :]
        assert refused(case, blob) is TamperedArtifact, bad
    for version in (0, 2, 0xFFFF):
        blob = struct.pack(">8sH", envelope.MAGIC, version) + case.blob[10:]
        assert refused(case, blob) is UnsupportedFormat, version
    assert refused(case, b"") is UnsupportedFormat
    assert refused(case, b"PK\x03\x04" + case.blob[4:]) is UnsupportedFormat


def with_header(blob: bytes, edit: Callable[[dict], object], canonical: bool = True) -> bytes:
    """`blob` with its header JSON replaced by `edit(doc)` (re-serialized canonically unless told otherwise)."""
    hlen = envelope.PREFIX.unpack_from(blob)[2]
    body = blob[envelope.PREFIX.size + hlen :]
    doc = json.loads(blob[envelope.PREFIX.size : envelope.PREFIX.size + hlen])
    new = edit(doc)
    raw = canonical_json(new) if canonical else json.dumps(new, indent=1).encode()
    return envelope.PREFIX.pack(envelope.MAGIC, envelope.FORMAT_VERSION, len(raw)) + raw + body


def canonical_json(doc: object) -> bytes:
    """Canonical JSON as docs/ARTIFACT.md defines it: sorted keys, no spaces, ASCII only."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _set(path: str, value: object) -> Callable[[dict], object]:
    """An edit setting doc[a][b]... = value (path "a.b"); value MISSING deletes it."""

    def edit(doc: dict) -> object:
        """Apply the change in place and return the document."""
        *parents, last = path.split(".")
        target = doc
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is MISSING:
            del target[last]
        elif isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
        return doc

    return edit


MISSING = object()
MALFORMED_HEADERS: dict[str, Callable[[dict], object]] = {
    "signer key id is a list": _set("signer.key_id", ["x"]),
    "signer key id is an object": _set("signer.key_id", {"a": 1}),
    "signer key id is a number": _set("signer.key_id", 7),
    "signer key id with markup": _set("signer.key_id", "[/]0123456789ab"),
    "signer key id too long": _set("signer.key_id", "0" * 17),
    "signer missing": _set("signer", MISSING),
    "signer alg": _set("signer.alg", "Ed25519"),
    "created is a number": _set("created", 5),
    "framework is null": _set("framework", None),
    "name is a number": _set("name", 1),
    "version is a string": _set("version", "1"),
    "version is a bool": _set("version", True),
    "version is a float": _set("version", 1.5),
    "version negative": _set("version", -1),
    "chunk size too small": _set("chunk_size", 1024),
    "chunk size too large": _set("chunk_size", 1 << 30),
    "plaintext size zero": _set("plaintext_size", 0),
    "plaintext size negative": _set("plaintext_size", -5),
    "aead": _set("aead", "AES-128-GCM"),
    "format": _set("format", "sealgate-sealed/2"),
    "missing field": _set("created", MISSING),
    "recipients not a list": _set("recipients", {"kem": "X25519"}),
    "recipients a string": _set("recipients", "abc"),
    "recipient not an object": _set("recipients.0", "X25519"),
    "recipient kem is a number": _set("recipients.0.kem", 1),
    "recipient kem unknown": _set("recipients.0.kem", "P256"),
    "recipient key id is a list": _set("recipients.0.key_id", ["a"]),
    "recipient key id upper case": _set("recipients.0.key_id", "ABCDEF0123456789"),
    "recipient wrapped not base64": _set("recipients.0.wrapped", "!!!"),
    "recipient wrapped is a number": _set("recipients.0.wrapped", 3),
    "recipient without wrapped key": _set("recipients.0.wrapped", MISSING),
    "header is a list": lambda doc: [doc],
    "header is a string": lambda doc: "SGSEALED",
}


@pytest.mark.parametrize("case_name", sorted(MALFORMED_HEADERS))
def test_malformed_header_is_tampered_for_open_and_inspect(case: Case, case_name: str) -> None:
    blob = with_header(case.blob, MALFORMED_HEADERS[case_name])
    with pytest.raises(TamperedArtifact, match="header is malformed"):
        inspect(blob)
    for opener in (0, 2):
        assert refused(case, blob, opener) is TamperedArtifact


UNKNOWN_FIELDS: dict[str, Callable[[dict], object]] = {
    "extra field": _set("comment", "hi"),
    "extra signer field": _set("signer.comment", "hi"),
    "extra recipient field": _set("recipients.0.note", "hi"),
}


@pytest.mark.parametrize("case_name", sorted(UNKNOWN_FIELDS))
def test_unknown_header_fields_are_refused_at_every_level(case: Case, case_name: str) -> None:
    """A field this build does not read is a claim nothing checks: refused as unsupported by inspect and open."""
    blob = with_header(case.blob, UNKNOWN_FIELDS[case_name])
    with pytest.raises(UnsupportedFormat, match="does not read"):
        inspect(blob)
    for opener in (0, 2):
        assert refused(case, blob, opener) is UnsupportedFormat


def test_header_must_be_canonical_and_shallow(case: Case) -> None:
    with pytest.raises(TamperedArtifact, match="malformed"):
        inspect(with_header(case.blob, lambda doc: doc, canonical=False))
    deep = b"[" * 100_000 + b"]" * 100_000
    blob = envelope.PREFIX.pack(envelope.MAGIC, envelope.FORMAT_VERSION, len(deep)) + deep
    with pytest.raises(TamperedArtifact, match="malformed"):
        inspect(blob)
    assert refused(case, blob) is TamperedArtifact


def test_well_formed_header_edits_break_the_signature(case: Case) -> None:
    """A header that still parses but says something else: the signer id decides first, then the signature."""
    for edit in (_set("version", 4), _set("name", "other"), _set("created", "2030-01-01T00:00:00Z")):
        assert refused(case, with_header(case.blob, edit)) is TamperedArtifact
        assert refused(case, with_header(case.blob, edit), 2) is TamperedArtifact
    unknown = with_header(case.blob, _set("signer.key_id", "0" * 16))
    assert refused(case, unknown) is UntrustedSigner
    dropped = with_header(case.blob, lambda doc: {**doc, "recipients": doc["recipients"][1:]})
    assert refused(case, dropped) is TamperedArtifact  # not NotARecipient: the signature is checked first


# --- an independent encoder of docs/ARTIFACT.md: conformance, and what an attacker can build ---------
def forge(
    files: dict[str, bytes],
    signer: ec.EllipticCurvePrivateKey,
    recipient: Identity,
    *,
    announced: int | None = None,
    frames_sent: int | None = None,
    extra_data_frames: int = 0,
) -> bytes:
    """Build an artifact from the documented layout alone (not envelope.py): header, HPKE wrap, chunks, signature.

    `announced` overrides the header's plaintext size, `frames_sent` stops after that many chunks (then
    the SIG frame), `extra_data_frames` adds properly encrypted DATA frames past the real data.
    """
    manifest = json.dumps({"format": "sealgate-container/1", "files": [[n, len(b)] for n, b in sorted(files.items())]})
    body = manifest.encode()
    plaintext = struct.pack(">I", len(body)) + body + b"".join(b for _, b in sorted(files.items()))
    chunk = envelope.MIN_CHUNK
    spki = signer.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    context = {
        "aead": "AES-256-GCM",
        "chunk_size": chunk,
        "created": "2026-01-01T00:00:00Z",
        "format": "sealgate-sealed/1",
        "framework": "onnx",
        "name": "forged",
        "plaintext_size": announced if announced is not None else len(plaintext),
        "signer": {"alg": "ECDSA-P256-BLAKE3", "key_id": hashlib.sha256(spki).hexdigest()[:16]},
        "version": 1,
    }
    dek = AESGCM.generate_key(bit_length=256)
    key_id = recipient.public.key_id
    info = b"sealgate-sealed/1 data key\0" + key_id.encode() + b"\0" + hashlib.sha256(canonical_json(context)).digest()
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    wrapped = suite.encrypt(dek, recipient.public.public, info=info)
    header = canonical_json(
        {**context, "recipients": [{"kem": "X25519", "key_id": key_id, "wrapped": base64.b64encode(wrapped).decode()}]}
    )
    out = b"SGSEALED" + struct.pack(">HI", 1, len(header)) + header
    aad = hashlib.sha256(out).digest()
    pieces = [plaintext[i : i + chunk] for i in range(0, len(plaintext), chunk)]
    pieces = pieces[:-1] + [bytes(chunk)] * extra_data_frames + pieces[-1:]
    if frames_sent is not None:
        pieces = pieces[:frames_sent]
    for index, piece in enumerate(pieces):
        last = index == len(pieces) - 1 and frames_sent is None
        nonce = index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        sealed = AESGCM(dek).encrypt(nonce, piece, aad)
        out += struct.pack(">BI", 2 if last else 1, len(sealed)) + sealed
    signature = signer.sign(blake3.blake3(out).digest(), ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    return out + struct.pack(">BI", 3, len(signature)) + signature


@pytest.fixture(scope="module")
def signer_and_files() -> tuple[ec.EllipticCurvePrivateKey, dict[str, bytes]]:
    """A trusted signer and an OMS-signed model with provenance, as sealed.seal would pack it."""
    signer = ec.generate_private_key(ec.SECP256R1())
    files = make_onnx_mlp(in_dim=8, hidden=(128, 16), out_dim=2, seed=2)
    files["provenance.json"] = json.dumps({"name": "forged", "version": 1}).encode()
    files["model.sig"] = signing.sign_files(files, signer)
    return signer, files


def test_documented_layout_built_independently_opens(signer_and_files: tuple, case: Case) -> None:
    signer, files = signer_and_files
    trust = TrustStore.of([signer.public_key()])
    opened = open_artifact(forge(files, signer, case.openers[0]), [case.openers[0]], trust)
    assert opened.files == files and opened.header.name == "forged"


def _peak_growth_mb(action: Callable[[], object]) -> float:
    """How far this process's peak RSS rises above its current RSS while `action` runs (Linux VmHWM)."""

    def status(field: str) -> float:
        """A /proc/self/status memory field, in MiB."""
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(field + ":")) / 1024

    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
    except OSError:
        pytest.skip("cannot reset the peak RSS counter here")
    base = status("VmRSS")
    action()
    return status("VmHWM") - base


def test_announced_size_commits_no_memory_before_the_data_arrives(signer_and_files: tuple, case: Case) -> None:
    """Anyone holding the (public) recipient key can wrap a data key: a header announcing 2 GiB costs nothing."""
    signer, files = signer_and_files
    trust = TrustStore.of([signer.public_key()])
    blob = forge(files, signer, case.openers[0], announced=2 << 30, frames_sent=2)
    assert inspect(blob).plaintext_size == 2 << 30

    def attempt() -> None:
        """Open the forged artifact: refused once the SIG frame comes early."""
        with pytest.raises(TamperedArtifact, match="final chunk is missing"):
            open_artifact(blob, [case.openers[0]], trust)

    assert _peak_growth_mb(attempt) < 64


class _CountingStream(io.RawIOBase):
    """A read-only stream over `data` that records how many bytes were consumed."""

    def __init__(self, data: bytes) -> None:
        self._data, self.consumed = data, 0

    def readable(self) -> bool:
        """A source of bytes."""
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        """Copy the next bytes into `buf`, counting them."""
        n = min(len(buf), len(self._data) - self.consumed)
        buf[:n] = self._data[self.consumed : self.consumed + n]
        self.consumed += n
        return n


def test_data_frames_past_the_announced_size_stop_the_reader(signer_and_files: tuple, case: Case) -> None:
    """Extra (validly encrypted) DATA frames are refused at the first one, not read to the end of the stream."""
    signer, files = signer_and_files
    trust = TrustStore.of([signer.public_key()])
    blob = forge(files, signer, case.openers[0], extra_data_frames=200)
    stream = _CountingStream(blob)
    with pytest.raises(TamperedArtifact, match="past the announced size"):
        open_artifact(io.BufferedReader(stream, buffer_size=8192), [case.openers[0]], trust)
    assert stream.consumed < len(blob) // 10
