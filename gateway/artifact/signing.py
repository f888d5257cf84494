"""OpenSSF Model Signing (OMS), key method, on disk and in memory, interoperable with the `model_signing` CLI.

Directories are hashed by `model_signing`'s own hashing (exactly as `model_signing sign|verify key` do);
bundles and in-toto statements are built and parsed by its own classes. In-memory verification checks
the DSSE signature against the trust store first, then compares the signed file list and digests with
one hash pass over the given bytes: plaintext models never touch disk.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, Protocol

import blake3
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from model_signing import hashing as ms_hashing
from model_signing import manifest as ms_manifest
from model_signing._hashing import hashing as ms_digest
from model_signing._signing import sign_ec_key, sign_sigstore_pb
from model_signing._signing import signing as ms_signing
from sigstore_models.bundle import v1 as bundle_pb

from gateway.artifact.keys import signer_key_id
from gateway.errors import ConfigError, SignatureError, UntrustedSigner
from gateway.fsutil import atomic_write, check_private_mode

SIGNATURE_NAME = "model.sig"
# What `model_signing` ignores by default besides the signature itself (hashing.Config, ignore_git_paths=True).
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")
# Subject name of in-memory signatures (the CLI uses the directory's name; it is informative only).
MEMORY_MODEL_NAME = "model"
_PARALLEL_MIN_BYTES = 8 << 20


class _Hasher(Protocol):
    """What a hashlib / blake3 object offers."""

    def update(self, data: bytes | memoryview, /) -> object: ...
    def digest(self) -> bytes: ...


# OMS `hash_type` -> (hasher factory, name `model_signing.hashing.Config` takes for it).
_HASHES: dict[str, tuple[Callable[[], _Hasher], Literal["sha256", "blake2", "blake3"]]] = {
    "sha256": (hashlib.sha256, "sha256"),
    "blake2b": (hashlib.blake2b, "blake2"),
    "blake3": (blake3.blake3, "blake3"),
}


@dataclass(frozen=True)
class SignedManifest:
    """What a verified OMS signature says: per-resource (algorithm, hex digest), serialization, ignored paths."""

    resources: dict[str, tuple[str, str]]
    method: str
    hash_type: str
    shard_size: int
    ignore_paths: tuple[str, ...]


# --- keys -----------------------------------------------------------------------------------------
def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """Stable signer id (the envelope's signer key id): see keys.signer_key_id."""
    return signer_key_id(public_key)


def _check_key(public_key: object) -> ec.EllipticCurvePublicKey:
    """Accept only the EC keys OMS's key method supports (P-256, P-384, P-521)."""
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise ConfigError(f"OMS key method needs an ECDSA key, got {type(public_key).__name__}")
    try:
        sign_ec_key._check_supported_ec_key(public_key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return public_key


def _load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load an unencrypted PEM EC private key (SEC1 or PKCS#8), as `model_signing sign key` does."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"cannot load signing key {path}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"signing key {path} is not an ECDSA key")
    _check_key(key.public_key())
    check_private_mode(path)
    return key


def _load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Load a PEM SubjectPublicKeyInfo EC public key."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"cannot load public key {path}: {exc}") from None
    return _check_key(key)


def _pem_hint(public_key: ec.EllipticCurvePublicKey) -> str:
    """The bundle's `publicKey.hint` as model_signing writes it: SHA-256 hex of the PEM SPKI."""
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


class _KeySigner(sign_ec_key.Signer):
    """model_signing's EC key signer, fed a key object instead of a path (same bundle, no key file)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        _check_key(private_key.public_key())
        self._private_key = private_key


# --- signing --------------------------------------------------------------------------------------
def _sign_manifest(manifest: ms_manifest.Manifest, private_key: ec.EllipticCurvePrivateKey) -> bytes:
    """Sigstore bundle JSON of an OMS statement over `manifest`, made by model_signing's own signer."""
    signature = _KeySigner(private_key).sign(ms_signing.Payload(manifest))
    if not isinstance(signature, sign_sigstore_pb.Signature):  # the key signer makes a Sigstore bundle
        raise SignatureError(f"model_signing made a {type(signature).__name__}, not a Sigstore bundle")
    return str(signature.bundle.to_json()).encode("utf-8")


def _ignored_inside(model_dir: Path, paths: Sequence[Path]) -> list[Path]:
    """The paths that lie inside `model_dir`, relative to it (the CLI's `_resolve_ignore_paths`)."""
    root = model_dir.resolve()
    out: list[Path] = []
    for p in paths:
        try:
            out.append(Path(p).resolve().relative_to(root))
        except ValueError:
            continue
    return out


def _directory_hashing(model_dir: Path, signature_path: Path) -> ms_hashing.Config:
    """The CLI's default hashing config: files, SHA-256, git paths and the signature ignored, no symlinks."""
    ignored = _ignored_inside(model_dir, [model_dir / SIGNATURE_NAME, signature_path])
    config = ms_hashing.Config()  # type: ignore[no-untyped-call]  # model_signing leaves __init__ unannotated
    return config.set_ignored_paths(paths=ignored, ignore_git_paths=True).set_allow_symlinks(False)


def _require_dir(model_dir: Path) -> Path:
    """sealgate signs model directories (a single model file goes in a directory of its own)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise SignatureError(f"{model_dir} is not a model directory")
    return model_dir


def sign_directory(model_dir: Path, private_key_path: Path, signature_path: Path | None = None) -> Path:
    """OMS-sign a model directory exactly as `model_signing sign key` does; returns the signature path.

    The default signature is model_dir/model.sig; model.sig and the signature path (when inside) are not hashed.
    """
    model_dir = _require_dir(model_dir)
    signature_path = Path(signature_path) if signature_path is not None else model_dir / SIGNATURE_NAME
    key = _load_private_key(private_key_path)
    try:
        manifest = _directory_hashing(model_dir, signature_path).hash(model_dir)
    except (OSError, ValueError) as exc:
        raise SignatureError(f"cannot hash model directory {model_dir}: {exc}") from None
    if not any(True for _ in manifest.resource_descriptors()):
        raise SignatureError(f"model directory {model_dir} holds no file to sign")
    atomic_write(signature_path, _sign_manifest(manifest, key), 0o644, force=True)
    return signature_path


def _file_serialization() -> ms_manifest.SerializationType:
    """The serialization record the CLI writes for a directory signed with its defaults."""
    ignore = sorted((SIGNATURE_NAME, *GIT_PATHS))
    return ms_manifest._FileSerialization("sha256", False, [Path(p) for p in ignore])


def sign_digests(digests: Mapping[str, str], private_key: ec.EllipticCurvePrivateKey) -> bytes:
    """OMS signature over precomputed per-file SHA-256 hex digests (POSIX relative path -> hex).

    For callers that stream large files from disk; the bundle is the one `sign_files` makes.
    """
    items: list[ms_manifest.ManifestItem] = []
    for name, hexdigest in digests.items():
        path = _check_name(name)
        if _ignored(path, (SIGNATURE_NAME, *GIT_PATHS)):
            continue
        try:
            raw = bytes.fromhex(hexdigest)
        except (TypeError, ValueError):
            raise SignatureError(f"digest of {name} is not hex") from None
        if len(raw) != hashlib.sha256().digest_size:
            raise SignatureError(f"digest of {name} is not a SHA-256 digest")
        items.append(ms_manifest.FileManifestItem(path=path, digest=ms_digest.Digest("sha256", raw)))
    if not items:
        raise SignatureError("nothing to sign: no model file given")
    return _sign_manifest(ms_manifest.Manifest(MEMORY_MODEL_NAME, items, _file_serialization()), private_key)


def sign_files(files: Mapping[str, bytes], private_key: ec.EllipticCurvePrivateKey) -> bytes:
    """OMS signature (Sigstore bundle JSON) over an in-memory model: POSIX relative path -> content.

    Same statement, serialization and ignore rules as `model_signing sign key` over a directory of these files.
    """
    names = {name: _check_name(name) for name in files}
    wanted = [n for n, p in names.items() if not _ignored(p, (SIGNATURE_NAME, *GIT_PATHS))]
    hexes = _hash_all([(n, memoryview(files[n]), "sha256") for n in wanted])
    return sign_digests(hexes, private_key)


# --- verification ---------------------------------------------------------------------------------
def _parse_bundle(signature: bytes) -> bundle_pb.Bundle:
    """Parse Sigstore bundle JSON as model_signing's `Signature.read` does, from bytes."""
    try:
        doc = json.loads(signature)
        material = doc["verificationMaterial"]
        material.setdefault("tlogEntries", [])
        if "publicKey" in material:
            material["publicKey"].setdefault("hint", None)
            for k in ("rawBytes", "keyDetails"):
                material["publicKey"].pop(k, None)
        return bundle_pb.Bundle.from_dict(doc)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SignatureError(f"malformed OMS signature (not a Sigstore bundle): {str(exc).splitlines()[0]}") from None


def _check_dsse(bundle: bundle_pb.Bundle, trusted: Sequence[ec.EllipticCurvePublicKey]) -> ec.EllipticCurvePublicKey:
    """Return the trusted key one of the DSSE signatures verifies with (PAE, ECDSA with the curve's hash)."""
    if bundle.media_type != sign_sigstore_pb._BUNDLE_MEDIA_TYPE:
        raise SignatureError(f"unsupported OMS bundle media type {bundle.media_type!r}")
    envelope = bundle.dsse_envelope
    if envelope is None or not envelope.signatures:
        raise SignatureError("OMS signature holds no DSSE envelope signature")
    if envelope.payload_type != ms_signing._IN_TOTO_JSON_PAYLOAD_TYPE:
        raise SignatureError(f"unexpected DSSE payload type {envelope.payload_type!r}")
    keys = [_check_key(k) for k in trusted]
    if not keys:
        raise UntrustedSigner("no trusted signer key configured")
    pk = bundle.verification_material.public_key
    hint = pk.hint if pk is not None else None
    keys.sort(key=lambda k: _pem_hint(k) != hint)  # the hinted key first; the hint is unsigned, so try all
    pae = sign_sigstore_pb.pae(envelope.payload)
    for key in keys:
        algorithm = ec.ECDSA(sign_ec_key.get_ec_key_hash(key))
        for sig in envelope.signatures:
            try:
                key.verify(sig.sig, pae, algorithm)
            except InvalidSignature:
                continue
            return key
    raise UntrustedSigner(f"OMS signature does not verify with any of {len(keys)} trusted signer key(s)")


def _signed_manifest(payload: bytes) -> SignedManifest:
    """Decode the verified in-toto statement with model_signing's parser; refuse what it would misread."""
    try:
        statement = json.loads(payload)
        if statement["_type"] != ms_signing._IN_TOTO_STATEMENT_TYPE:
            raise ValueError(f"statement type {statement['_type']!r}")
        if statement["predicateType"] != ms_signing._PREDICATE_TYPE:
            raise ValueError(f"predicate type {statement['predicateType']!r} (re-sign with model_signing >= 1.0)")
        manifest = ms_signing.dsse_payload_to_manifest(statement)
        count = len(statement["predicate"]["resources"])
        params = manifest.serialization_type
        method, hash_type = params["method"], params["hash_type"]
        shard_size = int(params.get("shard_size", 0))
        ignore_paths = tuple(str(p) for p in params.get("ignore_paths", ()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SignatureError(f"malformed OMS statement: {exc}") from None
    resources = {d.identifier: (d.digest.algorithm, d.digest.digest_hex) for d in manifest.resource_descriptors()}
    if len(resources) != count:
        raise SignatureError("malformed OMS statement: a file or shard is listed twice")
    if not resources:
        raise SignatureError("OMS signature covers no file")
    if hash_type not in _HASHES or (method == "shards" and (hash_type == "blake3" or shard_size <= 0)):
        raise SignatureError(f"unsupported OMS serialization: {method} with {hash_type}")
    if any(PurePosixPath(p) == PurePosixPath(".") or PurePosixPath(p).is_absolute() for p in ignore_paths):
        raise SignatureError(f"OMS signature ignores the whole model ({ignore_paths})")
    return SignedManifest(resources, method, hash_type, shard_size, ignore_paths)


def _open_signature(
    signature: bytes, trusted: Sequence[ec.EllipticCurvePublicKey]
) -> tuple[ec.EllipticCurvePublicKey, SignedManifest]:
    """Verify the bundle's signer, then decode what it signed."""
    bundle = _parse_bundle(signature)
    key = _check_dsse(bundle, trusted)
    if bundle.dsse_envelope is None:  # _check_dsse refused this already
        raise SignatureError("OMS signature holds no DSSE envelope signature")
    return key, _signed_manifest(bundle.dsse_envelope.payload)


def _mismatch(
    expected: Mapping[str, tuple[str, str]],
    actual: Mapping[str, tuple[str, str]],
    file_of: Callable[[str], str] = lambda key: key,
) -> None:
    """Raise SignatureError naming every extra, missing and changed file (shards are reported by file)."""
    signed_files = {file_of(k) for k in expected}
    given_files = {file_of(k) for k in actual}
    problems = []
    if extra := sorted(given_files - signed_files):
        problems.append("extra (unsigned): " + ", ".join(extra))
    if missing := sorted(signed_files - given_files):
        problems.append("missing: " + ", ".join(missing))
    changed = {file_of(k) for k in expected.keys() ^ actual.keys()} & signed_files & given_files
    changed |= {file_of(k) for k in expected.keys() & actual.keys() if expected[k] != actual[k]}
    if changed:
        problems.append("changed: " + ", ".join(sorted(changed)))
    if problems:
        raise SignatureError("model files do not match the OMS signature: " + "; ".join(problems))


def _shard_file(key: str) -> str:
    """File name of a shard key `path:start:end`."""
    return key.rsplit(":", 2)[0]


def verify_directory(model_dir: Path, public_key_path: Path, signature_path: Path | None = None) -> None:
    """Verify a model directory as `model_signing verify key` does (also accepting sharded signatures).

    Raises UntrustedSigner if the signature does not verify with the key, SignatureError if it is malformed
    or the directory's files differ from what it lists.
    """
    model_dir = _require_dir(model_dir)
    signature_path = Path(signature_path) if signature_path is not None else model_dir / SIGNATURE_NAME
    public_key = _load_public_key(public_key_path)
    try:
        signature = signature_path.read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read OMS signature {signature_path}: {exc.strerror}") from None
    _, signed = _open_signature(signature, [public_key])
    config = _directory_hashing(model_dir, signature_path)
    algorithm = _HASHES[signed.hash_type][1]
    if signed.method == "shards":
        config.use_shard_serialization(hashing_algorithm=algorithm, shard_size=signed.shard_size)
    else:
        config.use_file_serialization(hashing_algorithm=algorithm)
    config.add_ignored_paths(model_path=model_dir, paths=signed.ignore_paths)
    try:
        manifest = config.hash(model_dir)
    except (OSError, ValueError) as exc:
        raise SignatureError(f"cannot hash model directory {model_dir}: {exc}") from None
    actual = {d.identifier: (d.digest.algorithm, d.digest.digest_hex) for d in manifest.resource_descriptors()}
    _mismatch(signed.resources, actual, _shard_file if signed.method == "shards" else lambda k: k)


def _check_name(name: str) -> PurePosixPath:
    """A model file name must be a normalized relative POSIX path (what a directory walk would yield)."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or str(path) != name or any(part in ("..", ".") for part in path.parts):
        raise SignatureError(f"invalid model file name {name!r}")
    return path


def _ignored(path: PurePosixPath, ignore_paths: Sequence[str]) -> bool:
    """Whether `path` is, or lies under, an ignored path (model_signing's `should_ignore`)."""
    return any(path.is_relative_to(p) for p in ignore_paths)


def _digest(data: memoryview, hash_type: str) -> str:
    """Hex digest of a buffer, without copying it."""
    hasher = _HASHES[hash_type][0]()
    hasher.update(data)
    return hasher.digest().hex()


def _hash_all(tasks: Sequence[tuple[str, memoryview, str]]) -> dict[str, str]:
    """Hex digests of (key, bytes, hash type) tasks; in threads when it pays (hashlib releases the GIL)."""
    total = sum(view.nbytes for _, view, _ in tasks)
    workers = min(len(tasks), os.cpu_count() or 1, 8)
    if workers < 2 or total < _PARALLEL_MIN_BYTES:
        return {k: _digest(view, h) for k, view, h in tasks}
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {k: pool.submit(_digest, view, h) for k, view, h in tasks}
        return {k: f.result() for k, f in futures.items()}


def _shards(size: int, shard_size: int) -> Iterator[tuple[int, int]]:
    """model_signing's shard boundaries: [0, s), [s, 2s), ..., last one short; an empty file has none."""
    for start in range(0, size, shard_size):
        yield start, min(start + shard_size, size)


def verify_files(
    files: Mapping[str, bytes | memoryview], signature: bytes, trusted: Sequence[ec.EllipticCurvePublicKey]
) -> ec.EllipticCurvePublicKey:
    """Verify an in-memory model against an OMS signature without touching disk; return the signer's key.

    The DSSE signature must verify with one of `trusted` (else UntrustedSigner); then the signed file list
    and digests must equal `files` (else SignatureError naming the files). Paths the signature ignores
    (model.sig, git files) are skipped, as the CLI skips them.
    """
    key, signed = _open_signature(signature, trusted)
    ignore = (SIGNATURE_NAME, *GIT_PATHS, *signed.ignore_paths)
    views = {n: memoryview(files[n]) for n in files if not _ignored(_check_name(n), ignore)}
    if signed.method == "shards":
        algorithm = f"{signed.hash_type}-sharded-{signed.shard_size}"
        spans = {n: list(_shards(v.nbytes, signed.shard_size)) for n, v in views.items()}
        tasks = [(f"{n}:{a}:{b}", views[n][a:b], signed.hash_type) for n, ab in spans.items() for a, b in ab]
        file_of: Callable[[str], str] = _shard_file
    else:
        algorithm = signed.hash_type
        tasks = [(n, v, signed.hash_type) for n, v in views.items()]
        file_of = str
    # Names (and shard boundaries, i.e. sizes) first: a mismatch fails before any hashing.
    _mismatch(signed.resources, {k: signed.resources.get(k, ("", "")) for k, _, _ in tasks}, file_of)
    actual = {k: (algorithm, hexdigest) for k, hexdigest in _hash_all(tasks).items()}
    _mismatch(signed.resources, actual, file_of)
    return key


__all__ = [
    "SIGNATURE_NAME",
    "key_id",
    "sign_digests",
    "sign_directory",
    "sign_files",
    "verify_directory",
    "verify_files",
]
