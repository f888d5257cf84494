"""The calls `import gateway` offers (README "Python API"): seal, open, inspect, sign, verify, a release client,
load_config and serve, each a thin, typed front over the module that does the work.

Only the standard library is imported here: each call imports its layer (cryptography, gRPC, the server) when
it runs, so `import gateway` stays fast and pulls in no transport or framework.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.artifact.envelope import Header
    from gateway.artifact.sealed import OpenedArtifact
    from gateway.config import Config
    from gateway.protos.sealgate.v1 import release_pb2
    from gateway.release.client import ReleaseClient

StrPath = str | os.PathLike[str]
Progress = Callable[[int, int], None]
DEFAULT_ADDRESS = "127.0.0.1:8500"


def _paths(value: StrPath | Sequence[StrPath], what: str) -> list[Path]:
    """One path or several, as Paths (a lone string is one path, not a sequence of characters)."""
    items = [value] if isinstance(value, str | os.PathLike) else list(value)
    if not items:
        raise ConfigError(f"{what}: give at least one key file")
    return [Path(p) for p in items]


# --- artifacts -------------------------------------------------------------------------------------
def seal(
    src: StrPath | Mapping[str, bytes],
    out: StrPath,
    *,
    name: str,
    version: int,
    key: StrPath,
    recipients: StrPath | Sequence[StrPath],
    provenance: Mapping[str, Any] | None = None,
) -> Header:
    """Sign `src` (a model file, a folder, or names -> bytes) with the signing key file `key`, encrypt it to the
    recipient public key files, and write the sealed artifact to `out` atomically; returns its header."""
    from gateway.artifact.keys import load_recipient, load_signer
    from gateway.artifact.sealed import seal_to_file

    return seal_to_file(
        src if isinstance(src, Mapping) else Path(src),
        Path(out),
        name=name,
        version=version,
        signer=load_signer(Path(key)),
        recipients=[load_recipient(p) for p in _paths(recipients, "recipients")],
        provenance=provenance,
    )


def open(
    sealed: StrPath | bytes, *, identities: StrPath | Sequence[StrPath], trust: StrPath | Sequence[StrPath]
) -> OpenedArtifact:
    """Decrypt and verify a sealed artifact in memory with recipient private key files `identities`, accepting
    only the signer public key files `trust`; nothing is written. Raises an ArtifactError on any failure."""
    from gateway.artifact.keys import load_identity, load_trusted
    from gateway.artifact.sealed import TrustStore, open_artifact

    source = sealed if isinstance(sealed, bytes) else Path(sealed)
    identity_keys = [load_identity(p) for p in _paths(identities, "identities")]
    trusted = TrustStore.of([load_trusted(p) for p in _paths(trust, "trust")])
    return open_artifact(source, identity_keys, trusted)


def inspect(sealed: StrPath | bytes) -> Header:
    """A sealed artifact's header, read without any key: UNVERIFIED claims until `open` has checked them."""
    from gateway.artifact.sealed import inspect as read_header

    return read_header(sealed if isinstance(sealed, bytes) else Path(sealed))


def sign(model_dir: StrPath, key: StrPath, *, signature: StrPath | None = None) -> Path:
    """OpenSSF Model Signing of a model folder with the signing key file `key` (as `model_signing sign key`);
    returns the signature's path (default model_dir/model.sig)."""
    from gateway.artifact.signing import sign_directory

    return sign_directory(Path(model_dir), Path(key), Path(signature) if signature is not None else None)


def verify(model_dir: StrPath, public_key: StrPath, *, signature: StrPath | None = None) -> None:
    """Verify a model folder's OpenSSF Model Signing signature with the signer's public key file; raises
    UntrustedSigner or SignatureError, returns None when every file matches."""
    from gateway.artifact.signing import verify_directory

    verify_directory(Path(model_dir), Path(public_key), Path(signature) if signature is not None else None)


# --- configuration and serving ---------------------------------------------------------------------
def load_config(path: StrPath | None = None) -> Config:
    """The gateway's configuration from a TOML file (relative paths from its folder), or the defaults
    (./models, ./certs, the default ports) when `path` is None; ConfigError on any bad key or value."""
    from gateway.config import load_config as load

    return load(Path(path) if path is not None else None)


def serve(config: Config | StrPath | None = None) -> int:
    """Run the gateway in the foreground, as `sealgate serve` does, until SIGTERM or SIGINT; drain, return 0.

    Like the command, it moves the process into an empty private working directory first.
    """
    from gateway.config import Config
    from gateway.server.app import serve as run

    return run(config if isinstance(config, Config) else load_config(config))


