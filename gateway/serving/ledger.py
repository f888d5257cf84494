"""The anti-rollback ledger: per model the highest version ever accepted, a pinned rollback, the rollback history.

It lives in `<repository>/.sealgate-state.json` (format `sealgate-repository-state/1`, unchanged since the
ledger was a plain dict). Values are frozen dataclasses; a change is a pure function from one `Ledger` to
the next, applied by `LedgerFile.update` under a thread lock and an flock on `.sealgate-state.lock`, on the
freshly read file, then written atomically. Several processes sharing a repository therefore serialize,
and because every transition takes the maximum, none can lower a model's floor. Parsing is strict: an
unknown, missing or mistyped field refuses the whole file rather than guessing a floor.

Rollouts (gateway/serving/canary.py) add three optional fields, written only when set so that older files
read and write unchanged: a record's `rollout` (the canary or shadow in progress, so a restart resumes it),
its `rejected` versions (candidates a rollout rolled back: never served again), and a rollback's `by`
(`operator`, `canary` or `failover`; absent means operator). The floor rule is unchanged: a rolled-back
candidate keeps the floor at its version (it was accepted), the stable version below it serves through an
automatic rollback pin, and the next push must be above the rejected candidate.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gateway.errors import ConfigError, InvalidInput, RollbackRefused, clip
from gateway.fsutil import atomic_write, write_refused
from gateway.serving.repository import check_name
from gateway.versions import check_version

STATE_NAME = ".sealgate-state.json"
LOCK_NAME = ".sealgate-state.lock"
STATE_FORMAT = "sealgate-repository-state/1"
_TOP_FIELDS = frozenset({"format", "models"})
_RECORD_FIELDS = frozenset({"highest_seen", "pinned", "rollbacks"})
_RECORD_OPTIONAL = frozenset({"rejected", "rollout"})
_ROLLBACK_FIELDS = frozenset({"time", "from", "to", "reason"})
_ROLLBACK_OPTIONAL = frozenset({"by"})
_ROLLOUT_FIELDS = frozenset({"stable", "candidate", "mode", "percent", "sticky", "started"})
OPERATOR, CANARY_DECISION, FAILOVER = "operator", "canary", "failover"
ROLLBACK_BY = (OPERATOR, CANARY_DECISION, FAILOVER)
ROLLOUT_MODES = ("canary", "shadow")
MAX_REJECTED = 64  # rejected versions remembered per model (the floor already refuses re-pushes of them)


class LedgerFormatError(ValueError):
    """The ledger document does not have the expected shape (the file is then refused as a ConfigError)."""


@dataclass(frozen=True)
class Rollback:
    """One explicit rollback: when, from which default version (None if none served), to which, and why."""

    time: str
    from_version: int | None
    to_version: int
    reason: str
    by: str = OPERATOR  # who decided: an operator, a canary's regression check, or runtime failover

    def to_json(self) -> dict[str, Any]:
        """The on-disk form: {"time", "from", "to", "reason"} (and "by" unless an operator did it)."""
        doc: dict[str, Any] = {"time": self.time, "from": self.from_version, "to": self.to_version}
        doc["reason"] = self.reason
        if self.by != OPERATOR:
            doc["by"] = self.by
        return doc

    @classmethod
    def parse(cls, doc: object, where: str) -> Rollback:
        """Strictly parse one rollback entry; LedgerFormatError on anything unexpected."""
        fields = _object(doc, _ROLLBACK_FIELDS, where, _ROLLBACK_OPTIONAL)
        time, reason, by = fields["time"], fields["reason"], fields.get("by", OPERATOR)
        if not isinstance(time, str) or not isinstance(reason, str):
            raise LedgerFormatError(f"{where}: time and reason must be strings")
        if by not in ROLLBACK_BY:
            raise LedgerFormatError(f"{where}.by must be one of {', '.join(ROLLBACK_BY)}")
        previous = fields["from"]
        from_version = None if previous is None else _version(previous, f"{where}.from")
        return cls(time, from_version, _version(fields["to"], f"{where}.to"), reason, by)


@dataclass(frozen=True)
class RolloutPlan:
    """A rollout in progress: `candidate` takes `percent` of traffic (canary) or a mirrored share (shadow)
    beside `stable`, the version that served when it was pushed; `sticky` keeps a subject on one side."""

    stable: int
    candidate: int
    mode: str
    percent: int
    sticky: bool = False
    started: str = ""

    def __post_init__(self) -> None:
        """Refuse plans that could not run (the same checks guard pushes and the ledger file)."""
        if self.mode not in ROLLOUT_MODES:
            raise InvalidInput(f"rollout mode must be one of {', '.join(ROLLOUT_MODES)}")
        if type(self.percent) is not int or not 1 <= self.percent <= 100:
            raise InvalidInput("rollout percent must be an integer from 1 to 100")
        if check_version(self.candidate) <= check_version(self.stable):
            raise InvalidInput("a rollout's candidate must be above its stable version")

    def to_json(self) -> dict[str, Any]:
        """The on-disk form."""
        return {
            "stable": self.stable,
            "candidate": self.candidate,
            "mode": self.mode,
            "percent": self.percent,
            "sticky": self.sticky,
            "started": self.started,
        }

    @classmethod
    def parse(cls, doc: object, where: str) -> RolloutPlan:
        """Strictly parse a rollout; LedgerFormatError on anything unexpected."""
        fields = _object(doc, _ROLLOUT_FIELDS, where)
        if not isinstance(fields["sticky"], bool) or not isinstance(fields["started"], str):
            raise LedgerFormatError(f"{where}: sticky must be a boolean and started a string")
        try:
            return cls(
                _version(fields["stable"], f"{where}.stable"),
                _version(fields["candidate"], f"{where}.candidate"),
                fields["mode"],
                fields["percent"],
                fields["sticky"],
                fields["started"],
            )
        except InvalidInput as exc:
            raise LedgerFormatError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class ModelRecord:
    """What the ledger remembers of one model; every transition returns a new record."""

    highest_seen: int = 0
    pinned: int | None = None
    rollbacks: tuple[Rollback, ...] = ()
    rejected: tuple[int, ...] = ()  # candidates a rollout rolled back: never served again
    rollout: RolloutPlan | None = None  # the canary or shadow rollout in progress

    @property
    def last_rollback(self) -> Rollback | None:
        """The most recent rollback, or None."""
        return self.rollbacks[-1] if self.rollbacks else None

    @property
    def operator_pinned(self) -> bool:
        """Whether the pin in force was set by an operator (which switches runtime failover off)."""
        last = self.last_rollback
        return self.pinned is not None and (last is None or last.to_version != self.pinned or last.by == OPERATOR)

    def with_rollout(self, plan: RolloutPlan | None) -> ModelRecord:
        """The record with `plan` as its rollout in progress (None: no rollout)."""
        return replace(self, rollout=plan)

    def rejecting(self, version: int) -> ModelRecord:
        """The record with `version` rejected for good (a rolled-back candidate), its rollout ended."""
        rejected = tuple(sorted({*self.rejected, check_version(version)}))[-MAX_REJECTED:]
        return replace(self, rejected=rejected, rollout=None)

    def bumped(self, version: int) -> ModelRecord:
        """The floor raised to `version` if that is higher; never lowered."""
        return replace(self, highest_seen=max(self.highest_seen, check_version(version)))

    def pushed(self, name: str, version: int) -> ModelRecord:
        """An accepted push: the floor rises to `version` and any rollback pin ends.

        RollbackRefused if the floor (possibly raised by another process meanwhile) is already at or above it.
        """
        if check_version(version) <= self.highest_seen:
            raise RollbackRefused(
                f"model {name!r}: version {version} is not above the highest version seen ({self.highest_seen}); "
                "only an explicit rollback serves an earlier version"
            )
        return replace(self, highest_seen=version, pinned=None, rollout=None)

    def rolled_back(
        self, version: int, previous: int | None, reason: str, time: str, by: str = OPERATOR
    ) -> ModelRecord:
        """A rollback: pin `version` and append the reason to the history; an operator's also ends a rollout."""
        entry = Rollback(time, previous, check_version(version), reason, by)
        rollout = None if by == OPERATOR else self.rollout
        return replace(self, pinned=version, rollbacks=(*self.rollbacks, entry), rollout=rollout)

    def to_json(self) -> dict[str, Any]:
        """The on-disk form of the record (the rollout fields only when set)."""
        doc: dict[str, Any] = {
            "highest_seen": self.highest_seen,
            "pinned": self.pinned,
            "rollbacks": [r.to_json() for r in self.rollbacks],
        }
        if self.rejected:
            doc["rejected"] = list(self.rejected)
        if self.rollout is not None:
            doc["rollout"] = self.rollout.to_json()
        return doc

    @classmethod
    def parse(cls, doc: object, where: str) -> ModelRecord:
        """Strictly parse one model's record; LedgerFormatError on anything unexpected."""
        fields = _object(doc, _RECORD_FIELDS, where, _RECORD_OPTIONAL)
        highest = fields["highest_seen"]
        if type(highest) is not int or highest < 0:
            raise LedgerFormatError(f"{where}: highest_seen must be an integer >= 0")
        if highest:
            _version(highest, f"{where}.highest_seen")
        pinned = fields["pinned"]
        rollbacks = fields["rollbacks"]
        if not isinstance(rollbacks, list):
            raise LedgerFormatError(f"{where}: rollbacks must be a list")
        rejected = fields.get("rejected", [])
        if not isinstance(rejected, list) or len(rejected) > MAX_REJECTED:
            raise LedgerFormatError(f"{where}: rejected must be a list of at most {MAX_REJECTED} versions")
        rollout = fields.get("rollout")
        return cls(
            highest,
            None if pinned is None else _version(pinned, f"{where}.pinned"),
            tuple(Rollback.parse(r, f"{where}.rollbacks[{i}]") for i, r in enumerate(rollbacks)),
            tuple(_version(v, f"{where}.rejected[{i}]") for i, v in enumerate(rejected)),
            None if rollout is None else RolloutPlan.parse(rollout, f"{where}.rollout"),
        )


