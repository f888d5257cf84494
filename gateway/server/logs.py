"""The server log (`[log]`): plain text, or one JSON object per line for a log collector.

JSON lines use the audit log's field names where they overlap (`time` in the same RFC 3339 UTC form,
`method`, `model`, `version`, `status`, `reason`, `subject`, `identity` when a record carries them as
`extra=`), plus `level`, `logger`, `message`, `error` and `traceback` for an exception, and `trace_id` /
`span_id` while a traced call is current (to find a log line's trace). Messages and tracebacks go
through the audit log's redaction: anything token- or key-like becomes "[redacted]".
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from gateway.auth.audit import _SECRETISH, REDACTED
from gateway.config import LogConfig

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# fields a record may carry (logging's `extra=`) that keep their audit-log name in a JSON line
AUDIT_FIELDS = ("subject", "identity", "method", "model", "version", "status", "latency_ms", "reason")
MAX_MESSAGE_CHARS = 4096


def rfc3339(now: float) -> str:
    """A UTC time as the audit log writes it: 2026-11-27T10:00:00.123Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


def redact(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` with anything token- or key-like redacted, cut at `limit` characters."""
    text = _SECRETISH.sub(REDACTED, text[: 4 * limit])
    return text if len(text) <= limit else text[:limit] + "..."


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages and tracebacks are escaped)."""

    def __init__(self, worker: int | None = None) -> None:
        """`worker`: the front-end worker's index under `[server] workers`, written as a `worker` field."""
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line (without the newline the handler adds)."""
        doc: dict[str, Any] = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if self.worker is not None:
            doc["worker"] = self.worker
        for name in AUDIT_FIELDS:
            value = record.__dict__.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                doc[name] = value
            elif value is not None:
                doc[name] = redact(str(value), 256)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            doc["error"] = redact(f"{type(exc).__name__}: {exc}", 512)
            doc["traceback"] = redact(self.formatException(record.exc_info), 16 * MAX_MESSAGE_CHARS)
        doc.update(_trace_ids())
        return json.dumps(doc, ensure_ascii=True, separators=(",", ":"))


def _trace_ids() -> dict[str, str]:
    """The current span's trace and span ids (hex, as OpenTelemetry writes them), if one is recording."""
    tracing = sys.modules.get("opentelemetry.trace")
    if tracing is None:
        return {}
    span = tracing.get_current_span()
    if not span.is_recording():
        return {}
    ctx = span.get_span_context()
    return {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}


def formatter(config: LogConfig, worker: int | None = None) -> logging.Formatter:
    """The formatter `[log] format` names (naming the front-end `worker`, if one)."""
    if config.format == "json":
        return JsonFormatter(worker)
    if worker is None:
        return logging.Formatter(TEXT_FORMAT)
    return logging.Formatter(TEXT_FORMAT.replace("%(name)s", f"worker-{worker} %(name)s"))


def configure(config: LogConfig, stream: TextIO | None = None, worker: int | None = None) -> None:
    """Send the root logger to `stream` (standard error) at `[log] level`, as `[log] format` says; a
    front-end worker of `[server] workers` passes its index (`worker-N` in text, a `worker` field in JSON).

    This is logging.basicConfig: a process whose root logger already has handlers keeps its logging as
    it is, so an embedding application's logging stays its own.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(config, worker))
    logging.basicConfig(level=LEVELS[config.level], handlers=[handler])


def announce(config: LogConfig, text: str, stream: TextIO | None = None) -> None:
    """Print the start-up banner whatever the level: as it is in text mode, as a JSON line in json mode."""
    out = stream if stream is not None else sys.stderr
    if config.format == "json":
        record = logging.LogRecord("sealgate.server", logging.INFO, __file__, 0, text, None, None)
        text = JsonFormatter().format(record)
    print(text, file=out, flush=True)
