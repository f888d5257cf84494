"""A small ctypes binding of Linux Landlock: a process takes away its own file-system and network access.

`restrict()` applies one ruleset that handles every access right the kernel's ABI knows and grants back
only read access below the given paths (none: nothing at all), plus, from ABI 6, the IPC scopes (abstract
unix sockets and signals outside the process's own domain). Rulesets stack: a later call narrows further.
Only x86_64 and aarch64 syscall numbers are known; elsewhere `abi_version()` says 0 (no Landlock).
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Iterable

_SYSCALLS = {  # create_ruleset, add_rule, restrict_self: the same numbers on both (the generic table)
    "x86_64": (444, 445, 446),
    "aarch64": (444, 445, 446),
}
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38

# file-system rights by the ABI that introduced them
_FS_V1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
_FS_V2 = 1 << 13  # REFER
_FS_V3 = 1 << 14  # TRUNCATE
_FS_V5 = 1 << 15  # IOCTL_DEV
_READ_FILE = 1 << 2
_READ_DIR = 1 << 3
_EXECUTE = 1 << 0
_NET_ALL = (1 << 0) | (1 << 1)  # BIND_TCP, CONNECT_TCP (ABI 4)
_SCOPE_ALL = (1 << 0) | (1 << 1)  # ABSTRACT_UNIX_SOCKET, SIGNAL (ABI 6)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the kernel's struct is packed
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class LandlockError(OSError):
    """Landlock could not be applied (the kernel refused a step)."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _numbers() -> tuple[int, int, int] | None:
    return _SYSCALLS.get(platform.machine())


def abi_version() -> int:
    """The kernel's Landlock ABI version, 0 where Landlock is absent, disabled or unknown on this machine."""
    numbers = _numbers()
    if numbers is None:
        return 0
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(
        ctypes.c_long(numbers[0]), None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION)
    )
    return int(version) if version > 0 else 0


def _fs_rights(abi: int) -> int:
    rights = _FS_V1
    if abi >= 2:
        rights |= _FS_V2
    if abi >= 3:
        rights |= _FS_V3
    if abi >= 5:
        rights |= _FS_V5
    return rights


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise LandlockError(err, f"landlock {what}: {os.strerror(err)}")
    return result


def no_new_privs() -> None:
    """Set PR_SET_NO_NEW_PRIVS (required by landlock_restrict_self for an unprivileged process)."""
    libc = _libc()
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def restrict(readable: Iterable[str] = ()) -> int:
    """Apply a ruleset to this thread's process (call before starting threads); return the ABI used.

    Every file-system right is handled and denied except reading (and listing) below `readable`; TCP bind
    and connect are denied (ABI >= 4); abstract unix sockets and signals are scoped (ABI >= 6).
    Raises LandlockError where Landlock is absent.
    """
    numbers = _numbers()
    abi = abi_version()
    if numbers is None or abi <= 0:
        raise LandlockError(0, "Landlock is not available on this kernel")
    create, add_rule, restrict_self = numbers
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    attr = _RulesetAttr(_fs_rights(abi), _NET_ALL if abi >= 4 else 0, _SCOPE_ALL if abi >= 6 else 0)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = _check(
        libc.syscall(ctypes.c_long(create), ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)),
        "create_ruleset",
    )
    try:
        for path in readable:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                allowed = _READ_FILE | _READ_DIR if os.path.isdir(path) else _READ_FILE
                rule = _PathBeneathAttr(allowed, fd)
                _check(
                    libc.syscall(
                        ctypes.c_long(add_rule),
                        ctypes.c_int(ruleset),
                        ctypes.c_int(_RULE_PATH_BENEATH),
                        ctypes.byref(rule),
                        ctypes.c_uint32(0),
                    ),
                    f"add_rule({path})",
                )
            finally:
                os.close(fd)
        no_new_privs()
        _check(libc.syscall(ctypes.c_long(restrict_self), ctypes.c_int(ruleset), ctypes.c_uint32(0)), "restrict_self")
    finally:
        os.close(ruleset)
    return abi
