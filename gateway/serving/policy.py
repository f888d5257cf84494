"""Which versions of a model serve: TF Serving's version policies, latest-N or a specific list.

A policy only chooses among versions that are servable (verified, openable by the gateway, not
blocked by anti-rollback); a pinned rollback version is served in addition and becomes the default.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.errors import ConfigError

LATEST = "latest"
SPECIFIC = "specific"


@dataclass(frozen=True)
class VersionPolicy:
    """`latest(n)`: the n highest servable versions; `specific([...])`: exactly those, when servable."""

    kind: str = LATEST
    count: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        """Refuse policies that could never serve anything."""
        if self.kind == LATEST:
            if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
                raise ConfigError("version policy latest(n) needs n >= 1")
        elif self.kind == SPECIFIC:
            if not self.versions or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in self.versions):
                raise ConfigError("version policy specific needs at least one version, each >= 1")
        else:
            raise ConfigError(f"unknown version policy {self.kind!r} (use {LATEST!r} or {SPECIFIC!r})")

    @classmethod
    def latest(cls, n: int = 1) -> VersionPolicy:
        """Serve the `n` highest servable versions; the highest is the default route."""
        return cls(LATEST, n, ())

    @classmethod
    def specific(cls, versions: Iterable[int]) -> VersionPolicy:
        """Serve exactly these versions (those of them that are servable); the highest is the default."""
        return cls(SPECIFIC, 1, tuple(sorted(set(versions))))

    @classmethod
    def from_config(cls, kind: str, latest: int = 1, versions: Sequence[int] = ()) -> VersionPolicy:
        """Build from the `[repository]` config fields (version_policy, latest, versions)."""
        return cls.latest(latest) if kind == LATEST else cls(kind, 1, tuple(sorted(set(versions))))

    def select(self, servable: Iterable[int]) -> set[int]:
        """The versions among `servable` that this policy serves."""
        pool = sorted(set(servable), reverse=True)
        if self.kind == LATEST:
            return set(pool[: self.count])
        return set(pool) & set(self.versions)

    def describe(self) -> str:
        """A short human form, e.g. 'latest(2)' or 'specific(1, 3)'."""
        if self.kind == LATEST:
            return f"latest({self.count})"
        return f"specific({', '.join(map(str, self.versions))})"
