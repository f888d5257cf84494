"""Which scope strings the gateway can ever grant, checked when a token is minted.

`gateway.auth.policy` decides what a scope allows; this module refuses, before a token is signed, every
scope that policy would never match: a bare `*`, an unknown action, `admin:<model>`, a malformed or
impossible model name. What each valid scope grants:

- `infer:<model>`: inference on that model (gRPC ModelInfer/ModelStreamInfer/metadata, REST predict/status);
- `explain:<model>`: explanations of its answers (sealgate.v1.Explain, REST `:explain`); `infer` does not imply it;
- `fetch:<model>`: download its sealed artifact (Release.Fetch);
- `release:<model>`: push a new version or roll back (Release.Push, Release.Rollback);
- `<action>:*`: that action on every model (`infer:*`, `fetch:*`, `release:*`);
- `admin`: every action on every model.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.auth.policy import ACTIONS, ADMIN, ALL_MODELS
from gateway.errors import ConfigError, clip

MODEL_ACTIONS = tuple(sorted(ACTIONS - {ADMIN}))


def check_scope(scope: str) -> str:
    """Return `scope` unchanged if the gateway could grant it, else raise ConfigError saying why."""
    if scope == ADMIN:
        return scope
    action, sep, model = scope.partition(":")
    forms = f"use {', '.join(f'{a}:<model>' for a in MODEL_ACTIONS)}, <action>:*, or admin"
    if not sep:
        hint = " (a bare * grants nothing)" if scope == ALL_MODELS else ""
        raise ConfigError(f"scope {clip(scope)!r} is not one the gateway grants{hint}: {forms}")
    if action not in MODEL_ACTIONS:
        raise ConfigError(f"scope {clip(scope)!r} names an unknown action {clip(action)!r}: {forms}")
    from gateway.serving.repository import NAME_PATTERN  # the repository's own rule; imported late: no cycle

    if model != ALL_MODELS and not NAME_PATTERN.fullmatch(model):
        raise ConfigError(
            f"scope {clip(scope)!r} names no possible model: a model name is 1-64 of A-Z a-z 0-9 . _ - "
            f"starting with a letter or digit, or * for every model"
        )
    return scope


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """Every scope checked with `check_scope`, in order; at least one is required."""
    checked = [check_scope(s) for s in scopes]
    if not checked:
        raise ConfigError("a token needs at least one scope")
    return checked
