"""Opening and verifying one sealed file, and loading what it holds: the manager's only door to artifacts.

`Verifier.verify` reads a file once: the header, the signer's signature over every byte, the recipients
(an artifact for other recipients is authentic but unopenable: `opened` is None), hashing the whole file
in the same pass. `Verifier.load` hands the opened model to its backend (which applies the model policy)
and smoke-tests it; `match_header` refuses a header that names another model or version than expected.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from gateway.artifact.envelope import Header
from gateway.artifact.keys import Identity
from gateway.artifact.sealed import OpenedArtifact, TrustStore, inspect, open_artifact
from gateway.backends import BackendConfig, LoadedModel, load_model
from gateway.errors import MetadataMismatch, NotARecipient, NotServable, SealgateError
from gateway.serving.smoke import smoke_test
from gateway.serving.status import ServedModel, kept_files

_READ_BLOCK = 1 << 20

Stamp = tuple[int, int, int]
StepHook = Callable[[str, str, int], AbstractContextManager[object]]  # (step, model, version): a span around it


def untraced(step: str, name: str, version: int) -> AbstractContextManager[object]:
    """The release-step hook while tracing is off: nothing around the step."""
    return nullcontext()


def one_line(exc: BaseException) -> str:
    """An exception as one short, client-safe line (sealgate errors keep their message, others their type)."""
    lines = str(exc).strip().splitlines()
    text = lines[0][:300] if lines else ""
    if isinstance(exc, SealgateError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _HashingReader:
    """A read-only file wrapper that hashes and counts every byte read through it."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        """Read from the file, hashing and counting what was read."""
        data = self._fh.read(n)
        self._hash.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Hash whatever the reader has not consumed, so the digest covers the whole file."""
        while self.read(_READ_BLOCK):
            pass

    def hexdigest(self) -> str:
        """The SHA-256 of every byte read so far."""
        return self._hash.hexdigest()


@dataclass
class Verified:
    """What verifying one sealed file gave: the opened model (None if the gateway is no recipient) and facts."""

    opened: OpenedArtifact | None
    header: Header
    sha256: str
    size: int
    stamp: Stamp


class Verifier:
    """Verifies sealed files against the gateway's identities and trust store, and loads opened models."""

    def __init__(self, identities: Sequence[Identity], trust: TrustStore, backend_config: BackendConfig) -> None:
        """Keep the keys, the trusted signers and the backend settings every verification uses."""
        self.identities = list(identities)
        self.trust = trust
        self.backend_config = backend_config
        self.wrap: Callable[[str, LoadedModel], LoadedModel] | None = None  # e.g. a dynamic batcher, after smoke
        self.step: StepHook = untraced  # verify / smoke test / swap spans when [tracing] is on (server/tracing.py)

    def verify(self, path: Path) -> Verified:
        """Open and verify a sealed file in memory, hashing it in the same pass; NotARecipient is not a failure."""
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            header = inspect(cast(BinaryIO, fh))
            fh.seek(0)
            reader = _HashingReader(fh)
            try:
                opened: OpenedArtifact | None = open_artifact(cast(BinaryIO, reader), self.identities, self.trust)
            except NotARecipient:
                opened = None  # raised only after the signer's signature over every byte verified
            reader.drain()
        return Verified(opened, header, reader.hexdigest(), reader.size, (st.st_ino, st.st_size, st.st_mtime_ns))

    def verify_stored(self, path: Path, name: str, version: int) -> OpenedArtifact:
        """Re-open a stored version for loading: verified, the header matching its place, addressed to the gateway."""
        with self.step("verify", name, version):
            checked = self.verify(path)
        match_header(checked.header, name, version, "its place in the repository")
        if checked.opened is None:
            raise NotARecipient("the gateway is no longer among the artifact's recipients")
        return checked.opened

    def not_servable(self, header: Header) -> NotServable:
        """The refusal of a plain push that the gateway cannot open, naming both sides' keys."""
        return NotServable(
            "sealed for other recipients; push with store_only to keep it for fetch "
            f"(the gateway is {', '.join(i.public.key_id for i in self.identities) or 'no recipient'}, "
            f"the artifact is for {', '.join(r.key_id for r in header.recipients)})"
        )

    def load(self, name: str, version: int, opened: OpenedArtifact) -> ServedModel:
        """Load an opened model with its backend and smoke-test it; the model is closed again on failure."""
        model = load_model(opened.model_files, self.backend_config, label=f"{name}:{version}")
        try:
            with self.step("smoke test", name, version):
                smoke_test(model, opened.provenance)
        except BaseException:
            model.close()
            raise
        if self.wrap is not None:
            model = self.wrap(name, model)
        return ServedModel(name, version, model, dict(opened.provenance), time.time(), kept_files(opened.model_files))


def match_header(header: Header, name: str, version: int, where: str) -> None:
    """Refuse an artifact whose authenticated header names another model or version than expected."""
    if header.name != name or header.version != version:
        raise MetadataMismatch(
            f"the artifact's header says {header.name!r} version {header.version}, "
            f"but {where} says {name!r} version {version}"
        )


def read_header(path: Path) -> Header:
    """The unauthenticated header of a sealed file (to refuse an obviously wrong push before verifying it)."""
    with open(path, "rb") as fh:
        return inspect(cast(BinaryIO, fh))


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_READ_BLOCK):
            h.update(block)
    return h.hexdigest()


def stamp_of(path: Path) -> Stamp | None:
    """(inode, size, mtime) of a file, to notice a replaced file; None if it is gone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
