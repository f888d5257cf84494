"""Scope policy: `infer:<model>`, `fetch:<model>`, `release:<model>`, `<action>:*` for every model, `admin`.

Exact matches only (no patterns beyond `*` as the whole model part); `admin` allows every action.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Protocol

from gateway.errors import PermissionDenied

ACTIONS = frozenset({"infer", "explain", "fetch", "release", "admin"})  # explain: not implied by infer
ADMIN = "admin"
ALL_MODELS = "*"


class HasScopes(Protocol):
    """Anything carrying granted scopes: verified Claims or a Principal."""

    @property
    def scopes(self) -> Set[str]:
        """The granted scopes."""
        ...


def required_scope(action: str, model: str) -> str:
    """The specific scope an action on a model needs (`admin` for admin actions)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    return ADMIN if action == ADMIN else f"{action}:{model}"


def is_allowed(scopes: Set[str], action: str, model: str) -> bool:
    """Whether `scopes` allow `action` on `model`: admin, the exact scope, or `<action>:*`."""
    needed = required_scope(action, model)
    if ADMIN in scopes or needed in scopes:
        return True
    return action != ADMIN and f"{action}:{ALL_MODELS}" in scopes


def authorize(claims: HasScopes, action: str, model: str) -> None:
    """Raise PermissionDenied ("token lacks scope infer:ctr") unless the scopes allow `action` on `model`."""
    if not is_allowed(claims.scopes, action, model):
        raise PermissionDenied(f"token lacks scope {_printable(required_scope(action, model))}")


def _printable(text: str, limit: int = 160) -> str:
    """Echo a client-chosen model name safely: printable ASCII only, bounded length."""
    clean = "".join(c if 0x20 <= ord(c) < 0x7F else "?" for c in text)
    return clean if len(clean) <= limit else clean[:limit] + "..."
