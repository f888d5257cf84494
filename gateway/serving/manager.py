"""The model manager: finds sealed versions, verifies and loads them in memory, and swaps them in atomically.

Every version goes LOADING -> (open_artifact: signature, recipients, provenance) -> load -> smoke test
-> SERVING, or REFUSED with a one-line reason while whatever served before keeps serving. Artifacts the
gateway can authenticate but not decrypt are AVAILABLE (kept for edge devices to fetch) when they were
pushed with `store_only` or placed on disk by the operator; a plain push of one is refused. Routes are
immutable snapshots replaced under a lock: a request takes a `ServedModel` reference and finishes on
that version whatever is swapped in meanwhile.

Anti-rollback: the highest servable version ever accepted per model is persisted (store-only files do
not count: the gateway cannot serve them); a push at or below it is refused, a file that appears on
disk below it is not served, and the default route never drops below it unless a higher valid version
still exists or an explicit rollback pinned an earlier one.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO, cast

from gateway.artifact.envelope import Header
from gateway.artifact.keys import Identity
from gateway.artifact.sealed import OpenedArtifact, TrustStore, inspect, now_rfc3339, open_artifact
from gateway.backends import BackendConfig, load_model
from gateway.errors import (
    ArtifactError,
    InvalidInput,
    MetadataMismatch,
    NotARecipient,
    NotFound,
    NotServable,
    RollbackRefused,
    SealgateError,
    Unavailable,
)
from gateway.serving.policy import VersionPolicy
from gateway.serving.repository import Repository, check_name, model_record
from gateway.serving.smoke import smoke_test
from gateway.serving.status import ModelState, ModelStatus, PushResult, ServedModel, summarize_provenance
from gateway.versions import check_version

log = logging.getLogger("sealgate.serving")

MAX_REFUSED_PUSHES = 8
_READ_BLOCK = 1 << 20


def one_line(exc: BaseException) -> str:
    """An exception as one short, client-safe line (sealgate errors keep their message, others their type)."""
    lines = str(exc).strip().splitlines()
    text = lines[0][:300] if lines else ""
    if isinstance(exc, SealgateError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _HashingReader:
    """A read-only file wrapper that hashes and counts every byte read through it."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self._hash.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Hash whatever the reader has not consumed, so the digest covers the whole file."""
        while self.read(_READ_BLOCK):
            pass

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


@dataclass
class _Verified:
    """What verifying one sealed file gave: the opened model (None if the gateway is no recipient) and facts."""

    opened: OpenedArtifact | None
    header: Header
    sha256: str
    size: int
    stamp: tuple[int, int, int]


@dataclass
class _Entry:
    """Everything the manager knows about one version (mutated only under the model's lock)."""

    name: str
    version: int
    state: ModelState
    reason: str = ""
    path: Path | None = None
    stamp: tuple[int, int, int] | None = None
    size: int = 0
    sha256: str = ""
    signer: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    verified: bool = False
    recipient: bool = False
    late: bool = False
    file_ok: bool = True
    served: ServedModel | None = None

    @property
    def valid(self) -> bool:
        """Authentic and not refused: counts toward the anti-rollback floor, may be fetched."""
        return self.verified and self.state is not ModelState.REFUSED

    @property
    def loadable(self) -> bool:
        """Valid and openable by the gateway (a rollback may serve it)."""
        return self.valid and self.recipient and self.path is not None


@dataclass(frozen=True)
class _Route:
    """An immutable routing snapshot for one model; replaced whole, never mutated."""

    default: ServedModel | None
    by_version: Mapping[int, ServedModel]
    blocked: str = ""


