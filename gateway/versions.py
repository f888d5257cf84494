"""The one rule for model versions and names, shared by seal, push, the repository, the ledger and the servers.

A version is an integer 1..10**18-1 written with 1 to 18 ASCII digits, so that every stored version also
matches the repository's file pattern and survives a restart; `²`, `①` or `٣` are not digits here. A name
is 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit (it becomes a folder name), so
`seal` refuses a name the gateway would never store.
"""

from __future__ import annotations

import re

from gateway.errors import InvalidInput, clip

MAX_VERSION_DIGITS = 18
MAX_VERSION = 10**MAX_VERSION_DIGITS - 1
VERSION_TEXT = re.compile(rf"[0-9]{{1,{MAX_VERSION_DIGITS}}}")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(name: str) -> str:
    """Return `name` if it is a valid model name, else raise InvalidInput (the name is clipped and escaped)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidInput(
            f"invalid model name '{clip(name)}': use 1-64 characters of A-Z a-z 0-9 . _ - "
            "starting with a letter or digit"
        )
    return name


def check_version(n: int) -> int:
    """Return `n` if it is an int in 1..MAX_VERSION (bool refused), else raise InvalidInput."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_VERSION:
        raise InvalidInput(
            f"invalid model version '{clip(n)}': versions are integers from 1 to {MAX_VERSION} "
            f"({MAX_VERSION_DIGITS} digits at most)"
        )
    return n


def parse_version(text: str, *, field: str = "version") -> int:
    """Parse a client-supplied version string (ASCII digits only, 1..MAX_VERSION); InvalidInput otherwise."""
    if not isinstance(text, str) or not VERSION_TEXT.fullmatch(text) or int(text) < 1:
        raise InvalidInput(
            f"invalid {clip(field)} '{clip(text)}': use 1 to {MAX_VERSION_DIGITS} ASCII digits, a number >= 1"
        )
    return int(text)