_NO_RECORD = ModelRecord()


@dataclass(frozen=True)
class Ledger:
    """The whole ledger: an immutable map from model name to its record."""

    models: Mapping[str, ModelRecord] = field(default_factory=lambda: MappingProxyType({}))

    def record(self, name: str) -> ModelRecord:
        """The record of `name` (an empty one if the ledger never saw it)."""
        return self.models.get(name, _NO_RECORD)

    def highest_seen(self, name: str) -> int:
        """The anti-rollback floor of `name` (0 if none)."""
        return self.record(name).highest_seen

    def pinned(self, name: str) -> int | None:
        """The version an explicit rollback pinned for `name`, or None."""
        return self.record(name).pinned

    def with_record(self, name: str, record: ModelRecord) -> Ledger:
        """A new ledger with `name`'s record replaced."""
        check_name(name)
        return Ledger(MappingProxyType({**self.models, name: record}))

    def change(self, name: str, step: Callable[[ModelRecord], ModelRecord]) -> Ledger:
        """A new ledger with `step` applied to `name`'s record."""
        return self.with_record(name, step(self.record(name)))

    def to_json(self) -> dict[str, Any]:
        """The on-disk document."""
        return {"format": STATE_FORMAT, "models": {n: r.to_json() for n, r in sorted(self.models.items())}}

    def dumps(self) -> bytes:
        """The on-disk bytes (sorted keys, indented, newline-terminated, as before the typed ledger)."""
        return json.dumps(self.to_json(), indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def parse(cls, doc: object) -> Ledger:
        """Strictly parse a whole ledger document; LedgerFormatError on anything unexpected."""
        fields = _object(doc, _TOP_FIELDS, "ledger")
        if fields["format"] != STATE_FORMAT:
            raise LedgerFormatError(f"expected format {STATE_FORMAT!r}, got '{clip(fields['format'])}'")
        models = fields["models"]
        if not isinstance(models, dict):
            raise LedgerFormatError("'models' must be an object")
        records: dict[str, ModelRecord] = {}
        for name, record in models.items():
            try:
                check_name(name)
            except InvalidInput as exc:
                raise LedgerFormatError(str(exc)) from None
            records[name] = ModelRecord.parse(record, f"model {name!r}")
        return cls(MappingProxyType(records))


class LedgerFile:
    """The ledger of one repository on disk: read it, or change it atomically under a thread lock and an flock."""

    def __init__(self, root: Path) -> None:
        """Bind to the repository folder `root`; nothing is read yet."""
        self.root = Path(root)
        self.path = self.root / STATE_NAME
        self.lock_path = self.root / LOCK_NAME
        self._lock = threading.Lock()

    def load(self) -> Ledger:
        """The ledger as on disk now (empty if there is no file); ConfigError if the file is not a valid ledger."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Ledger()
        try:
            return Ledger.parse(json.loads(raw, object_pairs_hook=_no_duplicates))
        except (ValueError, RecursionError) as exc:  # JSON syntax, nesting, duplicate keys or LedgerFormatError
            raise ConfigError(
                f"{self.path} is not valid repository state ({clip(exc, 300)}); "
                "refusing to guess the anti-rollback floor"
            ) from None

    def update(self, step: Callable[[Ledger], Ledger]) -> Ledger:
        """Apply `step` to the ledger read under the locks and write the result atomically; return it.

        If `step` raises, nothing is written. Unchanged results are not rewritten.
        """
        try:
            with self._lock, self._file_lock():
                current = self.load()
                after = step(current)
                if after != current:
                    Ledger.parse(after.to_json())  # never write what could not be read back
                    atomic_write(self.path, after.dumps(), 0o644, force=True)
                return after
        except OSError as exc:  # a full or read-only file system: the old ledger stands (atomic_write)
            raise write_refused(exc, "the repository state") from None

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """An exclusive flock on the lock file, shared by every process that serves this repository."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique: a repeated key (last one wins in `json`) could lower the floor."""
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise LedgerFormatError(f"duplicate key '{clip(key, 40)}'")
        doc[key] = value
    return doc


def _object(
    doc: object, expected: frozenset[str], where: str, optional: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """`doc` as a dict holding exactly the `expected` keys (and any of `optional`); LedgerFormatError otherwise."""
    if not isinstance(doc, dict):
        raise LedgerFormatError(f"{where}: expected an object")
    keys = set(doc)
    if not expected <= keys <= expected | optional:
        extra = ", ".join(sorted(clip(k, 40) for k in keys - expected - optional))
        missing = ", ".join(sorted(expected - keys))
        raise LedgerFormatError(f"{where}: unknown fields [{extra}], missing fields [{missing}]")
    return doc


def _version(value: object, where: str) -> int:
    """`value` as a valid version number; LedgerFormatError otherwise."""
    if type(value) is not int:
        raise LedgerFormatError(f"{where}: must be an integer version")
    try:
        return check_version(value)
    except InvalidInput:
        raise LedgerFormatError(f"{where}: {value} is not a valid version") from None