class ModelManager:
    """Serves the versions the policy selects from a Repository; verifies, loads, smoke-tests and swaps."""

    def __init__(
        self,
        repo: Repository,
        identities: Sequence[Identity],
        trust: TrustStore,
        backend_config: BackendConfig | None = None,
        policy: VersionPolicy | None = None,
        poll_interval: float = 0.5,
    ) -> None:
        """Set up; nothing is read until the first poll() (or start())."""
        self.repo = repo
        self.identities = list(identities)
        self.trust = trust
        self.backend_config = backend_config if backend_config is not None else BackendConfig()
        self.policy = policy if policy is not None else VersionPolicy.latest(1)
        self.poll_interval = poll_interval
        self._lock = threading.RLock()
        self._poll_lock = threading.Lock()
        self._name_locks: dict[str, threading.Lock] = {}
        self._entries: dict[str, dict[int, _Entry]] = {}
        self._routes: dict[str, _Route] = {}
        self._state: dict[str, Any] = repo.state()
        self._polled = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.metrics: Any = None  # optional: an object with a prometheus Gauge `loaded` labelled (model, state)

    # --- hot path -------------------------------------------------------------------------------
    def get(self, name: str, version: int | None = None) -> ServedModel:
        """The model a request should run on: the default route, or a given serving version.

        NotFound for an unknown model or version, Unavailable for a known one that does not serve.
        """
        route = self._routes.get(name)
        if route is not None:
            served = route.default if version is None else route.by_version.get(version)
            if served is not None:
                return served
        raise self._miss(name, version)

    def _miss(self, name: str, version: int | None) -> SealgateError:
        with self._lock:
            stored = {v: e for v, e in self._entries.get(name, {}).items() if e.path is not None}
            route = self._routes.get(name)
            if not stored:
                return NotFound(f"model {name!r} not found")
            if version is None:
                return Unavailable(f"model {name!r} is not ready: {self._why_not_ready(stored, route)}")
            entry = stored.get(version)
            if entry is None:
                return NotFound(f"model {name!r} has no version {version}")
            why = f": {entry.reason}" if entry.reason else ""
            return Unavailable(f"model {name!r} version {version} is not serving ({entry.state.name}{why})")

    @staticmethod
    def _why_not_ready(stored: Mapping[int, _Entry], route: _Route | None) -> str:
        if route is not None and route.blocked:
            return route.blocked
        if any(e.state is ModelState.LOADING for e in stored.values()):
            return "a version is loading"
        top = stored[max(stored)]
        return f"no version serves (version {top.version} is {top.state.name}{': ' + top.reason if top.reason else ''})"

    def versions(self, name: str) -> list[int]:
        """The versions of `name` serving now, ascending."""
        route = self._routes.get(name)
        return sorted(route.by_version) if route is not None else []

    def default_version(self, name: str) -> int | None:
        """The version unversioned requests reach now, or None."""
        route = self._routes.get(name)
        return route.default.version if route is not None and route.default is not None else None

    def ready(self) -> bool:
        """True once the repository has been scanned and nothing is still loading."""
        with self._lock:
            return self._polled and not any(
                e.state is ModelState.LOADING for entries in self._entries.values() for e in entries.values()
            )

    # --- status ---------------------------------------------------------------------------------
    def highest_seen(self, name: str) -> int:
        """The anti-rollback floor of `name`: the highest version ever accepted (0 if none)."""
        record = self._state.get("models", {}).get(name) or {}
        return int(record.get("highest_seen", 0))

    def pinned(self, name: str) -> int | None:
        """The version an explicit rollback pinned, or None."""
        record = self._state.get("models", {}).get(name) or {}
        pinned = record.get("pinned")
        return int(pinned) if pinned is not None else None

    def status(self, name: str | None = None) -> list[ModelStatus]:
        """Every version the manager knows (stored files and refused pushes), sorted by name and version."""
        with self._lock:
            out = []
            for model in sorted(self._entries):
                if name is not None and model != name:
                    continue
                for version in sorted(self._entries[model]):
                    out.append(self._status_locked(self._entries[model][version]))
            return out

    def _status_locked(self, entry: _Entry) -> ModelStatus:
        default = self.default_version(entry.name)
        pinned = self.pinned(entry.name)
        return ModelStatus(
            name=entry.name,
            version=entry.version,
            state=entry.state,
            reason=entry.reason,
            provenance=copy.deepcopy(entry.provenance),
            pinned=pinned == entry.version,
            highest_seen=self.highest_seen(entry.name),
            default=default == entry.version,
            size=entry.size,
            sha256=entry.sha256,
            signer=entry.signer,
        )

    def fetch_path(self, name: str, version: int | None = None) -> tuple[Path, int]:
        """The stored sealed file of a verified version (None: the default route's) and that version, for Fetch."""
        with self._lock:
            stored = {v: e for v, e in self._entries.get(name, {}).items() if e.path is not None}
            if not stored:
                raise NotFound(f"model {name!r} not found")
            if version is None:
                version = self.default_version(name)
                if version is None:
                    raise Unavailable(f"model {name!r} has no serving version to fetch; name one")
            entry = stored.get(version)
            if entry is None or entry.path is None:
                raise NotFound(f"model {name!r} has no version {version}")
            if not entry.valid or entry.state is ModelState.LOADING or not entry.file_ok:
                why = f": {entry.reason}" if entry.reason else ""
                raise Unavailable(f"model {name!r} version {version} cannot be fetched ({entry.state.name}{why})")
            return entry.path, version

    # --- polling --------------------------------------------------------------------------------
    def start(self) -> None:
        """Poll the repository now and then every poll_interval seconds, in a daemon thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="sealgate-model-poll", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polling (models keep serving)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        """Stop polling and release every loaded model (at shutdown, after draining requests)."""
        self.stop()
        with self._lock:
            for entries in self._entries.values():
                for entry in entries.values():
                    if entry.served is not None:
                        entry.served.model.close()
                        entry.served = None
            self._routes.clear()

    def _report(self) -> None:
        """Publish how many versions of each model are in each state, if a metrics sink is attached."""
        gauge = getattr(self.metrics, "loaded", None)
        if gauge is None:
            return
        with self._lock:
            counts = {
                (name, state.name): sum(1 for e in entries.values() if e.state is state)
                for name, entries in self._entries.items()
                for state in ModelState
            }
        for (name, state), count in counts.items():
            gauge.labels(name, state).set(count)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # the poller must outlive any one bad pass; the reason is logged
                log.exception("repository poll failed")
            self._stop.wait(self.poll_interval)

    def poll(self) -> None:
        """Scan the repository once: verify and load new versions, drop removed ones, apply the policy.

        A model whose lock is held (a push or rollback in progress) is skipped; that call reconciles it.
        """
        with self._poll_lock:
            found = self.repo.scan()
            with self._lock:
                names = set(found) | {n for n, es in self._entries.items() if any(e.path for e in es.values())}
            for name in sorted(names):
                lock = self._name_lock(name)
                if not lock.acquire(blocking=False):
                    continue
                try:
                    self._sync(name, found.get(name, {}))
                except Exception:  # one model's trouble must not stop the others
                    log.exception("model %r: poll failed", name)
                finally:
                    lock.release()
            self._polled = True
        self._report()

    def _name_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._name_locks.setdefault(name, threading.Lock())

    def _sync(self, name: str, files: Mapping[int, Path]) -> None:
        """Bring one model in line with its files on disk (caller holds the model's lock)."""
        with self._lock:
            entries = dict(self._entries.get(name, {}))
        changed = False
        for version, entry in entries.items():
            if entry.path is not None and version not in files and not entry.path.exists():
                log.warning("model %r version %d was removed from the repository; unloading it", name, version)
                self._drop(name, version)
                changed = True
        floor = self.highest_seen(name)
        cache: dict[int, OpenedArtifact] = {}
        room = self._cache_room(name)
        for version in sorted(files, reverse=True):
            path = files[version]
            stamp = _stamp(path)
            entry = entries.get(version)
            if stamp is None or (entry is not None and entry.path is not None and entry.stamp == stamp):
                continue
            if entry is not None and entry.state is ModelState.SERVING:
                self._recheck_serving(entry, path)
                continue
            late = self._polled and version < floor
            entry, opened = self._evaluate(name, version, path, stamp, late)
            changed = True
            if opened is not None and room(version, len(cache)):
                cache[version] = opened
        if changed:
            self._reconcile(name, cache)

    def _cache_room(self, name: str) -> Callable[[int, int], bool]:
        """Which freshly opened versions to keep in memory for loading (the ones the policy likely serves)."""
        pinned = self.pinned(name)
        if self.policy.kind == "latest":
            return lambda version, held: held < self.policy.count or version == pinned
        return lambda version, held: version in self.policy.versions or version == pinned

    def _evaluate(
        self, name: str, version: int, path: Path, stamp: tuple[int, int, int], late: bool
    ) -> tuple[_Entry, OpenedArtifact | None]:
        """Verify one file into a new entry (LOADING, or REFUSED with the reason); return it and its opened model.

        The entry remembers the file's stamp either way, so a refused file is looked at again only once it changes.
        """
        entry = _Entry(name, version, ModelState.LOADING, path=path, stamp=stamp)
        self._put(entry)
        try:
            checked = self._verify(path)
            _match_header(checked.header, name, version, "its place in the repository")
        except Exception as exc:  # any failure to open or verify refuses this version only
            self._refuse(entry, exc)
            return entry, None
        self._fill(entry, checked, late)
        return entry, checked.opened

    def _fill(self, entry: _Entry, checked: _Verified, late: bool) -> None:
        entry.stamp, entry.size, entry.sha256 = checked.stamp, checked.size, checked.sha256
        entry.signer = checked.header.signer_key_id
        entry.verified, entry.recipient, entry.late = True, checked.opened is not None, late
        if checked.opened is not None:
            entry.provenance = summarize_provenance(checked.opened.provenance)
        else:
            entry.provenance = {"framework": checked.header.framework, "created": checked.header.created}

    def _recheck_serving(self, entry: _Entry, path: Path) -> None:
        """A serving version's file changed on disk: keep the verified copy in memory, re-verify the file."""
        try:
            checked = self._verify(path)
            _match_header(checked.header, entry.name, entry.version, "its place in the repository")
            if checked.sha256 != entry.sha256:
                raise MetadataMismatch("the file now holds a different artifact than the one loaded")
        except Exception as exc:  # the loaded model stays; the file is no longer handed out
            entry.stamp = _stamp(path)
            entry.file_ok = False
            entry.reason = f"the file on disk changed and is not served for fetch: {one_line(exc)}"
            log.error("model %r version %d: %s", entry.name, entry.version, entry.reason)
            return
        entry.stamp, entry.file_ok, entry.reason = checked.stamp, True, ""

    def _verify(self, path: Path) -> _Verified:
        """Open and verify a sealed file in memory, hashing it in the same pass; NotARecipient is not a failure."""
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            header = inspect(cast(BinaryIO, fh))
            fh.seek(0)
            reader = _HashingReader(fh)
            try:
                opened: OpenedArtifact | None = open_artifact(cast(BinaryIO, reader), self.identities, self.trust)
            except NotARecipient:
                opened = None  # raised only after the signer's signature over every byte verified
            reader.drain()
        return _Verified(opened, header, reader.hexdigest(), reader.size, (st.st_ino, st.st_size, st.st_mtime_ns))

    def _load(self, name: str, version: int, opened: OpenedArtifact) -> ServedModel:
        """Load an opened model with its backend and smoke-test it; the model is closed again on failure."""
        model = load_model(opened.model_files, self.backend_config)
        try:
            smoke_test(model, opened.provenance)
        except BaseException:
            model.close()
            raise
        return ServedModel(name, version, model, dict(opened.provenance), time.time())

    # --- reconciling ----------------------------------------------------------------------------
    def _reconcile(self, name: str, cache: dict[int, OpenedArtifact]) -> None:
        """Load what the policy wants, then publish a new route and retire what left it (caller holds the lock)."""
        pinned = self.pinned(name)
        while True:
            with self._lock:
                entries = dict(self._entries.get(name, {}))
            desired = self._desired(entries, pinned)
            missing = sorted((v for v in desired if entries[v].served is None), reverse=True)
            if not missing:
                break
            for version in missing:
                self._bring_up(entries[version], cache.pop(version, None))
        cache.clear()
        self._publish(name, entries, desired, pinned)
        self._raise_floor(name, entries)

    def _desired(self, entries: Mapping[int, _Entry], pinned: int | None) -> set[int]:
        """The versions to serve: the policy over servable versions (none above a pin) plus the pin."""
        pin_ok = pinned is not None and pinned in entries and entries[pinned].loadable
        pool = [v for v, e in entries.items() if e.loadable and not e.late and (not pin_ok or v <= cast(int, pinned))]
        desired = self.policy.select(pool)
        if pin_ok:
            desired.add(cast(int, pinned))
        return desired

    def _bring_up(self, entry: _Entry, opened: OpenedArtifact | None) -> None:
        """Load one version (re-opening its file if it was not kept); on failure it becomes REFUSED."""
        self._set(entry, ModelState.LOADING, "")
        try:
            if opened is None:
                assert entry.path is not None
                checked = self._verify(entry.path)
                _match_header(checked.header, entry.name, entry.version, "its place in the repository")
                if checked.opened is None:
                    raise NotARecipient("the gateway is no longer among the artifact's recipients")
                opened = checked.opened
            entry.served = self._load(entry.name, entry.version, opened)
        except Exception as exc:  # the version is refused; whatever served keeps serving
            self._refuse(entry, exc)

    def _publish(self, name: str, entries: Mapping[int, _Entry], desired: set[int], pinned: int | None) -> None:
        """Swap in the new route and set every version's state, in one step under the lock."""
        by_version = {v: e.served for v in desired if (e := entries[v]).served is not None}
        default, blocked = self._choose_default(name, entries, by_version, pinned)
        retired_by = self._retire_reason(name, by_version, pinned)
        with self._lock:
            for version, entry in entries.items():
                if version in by_version:
                    entry.state, entry.reason = ModelState.SERVING, "" if entry.file_ok else entry.reason
                elif entry.served is not None:
                    if entry.state is ModelState.SERVING:
                        entry.state, entry.reason = ModelState.RETIRED, retired_by(version)
                        log.info("model %r version %d retired: %s", name, version, entry.reason)
                    else:  # loaded for a push or rollback but not selected: no request ever held it
                        entry.served.model.close()
                        entry.state, entry.reason = ModelState.AVAILABLE, self._idle_reason(entry)
                    entry.served = None
                elif entry.state is ModelState.LOADING or (entry.valid and entry.state is ModelState.AVAILABLE):
                    entry.state, entry.reason = ModelState.AVAILABLE, self._idle_reason(entry)
            self._routes[name] = _Route(
                by_version[default] if default is not None else None, MappingProxyType(by_version), blocked
            )
        if default is not None:
            log.info("model %r: serving %s, default version %d", name, sorted(by_version), default)
        elif blocked:
            log.error("model %r: %s", name, blocked)

    def _choose_default(
        self, name: str, entries: Mapping[int, _Entry], by_version: Mapping[int, ServedModel], pinned: int | None
    ) -> tuple[int | None, str]:
        """The default version: the pin if serving, else the highest, unless that would silently roll back."""
        if not by_version:
            return None, ""
        if pinned is not None and pinned in by_version:
            return pinned, ""
        top = max(by_version)
        floor = self.highest_seen(name)
        if top < floor and not any(e.valid and e.recipient and v > top for v, e in entries.items()):
            return None, (
                f"version {floor}, the highest seen, is no longer in the repository; "
                f"serving version {top} needs an explicit rollback"
            )
        return top, ""

    def _retire_reason(
        self, name: str, by_version: Mapping[int, ServedModel], pinned: int | None
    ) -> Callable[[int], str]:
        rollbacks = (self._state.get("models", {}).get(name) or {}).get("rollbacks") or []
        last = rollbacks[-1] if rollbacks else None

        def reason(version: int) -> str:
            if pinned is not None and version > pinned and last is not None and last.get("to") == pinned:
                return f"rolled back to version {pinned}: {last.get('reason', '')}"
            newer = [v for v in by_version if v > version]
            return f"superseded by version {max(newer)}" if newer else f"not selected by {self.policy.describe()}"

        return reason

    def _idle_reason(self, entry: _Entry) -> str:
        if not entry.recipient:
            return "stored for fetch only: the gateway is not among its recipients, so it never serves it"
        if entry.late:
            return (
                f"arrived below the highest version seen ({self.highest_seen(entry.name)}): "
                "kept for fetch and rollback, not served"
            )
        pinned = self.pinned(entry.name)
        if pinned is not None and entry.version > pinned:
            return f"above the pinned rollback version {pinned}: served after the next push or rollback"
        return f"verified; not selected by {self.policy.describe()}"

    def _raise_floor(self, name: str, entries: Mapping[int, _Entry]) -> None:
        """Persist the highest valid version the gateway can serve, if it went up (store-only files do not count)."""
        valid = [v for v, e in entries.items() if e.valid and e.recipient and e.path is not None]
        if valid and max(valid) > self.highest_seen(name):
            top = max(valid)

            def bump(doc: dict[str, Any]) -> dict[str, Any]:
                record = model_record(doc, name)
                record["highest_seen"] = max(int(record["highest_seen"]), top)
                return copy.deepcopy(doc)

            self._state = self.repo.update_state(bump)

    # --- entries --------------------------------------------------------------------------------
    def _put(self, entry: _Entry) -> None:
        with self._lock:
            self._entries.setdefault(entry.name, {})[entry.version] = entry

    def _drop(self, name: str, version: int) -> None:
        with self._lock:
            self._entries.get(name, {}).pop(version, None)

    def _set(self, entry: _Entry, state: ModelState, reason: str) -> None:
        with self._lock:
            entry.state, entry.reason = state, reason

    def _refuse(self, entry: _Entry, exc: BaseException) -> None:
        reason = one_line(exc)
        with self._lock:
            entry.state, entry.reason, entry.served = ModelState.REFUSED, reason, None
        log.warning("model %r version %d refused: %s", entry.name, entry.version, reason)

    # --- release --------------------------------------------------------------------------------
    def accept_push(self, name: str, version: int, received: Path, *, store_only: bool = False) -> PushResult:
        """Verify, store and promote a pushed artifact that was received whole into `received`.

        Refusals raise (MetadataMismatch, RollbackRefused, NotServable, artifact errors, GateFailed) and
        leave nothing stored and the floor where it was; `received` is deleted in every case (moved into
        place on success). An artifact the gateway cannot open is stored only with `store_only` (for
        Fetch, never served, not raising the floor). The exact bytes already stored for this version
        are answered `already_stored`, and nothing is written.
        """
        check_name(name)
        check_version(version)
        received = Path(received)
        with self._name_lock(name):
            try:
                return self._accept(name, version, received, store_only)
            finally:
                self.repo.discard(received)
                self._report()

    def _already_stored(self, name: str, version: int, received: Path) -> PushResult | None:
        """The stored version's status when `received` holds exactly its bytes and it is valid; else None."""
        target = self.repo.path(name, version)
        with self._lock:
            entry = self._entries.get(name, {}).get(version)
            if entry is None or entry.path is None or not entry.valid:
                return None
        try:
            if target.stat().st_size != received.stat().st_size or _sha256_file(target) != _sha256_file(received):
                return None
        except FileNotFoundError:
            return None
        log.info("model %r version %d: push of the exact bytes already stored; nothing changed", name, version)
        with self._lock:
            return PushResult.of(self._status_locked(entry), already_stored=True)

    def _accept(self, name: str, version: int, received: Path, store_only: bool) -> PushResult:
        with open(received, "rb") as fh:
            header = inspect(cast(BinaryIO, fh))
        _match_header(header, name, version, "the push request")
        same = self._already_stored(name, version, received)
        if same is not None:
            return same
        with self._lock:
            known = [v for v, e in self._entries.get(name, {}).items() if e.loadable]
        floor = max([self.highest_seen(name), *known])
        if version <= floor:
            raise RollbackRefused(
                f"model {name!r}: version {version} is not above the highest version seen ({floor}); "
                "only an explicit rollback serves an earlier version"
            )
        if self.repo.path(name, version).exists():
            raise RollbackRefused(f"model {name!r} version {version} is already stored")
        try:
            checked = self._verify(received)
            _match_header(checked.header, name, version, "the push request")
            if checked.opened is None and not store_only:
                raise NotServable(
                    "sealed for other recipients; push with store_only to keep it for fetch "
                    f"(the gateway is {', '.join(i.public.key_id for i in self.identities) or 'no recipient'}, "
                    f"the artifact is for {', '.join(r.key_id for r in checked.header.recipients)})"
                )
            served = self._load(name, version, checked.opened) if checked.opened is not None else None
        except SealgateError as exc:
            self._note_refused_push(name, version, exc)
            raise
        except Exception as exc:  # a backend's own error: refused, and said so without internals
            self._note_refused_push(name, version, exc)
            raise ArtifactError(f"model {name!r} version {version} could not be loaded: {one_line(exc)}") from exc
        try:
            path = self.repo.store(name, version, received)
        except BaseException:
            if served is not None:
                served.model.close()
            raise
        if served is not None:  # a store-only file neither raises the floor nor ends a rollback pin
            try:
                self._state = self.repo.update_state(_pushed(name, version))
            except BaseException:
                self.repo.remove(name, version)
                served.model.close()
                raise
        entry = _Entry(name, version, ModelState.LOADING, path=path, served=served)
        checked.stamp = _stamp(path) or checked.stamp
        self._fill(entry, checked, late=False)
        checked.opened = None
        self._put(entry)
        kind = "pushed and stored" if served is not None else "stored for fetch only (store_only)"
        log.info("model %r version %d %s (%d bytes, sha256 %s)", name, version, kind, entry.size, entry.sha256)
        self._reconcile(name, {})
        with self._lock:
            return PushResult.of(self._status_locked(entry))

    def _note_refused_push(self, name: str, version: int, exc: BaseException) -> None:
        """Keep a refused push visible in status (no file exists), bounded per model."""
        reason = one_line(exc)
        log.warning("model %r version %d: push refused: %s", name, version, reason)
        with self._lock:
            entries = self._entries.setdefault(name, {})
            if version in entries and entries[version].path is not None:
                return
            entries[version] = _Entry(name, version, ModelState.REFUSED, reason=f"push refused: {reason}")
            unstored = sorted(v for v, e in entries.items() if e.path is None)
            for old in unstored[:-MAX_REFUSED_PUSHES]:
                del entries[old]

    def rollback(self, name: str, version: int, reason: str) -> tuple[int, int | None]:
        """Pin an earlier, valid version as the default route (persisted); returns (new, previous default).

        The version must be stored, verified and loadable by the gateway; it is loaded and smoke-tested
        first, so a failed rollback changes nothing. The caller audits the call.
        """
        check_name(name)
        check_version(version)
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidInput("a rollback needs a reason")
        reason = " ".join(reason.split())[:500]
        with self._name_lock(name):
            with self._lock:
                stored = {v: e for v, e in self._entries.get(name, {}).items() if e.path is not None}
            if not stored:
                raise NotFound(f"model {name!r} not found")
            entry = stored.get(version)
            if entry is None:
                raise NotFound(f"model {name!r} has no version {version}")
            if not entry.valid:
                raise RollbackRefused(f"model {name!r} version {version} is {entry.state.name}: {entry.reason}")
            if not entry.recipient:
                raise RollbackRefused(
                    f"model {name!r} version {version} is not addressed to the gateway: it cannot serve it"
                )
            previous = self.default_version(name)
            if previous == version:
                raise RollbackRefused(f"model {name!r} version {version} is already the serving version")
            if entry.served is None:
                self._bring_up(entry, None)
                if entry.served is None:
                    raise RollbackRefused(f"model {name!r} version {version} could not be loaded: {entry.reason}")
            try:
                self._state = self.repo.update_state(_rolled_back(name, version, previous, reason))
            except BaseException:
                self._reconcile(name, {})
                raise
            log.warning("model %r rolled back from version %s to %d: %s", name, previous, version, reason)
            self._reconcile(name, {})
        self._report()
        return version, previous


def _match_header(header: Header, name: str, version: int, where: str) -> None:
    """Refuse an artifact whose authenticated header names another model or version than expected."""
    if header.name != name or header.version != version:
        raise MetadataMismatch(
            f"the artifact's header says {header.name!r} version {header.version}, "
            f"but {where} says {name!r} version {version}"
        )


def _sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_READ_BLOCK):
            h.update(block)
    return h.hexdigest()


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of a file, to notice a replaced file; None if it is gone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _pushed(name: str, version: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """State update for an accepted push: raise the floor, and a new release ends any rollback pin."""

    def apply(doc: dict[str, Any]) -> dict[str, Any]:
        record = model_record(doc, name)
        record["highest_seen"] = max(int(record["highest_seen"]), version)
        if record["pinned"] is not None:
            log.info("model %r: version %d ends the rollback pin on version %d", name, version, record["pinned"])
        record["pinned"] = None
        return copy.deepcopy(doc)

    return apply


def _rolled_back(
    name: str, version: int, previous: int | None, reason: str
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """State update for a rollback: pin the version and record why."""

    def apply(doc: dict[str, Any]) -> dict[str, Any]:
        record = model_record(doc, name)
        record["pinned"] = version
        record["rollbacks"].append({"time": now_rfc3339(), "from": previous, "to": version, "reason": reason})
        return copy.deepcopy(doc)

    return apply
