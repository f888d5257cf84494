"""What `sealgate inspect` prints: a sealed artifact's header claims, marked unverified, with hostile text defused.

The header is read without any key, so nothing in it is authenticated: a forged file can claim any name,
signer or date. The rendering says so in its first field, and every string taken from the header has its
control, ANSI escape, bidirectional-override and other invisible characters written as escapes, so a
name cannot repaint the terminal, hide text or reorder what the operator reads.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from gateway.artifact.envelope import Header

UNVERIFIED = "UNVERIFIED (read without a key)"
NOTE = (
    "these are the header's claims; only opening the artifact with a recipient key and a trusted signer "
    "(`sealgate unseal`, or the gateway) authenticates them"
)
MAX_TEXT = 256
# categories written as escapes: controls, format characters (bidi overrides and isolates, LRM/RLM,
# zero-width), line/paragraph separators, surrogates, private use and unassigned code points
_HOSTILE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def safe_text(text: object, limit: int = MAX_TEXT) -> str:
    """`text` with every hostile character (and the backslash, so escapes stay unambiguous) escaped, cut to `limit`."""
    raw = text if isinstance(text, str) else str(text)
    out = []
    for ch in raw[:limit]:
        if ch == "\\":
            out.append("\\\\")
        elif unicodedata.category(ch) in _HOSTILE:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out) + ("…" if len(raw) > limit else "")


def _defuse(value: Any) -> Any:
    """Escape every string in a JSON-ready value (keys included)."""
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {safe_text(k): _defuse(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_defuse(v) for v in value]
    return value


def describe_unverified(header: Header) -> dict[str, Any]:
    """The header as `inspect` shows it: the UNVERIFIED mark first, then every claim with its text defused."""
    return {"verified": False, "status": UNVERIFIED, "note": NOTE, **_defuse(header.describe())}


def render_header(header: Header) -> str:
    """`describe_unverified` as indented JSON, pure ASCII (whatever survives escaping is \\u-escaped again)."""
    return json.dumps(describe_unverified(header), indent=2, ensure_ascii=True)
