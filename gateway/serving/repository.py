"""The model repository on disk: `root/<name>/<version>.sealed` files, written crash-safe.

Only complete artifacts ever carry a `<version>.sealed` name: every file lands through a temporary
file in the repository, fsynced, renamed (hard-linked, so an existing version is never clobbered) and
the folder fsynced. Temporary files (`.*.tmp`) are invisible to `scan()`, and those a crash left behind
are removed the first time the repository is scanned. The anti-rollback ledger beside the model folders
(`.sealgate-state.json`) is `gateway.serving.ledger`'s.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from gateway.errors import ConfigError, RollbackRefused
from gateway.fsutil import atomic_write, fsync_dir, write_refused
from gateway.versions import MAX_VERSION_DIGITS
from gateway.versions import NAME_PATTERN as NAME_PATTERN
from gateway.versions import check_name as check_name
from gateway.versions import check_version as check_version

log = logging.getLogger("sealgate.serving.repository")

VERSION_FILE = re.compile(rf"([1-9][0-9]{{0,{MAX_VERSION_DIGITS - 1}}})\.sealed")  # the one version rule
SUFFIX = ".sealed"
_COPY_BLOCK = 1 << 20


def is_temp_name(filename: str) -> bool:
    """True for the temporary files of atomic writes and incoming pushes (`.*.tmp`)."""
    return filename.startswith(".") and filename.endswith(".tmp")


class Repository:
    """Sealed model files under `root`, one folder per model name."""

    def __init__(self, root: Path, create: bool = True) -> None:
        """Open (and with `create`, make) the repository folder; nothing is scanned or cleaned yet."""
        self.root = Path(root)
        if create and not self.root.is_dir() and not self.root.exists():
            self.root.mkdir(parents=True, exist_ok=True)
        if not self.root.is_dir():
            raise ConfigError(f"model repository {self.root} is not a folder")
        self._opened_at = time.time()
        self._cleaned = False

    # --- layout ---------------------------------------------------------------------------------
    def path(self, name: str, version: int) -> Path:
        """Where version `version` of model `name` is (or would be) stored."""
        return self.root / check_name(name) / f"{check_version(version)}{SUFFIX}"

    def scan(self) -> dict[str, dict[int, Path]]:
        """Every stored artifact as {name: {version: path}}; temp files and foreign names are ignored.

        The first scan also removes temporary files older than this Repository object: leftovers of
        a crash, never a transfer that this process has started since.
        """
        if not self._cleaned:
            self.clean_stale(before=self._opened_at)
            self._cleaned = True
        found: dict[str, dict[int, Path]] = {}
        for folder in self._model_folders():
            versions: dict[int, Path] = {}
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                for entry in os.scandir(folder):
                    match = VERSION_FILE.fullmatch(entry.name)
                    if match and entry.is_file():
                        versions[int(match.group(1))] = Path(entry.path)
            if versions:
                found[folder.name] = dict(sorted(versions.items()))
        return found

    def _model_folders(self) -> list[Path]:
        folders = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if NAME_PATTERN.fullmatch(entry.name) and entry.is_dir():
                folders.append(Path(entry.path))
        return folders

    def clean_stale(self, before: float | None = None) -> list[Path]:
        """Delete temp files (`.*.tmp`) in the root and model folders, only those older than `before` if given."""
        removed: list[Path] = []
        for folder in (self.root, *self._model_folders()):
            gone_here = False
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(folder):
                    if not (is_temp_name(entry.name) and entry.is_file(follow_symlinks=False)):
                        continue
                    try:
                        if before is not None and entry.stat(follow_symlinks=False).st_mtime >= before:
                            continue
                        os.unlink(entry.path)
                    except FileNotFoundError:
                        continue
                    removed.append(Path(entry.path))
                    gone_here = True
            if gone_here:
                fsync_dir(folder)
        for path in removed:
            log.info("removed a temporary file left by an interrupted write: %s", path)
        return removed

    # --- storing --------------------------------------------------------------------------------
    def new_temp(self) -> Path:
        """Create an empty private temp file in the repository root, for receiving a push into.

        It is invisible to scan(); `store()` renames it into place, `discard()` removes it, and a
        crash leaves it to the next start's clean-up.
        """
        fd, name = tempfile.mkstemp(prefix=".incoming.", suffix=".tmp", dir=self.root)
        os.close(fd)
        return Path(name)

    def discard(self, path: Path) -> None:
        """Remove a temp file (a refused or broken transfer), if it is still there."""
        Path(path).unlink(missing_ok=True)

    def store(self, name: str, version: int, src: Path | bytes | Iterable[bytes]) -> Path:
        """Store a complete artifact as `<name>/<version>.sealed`, crash-safe; an existing version is refused.

        `src` is a file already received into the repository (moved into place: fsync, link, unlink,
        fsync the folders), a file elsewhere (copied), bytes, or an iterable of chunks. Refusal
        (RollbackRefused) or failure leaves nothing behind in the model's folder.
        """
        target = self.path(name, version)
        folder = target.parent
        if not folder.is_dir():
            if folder.exists() or folder.is_symlink():  # a file (or dangling link) dropped in by hand
                raise ConfigError(f"cannot store model {name!r}: its place in the repository is not a folder")
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fsync_dir(self.root)
            except OSError as exc:
                raise write_refused(exc, f"model {name!r}") from None
        if target.exists():
            raise RollbackRefused(f"model {name!r} version {version} is already stored")
        try:
            if isinstance(src, str | Path):
                src = Path(src)
                if self._inside(src):
                    self._move_into_place(src, target)
                else:
                    atomic_write(target, _file_chunks(src), 0o644, force=False)
            else:
                atomic_write(target, src, 0o644, force=False)
        except OSError as exc:  # a full or read-only file system: typed for the client (fsutil.write_refused)
            raise write_refused(exc, f"model {name!r} version {version}") from None
        return target

    def _inside(self, path: Path) -> bool:
        resolved = path.resolve()
        return resolved.parent == self.root.resolve() or resolved.parent.parent == self.root.resolve()

    def _move_into_place(self, src: Path, target: Path) -> None:
        """fsync `src`, then link it to `target` (fails if taken), unlink it and fsync both folders."""
        with open(src, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(src, 0o644)
        try:
            os.link(src, target)
        except FileExistsError:
            raise RollbackRefused(f"version file {target.name} of {target.parent.name!r} is already stored") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            os.replace(src, target)
        src.unlink(missing_ok=True)
        fsync_dir(target.parent)
        if src.parent.resolve() != target.parent.resolve():
            fsync_dir(src.parent)

    def remove(self, name: str, version: int) -> None:
        """Delete a stored version (undoing a store whose follow-up failed), durably."""
        target = self.path(name, version)
        target.unlink(missing_ok=True)
        fsync_dir(target.parent)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while block := fh.read(_COPY_BLOCK):
            yield block
