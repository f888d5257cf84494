"""The model manager: finds sealed versions, verifies and loads them in memory, and swaps them in atomically.

Every version goes LOADING -> verification (signature, recipients, header) -> load -> smoke test ->
SERVING, or REFUSED with a one-line reason while whatever served before keeps serving. Artifacts the
gateway can authenticate but not decrypt are AVAILABLE (kept for edge devices to fetch) when they were
pushed with `store_only` or placed on disk by the operator; a plain push of one is refused.

This module orchestrates; each job has its own module: `verification` opens and loads artifacts,
`routes` applies the version policy and builds the immutable routes requests read, `ledger` persists
the anti-rollback floor, the rollback pin and history. The highest servable version ever accepted per
model is the floor (store-only files do not count): a push at or below it is refused, a file that
appears on disk below it is not served, and the default route never drops below it unless a higher
valid version still exists or an explicit rollback pinned an earlier one.

Rollouts (`canary`): a push may ask for a canary or shadow rollout; the route then carries a live
`Rollout` that `get` consults per unversioned request, the data plane reports outcomes to `observe`, and
the decision (promote, or roll back: pin stable, reject the candidate for good) is applied here under the
model's lock, persisted in the ledger and audited. A restart mid-rollout resumes it from the ledger with
fresh counts; if its candidate no longer loads the rollout ends as rolled back, if its stable version is
gone it ends undecided and the normal policy applies. The same `observe` feeds runtime failover: when the
default version's backend errors cross the threshold, the highest earlier good version is pinned
automatically (ledger `by: failover`), unless an operator's pin is in force.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gateway.artifact.keys import Identity
from gateway.artifact.sealed import OpenedArtifact, TrustStore, now_rfc3339
from gateway.backends import BackendConfig, LoadedModel
from gateway.errors import (
    ArtifactError,
    InvalidInput,
    MetadataMismatch,
    NotFound,
    RollbackRefused,
    SealgateError,
    Unavailable,
)
from gateway.serving.canary import (
    ROLLBACK,
    Decision,
    Health,
    Rollout,
    RolloutSettings,
    figures_text,
    is_backend_error,
    plan_text,
)
from gateway.serving.entry import Entry
from gateway.serving.ledger import CANARY_DECISION, FAILOVER, Ledger, LedgerFile, ModelRecord, RolloutPlan
from gateway.serving.policy import VersionPolicy
from gateway.serving.repository import Repository, check_name
from gateway.serving.routes import Route, Router, miss
from gateway.serving.status import ModelState, ModelStatus, PushResult, ServedModel
from gateway.serving.verification import (
    StepHook,
    Verifier,
    match_header,
    one_line,
    read_header,
    sha256_file,
    stamp_of,
)
from gateway.versions import check_version

__all__ = ["MAX_REFUSED_PUSHES", "ModelManager", "one_line"]

log = logging.getLogger("sealgate.serving")

MAX_REFUSED_PUSHES = 8


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
        wrap_model: Callable[[str, LoadedModel], LoadedModel] | None = None,
        rollout: RolloutSettings | None = None,
    ) -> None:
        """Set up and read the ledger; no model file is read until the first poll() (or start())."""
        self.repo = repo
        self.identities = list(identities)
        self.trust = trust
        self.backend_config = backend_config if backend_config is not None else BackendConfig()
        self.policy = policy if policy is not None else VersionPolicy.latest(1)
        self.poll_interval = poll_interval
        self._verifier = Verifier(self.identities, trust, self.backend_config)
        self._verifier.wrap = wrap_model  # applied to each model after its smoke test (dynamic batching)
        self._router = Router(self.policy)
        self._ledger_file = LedgerFile(repo.root)
        self._ledger: Ledger = self._ledger_file.load()
        self._lock = threading.RLock()
        self._poll_lock = threading.Lock()
        self._name_locks: dict[str, threading.Lock] = {}
        self._entries: dict[str, dict[int, Entry]] = {}
        self._routes: dict[str, Route] = {}
        self._polled = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.metrics: Any = None  # optional: an object with a prometheus Gauge `loaded` labelled (model, state)
        self.rollout_settings = rollout if rollout is not None else RolloutSettings()
        # optional: audit_hook(model, version, method, reason) records an automatic decision in the audit log
        self.audit_hook: Callable[[str, int, str, str], None] | None = None
        self._mirrors = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sealgate-mirror")
        self._decisions: dict[str, str] = {}  # the last rollout decision per model, for status

    def trace_steps(self, step: StepHook) -> None:
        """Run each release step (verify, smoke test, swap) inside `step(step, model, version)`: tracing."""
        self._verifier.step = step

    # --- hot path -------------------------------------------------------------------------------
    def get(self, name: str, version: int | None = None) -> ServedModel:
        """The model a request should run on: the default route, or a given serving version.

        NotFound for an unknown model or version, Unavailable for a known one that does not serve.
        """
        route = self._routes.get(name)
        if route is not None:
            if version is None:
                served = route.default
                rollout = route.rollout
                if rollout is not None and rollout.to_candidate():
                    served = route.by_version.get(rollout.plan.candidate, served)
            else:
                served = route.by_version.get(version)
            if served is not None:
                return served
        with self._lock:
            raise miss(name, version, self._stored(name), self._routes.get(name))

    def observe(
        self,
        served: ServedModel,
        seconds: float,
        error: BaseException | None,
        inputs: Mapping[str, Any] | None = None,
        outputs: Mapping[str, Any] | None = None,
    ) -> None:
        """The data plane's report of one call: feeds the model's rollout, or runtime failover of its default.

        The common case (no rollout, a success) takes no lock and allocates nothing: a dict lookup, two slot
        reads, an identity check and one integer increment.
        """
        route = self._routes.get(served.name)
        if route is None:
            return
        rollout = route.rollout
        if rollout is not None:
            rollout.observe(served.version, seconds, error, inputs, outputs)
            return
        health = route.health
        if health is None or health.served is not served:
            return
        if error is None:
            health.calls += 1
        elif is_backend_error(error) and health.failed():
            self._trip(served.name, health)

    def rollout_state(self, name: str) -> dict[str, Any] | None:
        """The rollout in progress (mode, percent, versions, live figures) or the last decision; None if neither."""
        route = self._routes.get(name)
        if route is not None and route.rollout is not None:
            return dict(route.rollout.describe())
        with self._lock:
            last = self._decisions.get(name)
        return {"decision": last} if last else None

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
        return self._ledger.highest_seen(name)

    def pinned(self, name: str) -> int | None:
        """The version an explicit rollback pinned, or None."""
        return self._ledger.pinned(name)

    def status(self, name: str | None = None) -> list[ModelStatus]:
        """Every version the manager knows (stored files and refused pushes), sorted by name and version."""
        with self._lock:
            return [
                self._status_locked(self._entries[model][version])
                for model in sorted(self._entries)
                if name is None or model == name
                for version in sorted(self._entries[model])
            ]

    def _status_locked(self, entry: Entry) -> ModelStatus:
        record = self._ledger.record(entry.name)
        return ModelStatus(
            name=entry.name,
            version=entry.version,
            state=entry.state,
            reason=entry.reason,
            provenance=copy.deepcopy(entry.provenance),
            pinned=record.pinned == entry.version,
            highest_seen=record.highest_seen,
            default=self.default_version(entry.name) == entry.version,
            size=entry.size,
            sha256=entry.sha256,
            signer=entry.signer,
        )

    def fetch_path(self, name: str, version: int | None = None) -> tuple[Path, int]:
        """The stored sealed file of a verified version (None: the default route's) and that version, for Fetch."""
        with self._lock:
            stored = self._stored(name)
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

    def _stored(self, name: str) -> dict[int, Entry]:
        """The versions of `name` that have a file (refused pushes have none)."""
        with self._lock:
            return {v: e for v, e in self._entries.get(name, {}).items() if e.path is not None}

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
        self._mirrors.shutdown(wait=True, cancel_futures=True)
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
        keep = self._router.keeps_opened(self.pinned(name))
        for version in sorted(files, reverse=True):
            path = files[version]
            stamp = stamp_of(path)
            known = entries.get(version)
            if stamp is None or (known is not None and known.path is not None and known.stamp == stamp):
                continue
            if known is not None and known.state is ModelState.SERVING:
                self._recheck_serving(known, path)
                continue
            opened = self._evaluate(name, version, path, stamp, late=self._polled and version < floor)
            changed = True
            if opened is not None and keep(version, len(cache)):
                cache[version] = opened
        if changed:
            self._reconcile(name, cache)

    def _evaluate(
        self, name: str, version: int, path: Path, stamp: tuple[int, int, int], late: bool
    ) -> OpenedArtifact | None:
        """Verify one file into a new entry (LOADING, or REFUSED with the reason); return its opened model.

        The entry remembers the file's stamp either way, so a refused file is looked at again only once it changes.
        """
        entry = Entry(name, version, ModelState.LOADING, path=path, stamp=stamp)
        self._put(entry)
        try:
            with self._verifier.step("verify", name, version):
                checked = self._verifier.verify(path)
            match_header(checked.header, name, version, "its place in the repository")
        except Exception as exc:  # any failure to open or verify refuses this version only
            self._refuse(entry, exc)
            return None
        entry.fill(checked, late)
        return checked.opened

    def _recheck_serving(self, entry: Entry, path: Path) -> None:
        """A serving version's file changed on disk: keep the verified copy in memory, re-verify the file."""
        try:
            checked = self._verifier.verify(path)
            match_header(checked.header, entry.name, entry.version, "its place in the repository")
            if checked.sha256 != entry.sha256:
                raise MetadataMismatch("the file now holds a different artifact than the one loaded")
        except Exception as exc:  # the loaded model stays; the file is no longer handed out
            entry.stamp = stamp_of(path)
            entry.file_ok = False
            entry.reason = f"the file on disk changed and is not served for fetch: {one_line(exc)}"
            log.error("model %r version %d: %s", entry.name, entry.version, entry.reason)
            return
        entry.stamp, entry.file_ok, entry.reason = checked.stamp, True, ""

    # --- reconciling ----------------------------------------------------------------------------
    def _reconcile(self, name: str, cache: dict[int, OpenedArtifact]) -> None:
        """Load what the policy wants, then publish a new route and retire what left it (caller holds the lock)."""
        record = self._ledger.record(name)
        while True:
            with self._lock:
                entries = dict(self._entries.get(name, {}))
            desired = self._router.desired(entries, record.pinned, record)
            missing = sorted((v for v in desired if entries[v].served is None), reverse=True)
            if not missing:
                break
            for version in missing:
                self._bring_up(entries[version], cache.pop(version, None))
        standby = self._standby(name, entries, desired, record)
        if standby is not None and entries[standby].served is None:
            self._bring_up(entries[standby], cache.pop(standby, None))  # off the request path: poll or push
        cache.clear()
        self._publish(name, entries, desired, record, standby)
        self._raise_floor(name, entries)
        route = self._routes.get(name)
        if record.rollout is not None and (route is None or route.rollout is None):
            self._end_unrunnable(name, record.rollout, entries)

    def _bring_up(self, entry: Entry, opened: OpenedArtifact | None) -> None:
        """Load one version (re-opening its file if it was not kept); on failure it becomes REFUSED."""
        self._set(entry, ModelState.LOADING, "")
        try:
            if opened is None:
                assert entry.path is not None
                opened = self._verifier.verify_stored(entry.path, entry.name, entry.version)
            entry.served = self._verifier.load(entry.name, entry.version, opened)
        except Exception as exc:  # the version is refused; whatever served keeps serving
            self._refuse(entry, exc)

    def _publish(
        self, name: str, entries: Mapping[int, Entry], desired: set[int], record: ModelRecord, standby: int | None
    ) -> None:
        """Swap in the new route and set every version's state, in one step under the lock."""
        with self._lock, self._verifier.step("swap", name, 0):
            route, unused = self._router.publish(name, entries, desired, record, standby)
            route = self._attach(name, route, record)
            for served in unused:
                served.model.close()
            self._routes[name] = route
        if route.default is not None:
            log.info("model %r: serving %s, default version %d", name, sorted(route.by_version), route.default.version)
        elif route.blocked:
            log.error("model %r: %s", name, route.blocked)

    def _attach(self, name: str, route: Route, record: ModelRecord) -> Route:
        """The route with its live rollout (kept across republishing) and failover watch (caller holds the lock)."""
        old = self._routes.get(name)
        plan, settings = record.rollout, self.rollout_settings.for_model(name)
        rollout: Rollout | None = None
        if plan is not None and plan.stable in route.by_version and plan.candidate in route.by_version:
            live = old.rollout if old is not None else None
            if live is not None and live.plan == plan and live.decision is None:
                rollout = live
            else:
                rollout = Rollout(name, plan, settings, lambda v: self._serving(name, v), self._decided, self._mirrors)
                log.info("model %r: rollout %s", name, plan_text(plan))
        health: Health | None = None
        if route.default is not None and settings.runtime_failover and rollout is None:
            kept = old.health if old is not None else None
            if kept is not None and kept.served is route.default:
                health = kept
            else:
                health = Health(route.default, settings.failover_window, settings.failover_max_errors)
        standby = route.standby if health is not None and settings.warm_standby else None
        return dataclasses.replace(route, rollout=rollout, health=health, standby=standby)

    def _standby(self, name: str, entries: Mapping[int, Entry], desired: set[int], record: ModelRecord) -> int | None:
        """The version to keep warm for failover: the highest good one below the default-to-be (or None).

        None during a rollout (both sides are loaded anyway), under an operator's pin (failover is off), or
        when `warm_standby` / `runtime_failover` is off for this model. Caller holds the model's lock.
        """
        settings = self.rollout_settings.for_model(name)
        if not (settings.warm_standby and settings.runtime_failover) or record.rollout is not None:
            return None
        if record.operator_pinned or not desired:
            return None
        default = record.pinned if record.pinned in desired else max(desired)
        for version in sorted((v for v in entries if v < default), reverse=True):
            entry = entries[version]
            if entry.loadable and not entry.late and version not in record.rejected:
                return version
        return None

    def _trip(self, name: str, health: Health) -> None:
        """The default version crossed the failover threshold (on a request's thread): swap the warm standby
        into the route at once, under the lock, then make it durable (ledger, audit) in the background."""
        swapped: int | None = None
        settings = self.rollout_settings.for_model(name)
        record = self._ledger.record(name)
        if settings.runtime_failover and not record.operator_pinned and record.rollout is None:
            with self._lock:
                route = self._routes.get(name)
                standby = route.standby if route is not None and route.health is health else None
                if route is not None and standby is not None:
                    by_version = MappingProxyType({**route.by_version, standby.version: standby})
                    self._routes[name] = dataclasses.replace(
                        route, default=standby, by_version=by_version, health=None, standby=None
                    )
                    swapped = standby.version
        self._spawn(self._failover, name, health.version, health.figures(), swapped)

    def _serving(self, name: str, version: int) -> ServedModel | None:
        """The serving model of `name` at `version` now, or None."""
        route = self._routes.get(name)
        return route.by_version.get(version) if route is not None else None

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        """Apply an automatic decision in its own thread: never on a request's path."""
        threading.Thread(target=target, args=args, name="sealgate-rollout", daemon=True).start()

    def _audit(self, name: str, version: int, method: str, reason: str) -> None:
        """One audit line for an automatic decision, when the server attached a hook."""
        hook = self.audit_hook
        if hook is not None:
            try:
                hook(name, version, method, reason)
            except Exception:  # auditing must not undo a decision already applied
                log.exception("model %r: could not audit %s", name, method)

    def _decided(self, rollout: Rollout, decision: Decision) -> None:
        """A rollout decided (on a request's thread): apply it in the background."""
        self._spawn(self._conclude, rollout, decision)

    def _reject_step(self, plan: RolloutPlan, reason: str) -> Callable[[ModelRecord], ModelRecord]:
        """The ledger step of a canary rollback: pin stable, reject the candidate, end the rollout."""

        def step(record: ModelRecord) -> ModelRecord:
            if record.rollout != plan:
                return record
            pinned = record.rolled_back(plan.stable, plan.candidate, reason, now_rfc3339(), CANARY_DECISION)
            return pinned.rejecting(plan.candidate)

        return step

    def _conclude(self, rollout: Rollout, decision: Decision) -> None:
        """Persist and apply a rollout's decision: promote the candidate, or pin stable and reject the candidate."""
        name, plan = rollout.name, rollout.plan
        text = f"{decision.reason} [{figures_text(decision.figures)}]"
        with self._name_lock(name):
            if self._ledger.record(name).rollout != plan:
                return  # ended meanwhile (an operator's rollback, a restart)
            if decision.action == ROLLBACK:
                self._change_ledger(name, self._reject_step(plan, f"canary rollback: {decision.reason}"))
            else:
                self._change_ledger(name, lambda r: r.with_rollout(None) if r.rollout == plan else r)
            self._reconcile(name, {})
            with self._lock:
                self._decisions[name] = f"{decision.action} v{plan.candidate}: {decision.reason}"
        self._report()
        self._audit(name, plan.candidate, f"rollout.{decision.action}", text)

    def _end_unrunnable(self, name: str, plan: RolloutPlan, entries: Mapping[int, Entry]) -> None:
        """A persisted rollout whose versions do not both serve (after a restart): end it safely.

        The candidate does not load: it is rolled back (rejected, stable pinned). The stable version is gone:
        the rollout ends undecided and the policy applies. Caller holds the model's lock.
        """
        candidate = entries.get(plan.candidate)
        if candidate is None or candidate.served is None:
            why = candidate.reason if candidate is not None and candidate.reason else "it is not servable"
            reason = f"canary rollback: candidate v{plan.candidate} cannot serve ({why})"
            self._change_ledger(name, self._reject_step(plan, reason))
            action = "rollback"
        else:
            reason = f"rollout ended undecided: stable v{plan.stable} cannot serve"
            self._change_ledger(name, lambda r: r.with_rollout(None) if r.rollout == plan else r)
            action = "ended"
        log.warning("model %r: %s", name, reason)
        with self._lock:
            self._decisions[name] = f"{action} v{plan.candidate}: {reason}"
        self._reconcile(name, {})
        self._audit(name, plan.candidate, f"rollout.{action}", reason)

    def _failover(self, name: str, version: int, figures: Mapping[str, float], swapped: int | None = None) -> None:
        """The default version is failing at run time: pin the highest earlier good version (audited).

        `swapped`: the warm standby `_trip` already routed to; pinned here (durable), or undone by a reconcile
        when the failover no longer applies."""
        with self._name_lock(name):
            record = self._ledger.record(name)
            settings = self.rollout_settings.for_model(name)
            current = self.default_version(name)
            if (
                not settings.runtime_failover
                or record.operator_pinned
                or record.rollout is not None
                or current is None
                or current not in (version, swapped)
            ):
                if swapped is not None and current == swapped:
                    self._reconcile(name, {})  # the route from the ledger again
                return
            reason = (
                f"runtime failover: v{version} failed {int(figures['errors'])} of its last "
                f"{int(figures['window'])} requests with backend errors"
            )
            target = swapped if swapped is not None else self._previous_good(name, version, record)
            if target is None:
                log.error("model %r: %s, and no earlier version can serve", name, reason)
                return
            self._change_ledger(name, lambda r: r.rolled_back(target, version, reason, now_rfc3339(), FAILOVER))
            log.error("model %r: %s; version %d serves again", name, reason, target)
            self._reconcile(name, {})
        self._report()
        self._audit(name, target, "rollout.failover", reason)

    def _previous_good(self, name: str, version: int, record: ModelRecord) -> int | None:
        """The highest version below `version` that loads and was never rejected (loaded now), or None."""
        stored = self._stored(name)
        for earlier in sorted((v for v in stored if v < version), reverse=True):
            entry = stored[earlier]
            if not entry.loadable or earlier in record.rejected:
                continue
            if entry.served is None:
                self._bring_up(entry, None)
            if entry.served is not None:
                return earlier
        return None

    def _raise_floor(self, name: str, entries: Mapping[int, Entry]) -> None:
        """Persist the highest valid version the gateway can serve, if it went up (store-only files do not count)."""
        valid = [v for v, e in entries.items() if e.valid and e.recipient and e.path is not None]
        if valid and max(valid) > self.highest_seen(name):
            top = max(valid)
            self._change_ledger(name, lambda record: record.bumped(top))

    def _change_ledger(self, name: str, step: Callable[[ModelRecord], ModelRecord]) -> ModelRecord:
        """Apply `step` to `name`'s record in the ledger file (under its locks) and keep the result."""
        self._ledger = self._ledger_file.update(lambda ledger: ledger.change(name, step))
        return self._ledger.record(name)

    # --- entries --------------------------------------------------------------------------------
    def _put(self, entry: Entry) -> None:
        with self._lock:
            self._entries.setdefault(entry.name, {})[entry.version] = entry

    def _drop(self, name: str, version: int) -> None:
        with self._lock:
            self._entries.get(name, {}).pop(version, None)

    def _set(self, entry: Entry, state: ModelState, reason: str) -> None:
        with self._lock:
            entry.state, entry.reason = state, reason

    def _refuse(self, entry: Entry, exc: BaseException) -> None:
        reason = one_line(exc)
        with self._lock:
            entry.state, entry.reason, entry.served = ModelState.REFUSED, reason, None
        log.warning("model %r version %d refused: %s", entry.name, entry.version, reason)

    # --- release --------------------------------------------------------------------------------
    def accept_push(
        self,
        name: str,
        version: int,
        received: Path,
        *,
        store_only: bool = False,
        rollout: str = "",
        percent: int = 0,
        sticky: bool = False,
    ) -> PushResult:
        """Verify, store and promote a pushed artifact that was received whole into `received`.

        Refusals raise (MetadataMismatch, RollbackRefused, NotServable, artifact errors, GateFailed) and
        leave nothing stored and the floor where it was; `received` is deleted in every case (moved into
        place on success). An artifact the gateway cannot open is stored only with `store_only` (for
        Fetch, never served, not raising the floor). The exact bytes already stored for this version
        are answered `already_stored`, and nothing is written. `rollout` ("canary" or "shadow") with `percent`
        (and `sticky`) makes the version a candidate beside the serving one instead of replacing it.
        """
        check_name(name)
        check_version(version)
        received = Path(received)
        with self._name_lock(name):
            try:
                return self._accept(name, version, received, store_only, (rollout, percent, sticky))
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
            if target.stat().st_size != received.stat().st_size or sha256_file(target) != sha256_file(received):
                return None
        except FileNotFoundError:
            return None
        log.info("model %r version %d: push of the exact bytes already stored; nothing changed", name, version)
        with self._lock:
            return PushResult.of(self._status_locked(entry), already_stored=True)

    def _plan(self, name: str, version: int, ask: tuple[str, int, bool]) -> RolloutPlan | None:
        """The rollout a push asks for, checked against the model's state (RollbackRefused / InvalidInput)."""
        mode, percent, sticky = ask
        current = self._ledger.record(name).rollout
        if current is not None:
            raise RollbackRefused(
                f"model {name!r} has a rollout in progress ({plan_text(current)}): wait for its decision, "
                "or end it with an explicit rollback"
            )
        stable = self.default_version(name)
        if not mode and stable is not None:  # a plain push: the model's configured rollout, if any
            configured = self.rollout_settings.for_model(name)
            mode, percent, sticky = configured.mode, configured.percent, configured.sticky
        if not mode:
            return None
        if stable is None:
            raise RollbackRefused(f"model {name!r} has no serving version for a {mode} rollout to compare with")
        return RolloutPlan(stable, version, mode, percent, sticky, now_rfc3339())

    def _accept(
        self, name: str, version: int, received: Path, store_only: bool, ask: tuple[str, int, bool] = ("", 0, False)
    ) -> PushResult:
        match_header(read_header(received), name, version, "the push request")
        same = self._already_stored(name, version, received)
        if same is not None:
            return same
        plan = self._plan(name, version, ask)
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
            with self._verifier.step("verify", name, version):
                checked = self._verifier.verify(received)
            match_header(checked.header, name, version, "the push request")
            if checked.opened is None and not store_only:
                raise self._verifier.not_servable(checked.header)
            served = self._verifier.load(name, version, checked.opened) if checked.opened is not None else None
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
                before = self.pinned(name)
                self._change_ledger(name, lambda record: record.pushed(name, version).with_rollout(plan))
            except BaseException:
                self.repo.remove(name, version)
                served.model.close()
                raise
            if before is not None:
                log.info("model %r: version %d ends the rollback pin on version %d", name, version, before)
        entry = Entry(name, version, ModelState.LOADING, path=path, served=served)
        checked.stamp = stamp_of(path) or checked.stamp
        entry.fill(checked, late=False)
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
            entries[version] = Entry(name, version, ModelState.REFUSED, reason=f"push refused: {reason}")
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
            stored = self._stored(name)
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
            record = self._ledger.record(name)
            if version in record.rejected:
                raise RollbackRefused(
                    f"model {name!r} version {version} was rolled back by a canary rollout and is not served again"
                )
            previous = self.default_version(name)
            if previous == version and record.rollout is None:
                raise RollbackRefused(f"model {name!r} version {version} is already the serving version")
            if entry.served is None:
                self._bring_up(entry, None)
                if entry.served is None:
                    raise RollbackRefused(f"model {name!r} version {version} could not be loaded: {entry.reason}")
            try:
                self._change_ledger(name, lambda record: record.rolled_back(version, previous, reason, now_rfc3339()))
            except BaseException:
                self._reconcile(name, {})
                raise
            log.warning("model %r rolled back from version %s to %d: %s", name, previous, version, reason)
            self._reconcile(name, {})
        self._report()
        return version, previous
