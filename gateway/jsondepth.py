"""How deeply a JSON document nests, found without parsing it: `json` recurses per level, so a deep document
must be refused before it reaches the parser (a RecursionError near the interpreter's limit is not a safe
refusal: it can surface again in whatever runs next). No third-party imports, for the offline paths.
"""

from __future__ import annotations

import re

_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def nesting_depth(data: bytes, limit: int | None = None) -> int:
    """The deepest nesting of [ and { in `data`, brackets inside strings not counted; with `limit`, it stops
    counting (and returns limit + 1) as soon as the document nests deeper than that."""
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if limit is not None and deepest > limit:
                    return deepest
        else:
            depth -= 1
    return deepest
