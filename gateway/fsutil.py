"""Crash-safe file writes (temp file in the same folder, fsync, rename, fsync the folder), and the two file
rules around them: the mode a private key may have, and how a write the file system refused reaches a client.

Every write that must survive a crash (keys, certificates, repository artifacts and state) goes through
here, so a reader only ever sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import tempfile
from collections.abc import Iterable
from pathlib import Path

from gateway.errors import ConfigError, SealgateError, StorageFull, Unavailable


def file_stamp(path: Path, what: str = "file") -> tuple[int, int, int]:
    """(mtime_ns, size, inode): changes when a file is rewritten or another is renamed into place.

    ConfigError naming `what` when the file cannot be read; watchers of config files poll with this.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | Iterable[bytes], mode: int = 0o644, force: bool = True) -> None:
    """Write `data` (bytes or an iterable of chunks) to `path` atomically with `mode` from creation on.

    With force=False an existing file is refused (ConfigError) rather than replaced.
    """
    path = Path(path)
    if not force and path.exists():
        raise ConfigError(f"{path} exists; refusing to overwrite (use --force)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data, bytes | bytearray | memoryview):
                fh.write(data)
            else:
                for chunk in data:
                    fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def refuse_existing(paths: list[Path], force: bool) -> None:
    """Raise ConfigError naming the first path that exists, unless `force`; run before writing a set."""
    if force:
        return
    for path in paths:
        if os.path.lexists(path):
            raise ConfigError(f"{path} already exists; refusing to overwrite it (use --force)")


def write_file(path: Path, data: bytes, mode: int = 0o644, force: bool = False) -> Path:
    """Write `data` to `path` atomically with exactly `mode`; refuse an existing file unless `force`.

    The bytes go to a fresh temporary name created O_EXCL with the final mode (so a private key is
    never readable by others, even for an instant), are fsynced, then linked (no-clobber) or renamed
    (force) into place.
    """
    path = Path(path)
    refuse_existing([path], force)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        _install(tmp, path, force)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)
    return path


def _install(tmp: Path, path: Path, force: bool) -> None:
    """Move the finished temporary file into place: rename if forced, else a hard link that fails on clobber."""
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; refusing to overwrite it (use --force)") from None
    except OSError:
        # Filesystems without hard links: check-then-rename (a narrow race, acceptable for dev keys).
        refuse_existing([path], force=False)
        os.replace(tmp, path)


def write_secret(path: Path, data: bytes, force: bool = False) -> Path:
    """Write a secret (private key, token) with mode 0600 from creation on, atomically, no clobber."""
    return write_file(path, data, 0o600, force)


def write_public(path: Path, data: bytes, force: bool = False) -> Path:
    """Write a public file (certificate, public key, JWKS) with mode 0644, atomically, no clobber."""
    return write_file(path, data, 0o644, force)


def write_refused(exc: OSError, what: str) -> SealgateError | OSError:
    """A write the file system refused, typed for the client: no space or quota left (StorageFull), a
    read-only or forbidden place (Unavailable); any other OSError is returned as it is (a server failure)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"{what}: no space left on the repository's file system; nothing was stored")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return Unavailable(f"{what}: the repository cannot be written ({os.strerror(exc.errno)}); nothing was stored")
    return exc


def check_private_mode(path: Path) -> None:
    """Refuse a private key file that every user may read or write (say 0644): keys are 0600.

    Group access stays allowed (a Kubernetes secret mounted 0440 for the gateway's group); checked after
    the key parses, so a file that is no key at all is reported as such.
    """
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None
    if mode & 0o007:
        raise ConfigError(
            f"{path}: a private key readable or writable by every user (mode {mode:04o}); "
            f"run `chmod 600 {path}` (and treat the key as exposed)"
        )


def enter_private_cwd() -> Path:
    """chdir() the process into a new, empty folder (0700, under the temp dir) and return its path.

    Defence in depth for model loading: a relative path a model names (external data, a file op) resolves
    there and reaches nothing. The folder is removed at exit if it is still empty.
    """
    import atexit

    folder = Path(tempfile.mkdtemp(prefix="sealgate-cwd-")).resolve()
    os.chmod(folder, 0o700)
    os.chdir(folder)

    def remove_if_empty() -> None:
        with contextlib.suppress(OSError):
            folder.rmdir()

    atexit.register(remove_if_empty)
    return folder
