"""Routes and version policy: which versions serve, which one is the default, and why the others do not.

A `Route` is an immutable snapshot for one model, replaced whole: a request takes a `ServedModel` from it
and finishes on that version whatever is published meanwhile. `Router` applies the `VersionPolicy` to
the servable versions, honours a pinned rollback, refuses to let the default route silently drop below
the anti-rollback floor, and gives every version that does not serve a one-line reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gateway.errors import NotFound, SealgateError, Unavailable
from gateway.serving.entry import Entry
from gateway.serving.ledger import ModelRecord
from gateway.serving.policy import LATEST, VersionPolicy
from gateway.serving.status import ModelState, ServedModel

log = logging.getLogger("sealgate.serving")

STANDBY_REASON = "warm standby: loaded, not routed; runtime failover swaps it in at once"


@dataclass(frozen=True)
class Route:
    """An immutable routing snapshot for one model; replaced whole, never mutated."""

    default: ServedModel | None
    by_version: Mapping[int, ServedModel]
    blocked: str = ""
    rollout: Any = None  # the live canary.Rollout when one runs (default is then its stable version)
    health: Any = None  # the canary.Health watching the default version for runtime failover
    standby: ServedModel | None = None  # the previous good version, loaded but not routed: failover's target


class Router:
    """Applies a version policy and the ledger's floor and pin to a model's versions."""

    def __init__(self, policy: VersionPolicy) -> None:
        """Bind to the policy every decision uses."""
        self.policy = policy

    def desired(self, entries: Mapping[int, Entry], pinned: int | None, record: ModelRecord | None = None) -> set[int]:
        """The versions to serve: the policy over servable versions (none above a pin, none rejected) plus
        the pin, plus both sides of a rollout in progress."""
        rejected = set(record.rejected) if record is not None else set()
        pin = pinned if pinned is not None and pinned in entries and entries[pinned].loadable else None
        pool = [
            v
            for v, e in entries.items()
            if e.loadable and not e.late and (pin is None or v <= pin) and v not in rejected
        ]
        desired = self.policy.select(pool)
        if pin is not None:
            desired.add(pin)
        plan = record.rollout if record is not None else None
        if plan is not None:
            desired.update(v for v in (plan.stable, plan.candidate) if v in entries and entries[v].loadable)
        return desired

    def keeps_opened(self, pinned: int | None) -> Callable[[int, int], bool]:
        """Which freshly opened versions to keep in memory for loading (the ones the policy likely serves)."""
        if self.policy.kind == LATEST:
            count = self.policy.count
            return lambda version, held: held < count or version == pinned
        versions = self.policy.versions
        return lambda version, held: version in versions or version == pinned

    def publish(
        self,
        name: str,
        entries: Mapping[int, Entry],
        desired: set[int],
        record: ModelRecord,
        standby: int | None = None,
    ) -> tuple[Route, list[ServedModel]]:
        """Set every version's state for the new route and build it (caller holds the manager's lock).

        `standby`, when loaded, stays loaded as the route's warm standby (AVAILABLE unless it also serves).
        Returns the route and the models that were loaded but not selected, for the caller to close.
        """
        by_version = {v: served for v in desired if (served := entries[v].served) is not None}
        default, blocked = self.choose_default(entries, by_version, record)
        retired_by = self.retire_reason(by_version, record)
        unused: list[ServedModel] = []
        for version, entry in entries.items():
            if version in by_version:
                entry.state, entry.reason = ModelState.SERVING, "" if entry.file_ok else entry.reason
            elif version == standby and entry.served is not None:
                entry.state, entry.reason = ModelState.AVAILABLE, STANDBY_REASON
            elif entry.served is not None:
                # a former standby served before (requests may still hold it): retired like a serving one
                if entry.state is ModelState.SERVING or entry.reason == STANDBY_REASON:
                    entry.state, entry.reason = ModelState.RETIRED, retired_by(version)
                    log.info("model %r version %d retired: %s", name, version, entry.reason)
                else:  # loaded for a push or rollback but not selected: no request ever held it
                    unused.append(entry.served)
                    entry.state, entry.reason = ModelState.AVAILABLE, self.idle_reason(entry, record)
                entry.served = None
            elif entry.state is ModelState.LOADING or (entry.valid and entry.state is ModelState.AVAILABLE):
                entry.state, entry.reason = ModelState.AVAILABLE, self.idle_reason(entry, record)
        route = Route(by_version[default] if default is not None else None, MappingProxyType(by_version), blocked)
        kept = entries[standby].served if standby is not None and standby in entries else None
        if kept is not None and default is not None and standby != default:
            route = Route(route.default, route.by_version, blocked, standby=kept)
        return route, unused

    @staticmethod
    def choose_default(
        entries: Mapping[int, Entry], by_version: Mapping[int, ServedModel], record: ModelRecord
    ) -> tuple[int | None, str]:
        """The default version: the pin if serving, else the highest, unless that would silently roll back."""
        if not by_version:
            return None, ""
        if record.rollout is not None and record.rollout.stable in by_version:
            return record.rollout.stable, ""
        if record.pinned is not None and record.pinned in by_version:
            return record.pinned, ""
        top = max(by_version)
        floor = record.highest_seen
        if top < floor and not any(e.valid and e.recipient and v > top for v, e in entries.items()):
            return None, (
                f"version {floor}, the highest seen, is no longer in the repository; "
                f"serving version {top} needs an explicit rollback"
            )
        return top, ""

    def retire_reason(self, by_version: Mapping[int, ServedModel], record: ModelRecord) -> Callable[[int], str]:
        """Why a version that served no longer does: a rollback, a newer version, or the policy."""
        pinned, last = record.pinned, record.last_rollback

        def reason(version: int) -> str:
            if pinned is not None and version > pinned and last is not None and last.to_version == pinned:
                return f"rolled back to version {pinned}: {last.reason}"
            newer = [v for v in by_version if v > version]
            return f"superseded by version {max(newer)}" if newer else f"not selected by {self.policy.describe()}"

        return reason

    def idle_reason(self, entry: Entry, record: ModelRecord) -> str:
        """Why a verified version is AVAILABLE rather than SERVING."""
        if not entry.recipient:
            return "stored for fetch only: the gateway is not among its recipients, so it never serves it"
        if entry.version in record.rejected:
            return "rolled back by a canary rollout: never served again (push a higher version)"
        if entry.late:
            return (
                f"arrived below the highest version seen ({record.highest_seen}): "
                "kept for fetch and rollback, not served"
            )
        if record.pinned is not None and entry.version > record.pinned:
            return f"above the pinned rollback version {record.pinned}: served after the next push or rollback"
        return f"verified; not selected by {self.policy.describe()}"


def miss(name: str, version: int | None, stored: Mapping[int, Entry], route: Route | None) -> SealgateError:
    """The error for a request no route answers: NotFound for an unknown model or version, else Unavailable."""
    if not stored:
        return NotFound(f"model {name!r} not found")
    if version is None:
        return Unavailable(f"model {name!r} is not ready: {why_not_ready(stored, route)}")
    entry = stored.get(version)
    if entry is None:
        return NotFound(f"model {name!r} has no version {version}")
    why = f": {entry.reason}" if entry.reason else ""
    return Unavailable(f"model {name!r} version {version} is not serving ({entry.state.name}{why})")


def why_not_ready(stored: Mapping[int, Entry], route: Route | None) -> str:
    """Why a model with stored versions has no default route."""
    if route is not None and route.blocked:
        return route.blocked
    if any(e.state is ModelState.LOADING for e in stored.values()):
        return "a version is loading"
    top = stored[max(stored)]
    return f"no version serves (version {top.version} is {top.state.name}{': ' + top.reason if top.reason else ''})"
