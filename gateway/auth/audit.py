"""The audit log: one JSON line per call with whitelisted fields only, never a token or a tensor.

Thread-safe. `audit_line` formats (one json.dumps); `AuditLog.write` appends a batch of lines in one write,
which is how the gateway's CallRecorder uses it off the request path.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import grpc

FIELDS = ("time", "subject", "identity", "method", "model", "version", "status", "latency_ms", "reason")
MAX_FIELD_CHARS = 256
REDACTED = "[redacted]"
_STATUS_NAMES = frozenset(code.name for code in grpc.StatusCode)
# What a credential or payload looks like: a JWS/JWT (base64url of '{"' starts "eyJ"), a bearer
# header, or a long unbroken base64 run (keys, tensor bytes).
_SECRETISH = re.compile(
    r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_.-]*"  # a JWS / JWT
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/-]{16,}=*"  # an Authorization header value
    r"|[A-Za-z0-9+/=_-]{96,}"  # key material or encoded tensor bytes
)


class AuditLog:
    """Appends audit records to a file (created 0600) or a text stream (default stderr)."""

    def __init__(self, path: Path | None = None, stream: TextIO | None = None) -> None:
        """Open `path` for appending (line-buffered) or write to `stream`, else to stderr."""
        self._lock = threading.Lock()
        self._owned = path is not None
        if path is not None:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            self._out: TextIO = os.fdopen(fd, "a", buffering=1, encoding="utf-8")
        else:
            self._out = stream if stream is not None else sys.stderr
        self._path = path

    def record(self, **fields: Any) -> None:
        """Write one line for one finished call now; `fields` are audit_line's (unknown ones: TypeError)."""
        self.write(audit_line(**fields))

    def write(self, lines: str) -> None:
        """Append already formatted lines (from `audit_line`) in one write, and flush them."""
        if not lines:
            return
        with self._lock:
            self._out.write(lines)
            self._out.flush()

    def reopen(self) -> None:
        """Reopen the file after log rotation (no-op for streams)."""
        if self._path is None:
            return
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        new = os.fdopen(fd, "a", buffering=1, encoding="utf-8")
        with self._lock:
            old, self._out = self._out, new
        old.close()

    def close(self) -> None:
        """Close the file if this log opened it."""
        with self._lock:
            if self._owned and not self._out.closed:
                self._out.close()

    def __enter__(self) -> AuditLog:
        """Use as a context manager that closes the file."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close on exit."""
        self.close()


def audit_line(
    *,
    subject: str | None,
    identity: str | None,
    method: str,
    model: str | None,
    version: str | int | None,
    status: grpc.StatusCode | str,
    latency_ms: float,
    reason: str | None = None,
    at: float | None = None,
) -> str:
    """One JSON line for one finished call at `at` (default now); values truncated, anything token-like redacted.

    The who-and-what part repeats from call to call, so its JSON is cached; the line is byte for byte what
    json.dumps of the whole record gives.
    """
    try:
        who = _who(subject, identity, method, model, version)
    except TypeError:  # unhashable: a tensor or container where a name belongs (redacted by _text)
        who = _who.__wrapped__(subject, identity, method, model, version)
    line = (
        f'{{"time":"{_rfc3339(time.time() if at is None else at)}",{who},'
        f'"status":"{_status(status)}","latency_ms":{_dumps(_number(latency_ms))}'
    )
    if reason is not None:
        line += f',"reason":{_dumps(_text(reason))}'
    return line + "}\n"


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=True)


@functools.lru_cache(maxsize=4096, typed=True)  # typed: True and 1 must not share an entry
def _who(subject: object, identity: object, method: object, model: object, version: object) -> str:
    """The JSON members subject..version of an audit line, without braces."""
    entry = {
        "subject": _text(subject),
        "identity": _text(identity),
        "method": _text(method),
        "model": _text(model),
        "version": _text(version),
    }
    return json.dumps(entry, ensure_ascii=True, separators=(",", ":"))[1:-1]


_SECOND: list[Any] = [-1, ""]


def _rfc3339(now: float) -> str:
    """A UTC time as RFC 3339 with milliseconds, e.g. 2026-11-27T10:00:00.123Z (strftime once a second)."""
    second = int(now)
    if _SECOND[0] != second:
        _SECOND[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_SECOND[1]}.{int(now * 1000) % 1000:03d}Z"


_PLAIN = re.compile(r"[A-Za-z0-9:._/-]{0,40}")


def _text(value: object) -> str | None:
    """A short, token-free string for a scalar; anything else (tensors, bytes, containers) is redacted."""
    if value is None:
        return None
    if type(value) is str and _PLAIN.fullmatch(value):  # short plain names: nothing to redact or cut
        return value
    if isinstance(value, bool) or not isinstance(value, str | int):
        return REDACTED
    text = _SECRETISH.sub(REDACTED, str(value)[: 16 * MAX_FIELD_CHARS])
    return text if len(text) <= MAX_FIELD_CHARS else text[:MAX_FIELD_CHARS] + "..."


def _status(status: object) -> str:
    """The gRPC status code name; anything unrecognised becomes UNKNOWN."""
    if isinstance(status, grpc.StatusCode):
        return str(status.name)
    if isinstance(status, str) and status.upper() in _STATUS_NAMES:
        return status.upper()
    return "UNKNOWN"


def _number(value: object) -> float | None:
    """Latency rounded to microseconds; None when not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return round(float(value), 3)
