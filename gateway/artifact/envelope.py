"""The sealed envelope: an authenticated header, AES-256-GCM chunks, and the signer's signature.

Layout (docs/ARTIFACT.md is the reference):

    magic "SGSEALED" | u16 format=1 | u32 header length | header (canonical JSON)
    frame*  where frame = u8 type | u32 length | payload
        DATA  (1) : AES-256-GCM(chunk i), nonce = i as 11 bytes big-endian || 0x00
        FINAL (2) : the last chunk, nonce = i || 0x01
        SIG   (3) : ECDSA P-256 over the BLAKE3-256 digest of every byte before this frame
    end of file

Every chunk's associated data is the SHA-256 of magic..header, so the header is bound to each chunk; the
index and last-chunk flag in the nonce make reordering, repetition and truncation fail (the construction
of Tink's streaming AEAD and age's STREAM). The data key is fresh per artifact and wrapped for each
recipient with RFC 9180 HPKE, its `info` binding the header's context and the recipient's key id.
The signature proves origin (HPKE base mode authenticates no sender) and is checked before any decrypted
byte is handed to a parser. While opening, memory is committed only as authentic-looking chunks arrive,
never on the header's word, and large ciphertexts are hashed in a worker thread beside decryption.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import mmap
import queue
import re
import struct
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import BinaryIO

import blake3
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.artifact.keys import KEM_HYBRID, KEM_X25519, Identity, RecipientKey, signer_key_id
from gateway.errors import (
    ArtifactError,
    NotARecipient,
    TamperedArtifact,
    UnsafeArchive,
    UnsupportedFormat,
    UntrustedSigner,
    clip,
)
from gateway.jsondepth import nesting_depth
from gateway.versions import MAX_VERSION, check_version

MAGIC = b"SGSEALED"
FORMAT_VERSION = 1
FORMAT_NAME = "sealgate-sealed/1"
PREFIX = struct.Struct(">8sHI")
FRAME = struct.Struct(">BI")
DATA, FINAL, SIG = 1, 2, 3
TAG = 16
DEFAULT_CHUNK = 1 << 20
MIN_CHUNK, MAX_CHUNK = 4 << 10, 64 << 20
MAX_HEADER = 1 << 20
MAX_SIG = 256
MAX_HEADER_DEPTH = 8  # the header nests three levels (header, recipients, recipient)
KEY_ID = re.compile(r"[0-9a-f]{16}")
HASH_THREAD_MIN = 8 << 20  # below this, hashing inline beats starting a thread
AEAD_NAME = "AES-256-GCM"
SIG_ALG = "ECDSA-P256-BLAKE3"


def envelope_digest(first: bytes = b"") -> blake3.blake3:
    """The hash the signature covers: BLAKE3-256, ~3.5x the speed of SHA-256 here (SHA-NI), so that
    authenticating the ciphertext costs little beside the SHA-256 pass OMS needs over the plaintext."""
    return blake3.blake3(first)


_SUITES = {
    KEM_X25519: hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
    KEM_HYBRID: hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
}


@dataclass(frozen=True)
class Recipient:
    """A header entry: who can open the artifact, and the data key wrapped for them."""

    kem: str
    key_id: str
    wrapped: bytes


@dataclass(frozen=True)
class Header:
    """The authenticated, key-less readable part of a sealed artifact."""

    name: str
    version: int
    created: str
    chunk_size: int
    plaintext_size: int
    signer_key_id: str
    recipients: tuple[Recipient, ...]
    framework: str = ""

    def context(self) -> dict[str, object]:
        """The header fields the wrapped keys are bound to (everything but the recipients)."""
        return {
            "format": FORMAT_NAME,
            "name": self.name,
            "version": self.version,
            "framework": self.framework,
            "created": self.created,
            "aead": AEAD_NAME,
            "chunk_size": self.chunk_size,
            "plaintext_size": self.plaintext_size,
            "signer": {"alg": SIG_ALG, "key_id": self.signer_key_id},
        }

    def to_json(self) -> bytes:
        doc = self.context()
        doc["recipients"] = [
            {"kem": r.kem, "key_id": r.key_id, "wrapped": base64.b64encode(r.wrapped).decode()} for r in self.recipients
        ]
        return _canonical(doc)

    @property
    def num_chunks(self) -> int:
        return max(1, -(-self.plaintext_size // self.chunk_size))

    def describe(self) -> dict[str, object]:
        """A human/JSON summary for `sealgate inspect` (no secrets: wrapped keys are shown by size only)."""
        doc = self.context()
        doc["recipients"] = [
            {"kem": r.kem, "key_id": r.key_id, "wrapped_bytes": len(r.wrapped)} for r in self.recipients
        ]
        doc["chunks"] = self.num_chunks
        return doc


def _canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _info(header: Header, key_id: str) -> bytes:
    return (
        b"sealgate-sealed/1 data key\0"
        + key_id.encode()
        + b"\0"
        + hashlib.sha256(_canonical(header.context())).digest()
    )


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


# --- sealing ------------------------------------------------------------------------------------------
def seal_stream(
    *,
    name: str,
    version: int,
    created: str,
    framework: str,
    plaintext: Iterable[bytes],
    plaintext_size: int,
    recipients: Sequence[RecipientKey],
    signer: ec.EllipticCurvePrivateKey,
    chunk_size: int = DEFAULT_CHUNK,
) -> Iterator[bytes]:
    """Yield a sealed artifact piece by piece; memory stays at about one chunk whatever the model size."""
    check_version(version)
    if not recipients:
        raise ValueError("an artifact needs at least one recipient")
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise ValueError(f"chunk size must be within {MIN_CHUNK}..{MAX_CHUNK}")
    dek = AESGCM.generate_key(bit_length=256)
    draft = Header(
        name, int(version), created, chunk_size, plaintext_size, signer_key_id(signer.public_key()), (), framework
    )
    wrapped = tuple(
        Recipient(r.kem, r.key_id, _SUITES[r.kem].encrypt(dek, r.public, info=_info(draft, r.key_id)))
        for r in recipients
    )
    header = replace(draft, recipients=wrapped)
    header_json = header.to_json()
    prefix = PREFIX.pack(MAGIC, FORMAT_VERSION, len(header_json)) + header_json
    aad = hashlib.sha256(prefix).digest()
    digest = envelope_digest(prefix)
    yield prefix
    aead = AESGCM(dek)
    index, sent = 0, 0
    for chunk in _rechunk(plaintext, chunk_size):
        sent += len(chunk)
        last = sent >= plaintext_size
        if sent > plaintext_size:
            raise ValueError("plaintext is longer than announced")
        frame = FRAME.pack(FINAL if last else DATA, len(chunk) + TAG) + aead.encrypt(_nonce(index, last), chunk, aad)
        digest.update(frame)
        yield frame
        index += 1
    if sent != plaintext_size:
        raise ValueError(f"plaintext is {sent} bytes, {plaintext_size} announced")
    signature = signer.sign(digest.digest(), ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    yield FRAME.pack(SIG, len(signature)) + signature


def _rechunk(pieces: Iterable[bytes], size: int) -> Iterator[bytes]:
    buf = bytearray()
    for piece in pieces:
        if not buf and len(piece) == size:
            yield bytes(piece)
            continue
        buf += piece
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


# --- reading ------------------------------------------------------------------------------------------
def _read_exact(stream: BinaryIO, n: int, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise TamperedArtifact(f"truncated artifact: {what} cut short")
    return data


def read_header(stream: BinaryIO) -> tuple[Header, bytes]:
    """Read and strictly parse the header, needing no key; returns it with its raw prefix bytes."""
    raw = stream.read(PREFIX.size)
    if len(raw) < PREFIX.size or raw[:8] != MAGIC:
        raise UnsupportedFormat("not a sealgate sealed artifact (bad magic)")
    _, fmt, hlen = PREFIX.unpack(raw)
    if fmt != FORMAT_VERSION:
        raise UnsupportedFormat(f"sealed format version {fmt} is not supported (this build reads {FORMAT_VERSION})")
    if hlen > MAX_HEADER:
        raise TamperedArtifact("header length out of bounds")
    header_json = _read_exact(stream, hlen, "header")
    return parse_header_json(header_json), raw + header_json


def parse_header(data: bytes) -> Header:
    """Parse the header at the start of a sealed artifact's bytes (what follows it is ignored), with no key.

    Pure and total: on any input it returns a Header or raises an ArtifactError subclass (UnsupportedFormat
    for foreign or unknown structure, TamperedArtifact for a truncated or malformed header); the fuzz
    harness of the artifact parser drives this function.
    """
    try:
        return read_header(io.BytesIO(bytes(data)))[0]
    except ArtifactError:
        raise
    except Exception as exc:  # a parser bug must still surface as a refusal, never as a crash of the caller
        raise TamperedArtifact(f"header is malformed ({exc.__class__.__name__})") from None


_HEADER_KEYS = frozenset({*Header("", 1, "", MIN_CHUNK, 1, "0" * 16, ()).context(), "recipients"})
_SIGNER_KEYS = frozenset({"alg", "key_id"})
_RECIPIENT_KEYS = frozenset({"kem", "key_id", "wrapped"})


def _check_keys(doc: object, allowed: frozenset[str], where: str) -> None:
    """Refuse fields added beside the known ones, at any level: they would be claims nothing here checks.

    Only a document holding every known field gets this answer; one missing a field (a renamed key, a
    flipped byte) is malformed, which the parser reports as TamperedArtifact.
    """
    if isinstance(doc, dict) and allowed <= doc.keys():
        unknown = set(doc) - allowed
        if unknown:
            raise UnsupportedFormat(
                f"{where} has {len(unknown)} field(s) this build does not read: "
                f"{clip(', '.join(sorted(str(k) for k in unknown)))}"
            )


def parse_header_json(data: bytes) -> Header:
    """Strictly parse a header's canonical JSON: exact types, exact fields at every level, bounded values."""
    try:
        if nesting_depth(data, MAX_HEADER_DEPTH) > MAX_HEADER_DEPTH:  # refused before json recurses into it
            raise ValueError("nested too deep")
        doc = json.loads(data)
        if _canonical(doc) != data:
            raise ValueError("not canonical")
    except (ValueError, TypeError, RecursionError) as exc:
        raise TamperedArtifact(f"header is malformed ({exc.__class__.__name__})") from None
    _check_keys(doc, _HEADER_KEYS, "the header")
    if isinstance(doc, dict):
        _check_keys(doc.get("signer"), _SIGNER_KEYS, "the header's signer")
        entries = doc.get("recipients")
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            _check_keys(entry, _RECIPIENT_KEYS, f"the header's recipient {i}")
    try:
        entries = doc["recipients"]
        if not isinstance(entries, list) or not all(
            isinstance(r, dict) and isinstance(r["kem"], str) and _is_key_id(r["key_id"]) for r in entries
        ):
            raise TypeError("recipients")
        recipients = tuple(
            Recipient(r["kem"], r["key_id"], base64.b64decode(r["wrapped"], validate=True)) for r in entries
        )
        header = Header(
            name=doc["name"],
            version=doc["version"],
            created=doc["created"],
            chunk_size=doc["chunk_size"],
            plaintext_size=doc["plaintext_size"],
            signer_key_id=doc["signer"]["key_id"],
            recipients=recipients,
            framework=doc["framework"],
        )
        ok = (
            doc["format"] == FORMAT_NAME
            and doc["aead"] == AEAD_NAME
            and doc["signer"]["alg"] == SIG_ALG
            and isinstance(header.name, str)
            and isinstance(header.created, str)
            and isinstance(header.framework, str)
            and _is_key_id(header.signer_key_id)
            and type(header.version) is int
            and 1 <= header.version <= MAX_VERSION
            and type(header.chunk_size) is int
            and MIN_CHUNK <= header.chunk_size <= MAX_CHUNK
            and type(header.plaintext_size) is int
            and header.plaintext_size > 0
            and set(doc) == _HEADER_KEYS
            and all(r.kem in _SUITES for r in recipients)
        )
    except (ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
        raise TamperedArtifact(f"header is malformed ({exc.__class__.__name__})") from None
    if not ok:
        raise TamperedArtifact("header is malformed (unexpected field or value)")
    return header


class _Hasher:
    """The envelope digest over pieces fed in order; for large artifacts a worker thread does the hashing.

    blake3 and AES-GCM both release the GIL on large buffers, so hashing the ciphertext in a thread
    overlaps reading and decrypting it. The queue is bounded: a few chunks are in flight at most.
    """

    def __init__(self, first: bytes, threaded: bool) -> None:
        self._digest = envelope_digest(first)
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self._thread = threading.Thread(target=self._run, name="sealgate-hash", daemon=True) if threaded else None
        if self._thread is not None:
            self._thread.start()

    def _run(self) -> None:
        while (piece := self._queue.get()) is not None:
            self._digest.update(piece)

    def update(self, piece: bytes) -> None:
        """Hash `piece` (immutable bytes: the worker may read it later)."""
        if self._thread is None:
            self._digest.update(piece)
        else:
            self._queue.put(piece)

    def close(self) -> None:
        """Stop the worker once everything queued is hashed (idempotent)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def digest(self) -> bytes:
        """The digest of every piece fed."""
        self.close()
        return self._digest.digest()


def _is_key_id(value: object) -> bool:
    """Key ids are 16 lowercase hex digits (keys.raw_key_id, keys.signer_key_id); nothing else is echoed back."""
    return isinstance(value, str) and KEY_ID.fullmatch(value) is not None


def open_stream(
    stream: BinaryIO,
    identities: Sequence[Identity],
    trusted: Mapping[str, ec.EllipticCurvePublicKey],
    max_plaintext: int,
) -> tuple[Header, memoryview]:
    """Authenticate and decrypt a sealed stream into memory; nothing returned unless every check passed.

    `trusted` maps signer key ids to their public keys. Checks, in order of what they report:
    format -> trusted signer -> signature over every byte (TamperedArtifact) -> recipient (NotARecipient)
    -> every chunk's tag, index, and the final flag (TamperedArtifact).
    The plaintext lands in a private anonymous mapping whose pages are committed only as chunks are
    decrypted into it, so a header announcing a huge size costs nothing until that much data arrives.
    """
    header, prefix = read_header(stream)
    signer = trusted.get(header.signer_key_id)
    if signer is None:
        raise UntrustedSigner(f"signed by key {header.signer_key_id}, which is not in the trust store")
    if header.plaintext_size > max_plaintext:
        raise UnsafeArchive(f"announced size {header.plaintext_size} exceeds the limit of {max_plaintext} bytes")
    dek, recipient_error = _unwrap(header, identities)
    aad = hashlib.sha256(prefix).digest()
    digest = _Hasher(prefix, threaded=header.plaintext_size >= HASH_THREAD_MIN)
    try:
        out, signature, chunk_error = _read_frames(stream, header, dek, aad, digest)
        hashed = digest.digest()
    finally:
        digest.close()
    try:
        signer.verify(signature, hashed, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    except InvalidSignature:
        raise TamperedArtifact("the signature does not match the artifact's bytes") from None
    if dek is None or out is None:
        raise recipient_error or NotARecipient("not a recipient")
    if chunk_error is not None:
        raise TamperedArtifact(chunk_error)
    return header, memoryview(out)


def _read_frames(
    stream: BinaryIO, header: Header, dek: bytes | None, aad: bytes, digest: _Hasher
) -> tuple[mmap.mmap | None, bytes, str | None]:
    """Read every frame up to the signature, hashing them and (with a key) decrypting each chunk in place.

    Returns the plaintext buffer (None without a key), the signature, and the first chunk failure.
    Frame types, lengths and count are checked against the header before any payload is read.
    """
    try:
        out = mmap.mmap(-1, header.plaintext_size, flags=mmap.MAP_PRIVATE) if dek is not None else None
    except (OSError, MemoryError):
        raise UnsafeArchive(f"cannot reserve {header.plaintext_size} bytes for the plaintext") from None
    if out is not None and hasattr(mmap, "MADV_HUGEPAGE"):
        out.madvise(mmap.MADV_HUGEPAGE)  # 2 MiB pages: ~500x fewer page faults while filling a large model
    view = memoryview(out) if out is not None else None
    aead = AESGCM(dek) if dek is not None else None
    chunk_error: str | None = None
    index, offset, finished = 0, 0, False
    try:
        while True:
            kind, length = FRAME.unpack(_read_exact(stream, FRAME.size, "frame"))
            if kind == SIG:
                if not finished:
                    raise TamperedArtifact("truncated artifact: the final chunk is missing")
                if length > MAX_SIG:
                    raise TamperedArtifact("signature frame out of bounds")
                signature = _read_exact(stream, length, "signature")
                break
            if finished or kind not in (DATA, FINAL):
                raise TamperedArtifact(f"unexpected frame type {kind} after chunk {index}")
            last = kind == FINAL
            expected = (header.plaintext_size - offset) if last else header.chunk_size
            if not last and offset + expected >= header.plaintext_size:
                raise TamperedArtifact(f"chunk {index} goes past the announced size")
            if length != expected + TAG or expected <= 0 or expected > header.chunk_size:
                raise TamperedArtifact(f"chunk {index} has a wrong length")
            payload = _read_exact(stream, length, f"chunk {index}")
            digest.update(FRAME.pack(kind, length))
            digest.update(payload)
            if aead is not None and view is not None and chunk_error is None:
                try:
                    aead.decrypt_into(_nonce(index, last), payload, aad, view[offset : offset + expected])
                except InvalidTag:
                    chunk_error = f"chunk {index} failed authentication"
            offset += expected
            index += 1
            finished = last
        if stream.read(1):
            raise TamperedArtifact("unexpected bytes after the signature")
    finally:
        if view is not None:
            view.release()
    return out, signature, chunk_error


def _unwrap(header: Header, identities: Sequence[Identity]) -> tuple[bytes | None, Exception | None]:
    ids = {r.key_id for r in header.recipients}
    for ident in identities:
        for r in header.recipients:
            if r.key_id == ident.public.key_id and r.kem == ident.kem:
                try:
                    dek = _SUITES[r.kem].decrypt(r.wrapped, ident.private, info=_info(header, r.key_id))
                except Exception:  # any unwrap failure means the entry was altered
                    return None, TamperedArtifact(f"the data key wrapped for {r.key_id} does not open")
                if len(dek) != 32:
                    return None, TamperedArtifact("the wrapped data key has a wrong length")
                return dek, None
    mine = ", ".join(i.public.key_id for i in identities) or "none given"
    return None, NotARecipient(f"not a recipient: artifact is for {', '.join(sorted(ids))}; identities offered: {mine}")