# --- the release client ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Pushed:
    """The gateway's answer to a push: the version's state (SERVING, AVAILABLE...) and whether it held
    these exact bytes already."""

    name: str
    version: int
    size: int
    sha256: str
    state: str
    already_stored: bool


@dataclass(frozen=True)
class Fetched:
    """A sealed artifact fetched into `path`, its size and SHA-256 checked."""

    name: str
    version: int
    size: int
    sha256: str
    path: Path


@dataclass(frozen=True)
class VersionInfo:
    """One version of a model on the gateway: state, pin, size, digest, refusal reason, provenance summary."""

    version: int
    state: str
    pinned: bool
    size: int
    sha256: str
    reason: str
    epsilon: float | None
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    """A model on the gateway: the version serving now (0: none), the highest seen, every version."""

    name: str
    serving_version: int
    highest_version_seen: int
    versions: tuple[VersionInfo, ...]


@dataclass(frozen=True)
class RolledBack:
    """A rollback done: the version serving now and the one it replaced."""

    name: str
    version: int
    previous_version: int


def _state(value: int) -> str:
    from gateway.protos.sealgate.v1 import release_pb2 as pb

    return str(pb.VersionStatus.State.Name(value))


def _model_info(model: release_pb2.ModelStatus) -> ModelInfo:
    versions = tuple(
        VersionInfo(
            version=v.version,
            state=_state(v.state),
            pinned=v.pinned,
            size=v.size,
            sha256=v.sha256,
            reason=v.reason,
            epsilon=v.provenance.epsilon if v.provenance.HasField("epsilon") else None,
            metrics=dict(v.provenance.metrics),
        )
        for v in model.versions
    )
    return ModelInfo(model.name, model.serving_version, model.highest_version_seen, versions)


class Client:
    """A connection to one gateway's release service over mutual TLS with a bearer token (see `connect`).

    A refusal raises RemoteError (a SealgateError) whose `code` is the gRPC status. Close it, or use it in a
    `with` block.
    """

    def __init__(self, release: ReleaseClient) -> None:
        """Wrap a connected release client; `connect` builds one."""
        self._release = release

    def push(self, sealed: StrPath, *, store_only: bool = False, progress: Progress | None = None) -> Pushed:
        """Upload a sealed file (scope release:NAME); the gateway verifies it before storing it. `store_only`
        keeps one it cannot open (sealed for other recipients) for fetch only."""
        path = Path(sealed)
        header = inspect(path)
        resp = self._release.push(path, header.name, header.version, progress, store_only=store_only)
        return Pushed(resp.name, resp.version, resp.size, resp.sha256, _state(resp.state), resp.already_stored)

    def fetch(self, name: str, out: StrPath, *, version: int = 0, progress: Progress | None = None) -> Fetched:
        """Download a sealed artifact (scope fetch:NAME) into `out` atomically; version 0: the one serving."""
        meta = self._release.fetch(name, Path(out), version, progress)
        return Fetched(meta.name, meta.version, meta.size, meta.sha256, Path(out))

    def list(self, name: str = "") -> builtins.list[ModelInfo]:
        """The models (or only `name`) the token may see, with every version's state."""
        return [_model_info(m) for m in self._release.list(name).models]

    def rollback(self, name: str, version: int, *, reason: str = "rollback") -> RolledBack:
        """Serve an earlier version again (scope release:NAME or admin); audited with `reason`."""
        resp = self._release.rollback(name, version, reason)
        return RolledBack(resp.name, resp.version, resp.previous_version)

    def close(self) -> None:
        """Close the channel."""
        self._release.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    address: str | None = None,
    *,
    certs: StrPath = "certs",
    token: str | None = None,
    cert: StrPath | None = None,
    key: StrPath | None = None,
    ca: StrPath | None = None,
    timeout_s: float = 600.0,
) -> Client:
    """A release client for the gateway at `address` ($SEALGATE_ADDRESS, else 127.0.0.1:8500), with the token
    `token` ($SEALGATE_TOKEN) and, by default, certs/ca.pem, certs/client.pem and certs/client.key."""
    from gateway.release.client import GatewayTarget, ReleaseClient, token_from_env

    folder = Path(certs)
    target = GatewayTarget(
        address=address or os.environ.get("SEALGATE_ADDRESS") or DEFAULT_ADDRESS,
        ca=Path(ca) if ca is not None else folder / "ca.pem",
        cert=Path(cert) if cert is not None else folder / "client.pem",
        key=Path(key) if key is not None else folder / "client.key",
        token=token_from_env(token),
    )
    return Client(ReleaseClient(target, timeout_s=timeout_s))
