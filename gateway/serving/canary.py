"""Canary and shadow rollouts, judged live, and runtime failover of a failing default version.

A `Rollout` pairs the stable version with a candidate. In `canary` mode it sends PERCENT of unversioned
requests to the candidate: a deterministic split by a request counter (request n goes to the candidate when
n * PERCENT mod 100 < PERCENT, so exactly PERCENT of every 100), or, when sticky, by a hash of the caller's
subject so one caller always reaches the same side. In `shadow` mode every request is answered by stable
and PERCENT of them are mirrored to the candidate off the critical path (one worker thread, at most
`MAX_PENDING_MIRRORS` waiting; a busy mirror is skipped, never queued without bound); its answers are
compared and discarded. Candidate-routed canary requests are mirrored to stable the same way, so both modes
measure output disagreement.

The data plane reports every call's outcome to `observe`: a backend error (not a client error such as
InvalidInput) or a NaN/inf output is a failure; latency is the model's own run. Each side keeps its last
`window` outcomes (bounded). The rollout then decides, with the figures that decided:
- ROLL BACK once the candidate has `min_samples` outcomes and its error rate exceeds stable's by more than
  `max_error_rate_delta`, or its p99 latency exceeds `max_latency_ratio` x stable's p99 (and its p50 the
  same multiple of stable's p50: the whole distribution moved, not one scheduling outlier in a small
  sample, which on a busy host can be milliseconds) with both also at least `min_latency_delta_ms` above
  stable's (a ratio alone condemns a tiny model whose isolated worker pays a wake-up of a few hundred µs
  that stable's busier worker does not), or the share of compared answers that disagree (beyond
  `tolerance`) exceeds `max_disagreement` (checked before latency: it is certain, latency is noisy);
- PROMOTE after `promote_after` candidate outcomes with none of those.
The manager applies a decision (ledger, routes) and audits it; a rolled-back candidate stops receiving
traffic at once, before the ledger is written.
"""

from __future__ import annotations

import contextvars
import hashlib
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.errors import ModelFailed, SealgateError, Unavailable
from gateway.serving.ledger import RolloutPlan
from gateway.serving.status import ServedModel

log = logging.getLogger("sealgate.serving")

CANARY = "canary"
SHADOW = "shadow"
PROMOTE = "promote"
ROLLBACK = "rollback"
MAX_PENDING_MIRRORS = 4
JUDGE_EVERY = 8  # request-path observations between judgements (each mirrored call is judged too)
SUBJECT: contextvars.ContextVar[str | None] = contextvars.ContextVar("sealgate_subject", default=None)
"""The authenticated caller's subject, set by the guard: what a sticky rollout hashes."""


@dataclass(frozen=True)
class RolloutSettings:
    """The thresholds a rollout and runtime failover judge by (`[rollout]` in the config)."""

    promote_after: int = 200  # healthy candidate outcomes before promotion
    min_samples: int = 20  # candidate outcomes before any regression decision
    max_error_rate_delta: float = 0.05  # candidate error rate may exceed stable's by at most this
    max_latency_ratio: float = 3.0  # candidate p99 may be at most this times stable's p99
    min_latency_delta_ms: float = 2.0  # ...or at most this many ms slower (p50 and p99): both must be exceeded
    max_disagreement: float = 0.05  # share of compared answers that may disagree
    tolerance: float = 1e-4  # absolute and relative tolerance of an output comparison
    compare: str = "values"  # "values": every output within tolerance; "argmax": the same top class per row
    window: int = 500  # outcomes kept per side (the bounded reservoir)
    runtime_failover: bool = True  # a failing default version hands over to the previous good one
    failover_window: int = 50  # recent outcomes of the default version that failover looks at
    failover_max_errors: int = 10  # backend errors among them that trigger failover
    warm_standby: bool = True  # keep the previous good version loaded, so failover is a route swap
    mode: str = ""  # the rollout a plain push starts ("", "canary", "shadow")
    percent: int = 10  # its share of traffic
    sticky: bool = False  # canary split by caller subject
    models: Mapping[str, RolloutSettings] = field(default_factory=dict)  # per-model settings (overrides applied)

    def for_model(self, name: str) -> RolloutSettings:
        """The settings `name` is judged by: its own when configured, else these defaults."""
        return self.models.get(name, self)


@dataclass(frozen=True)
class Decision:
    """What a rollout decided, and the figures that decided it (for the audit line and `sealgate models`)."""

    action: str
    reason: str
    figures: Mapping[str, float]


def is_backend_error(error: BaseException) -> bool:
    """True for a failure of the model or runtime (counted against it: an in-process runtime's own exception,
    an isolated worker's ModelFailed or Unavailable); False for the client's own mistake (InvalidInput,
    TooLarge...) and for a cancelled call (a BaseException such as asyncio.CancelledError)."""
    if not isinstance(error, Exception):
        return False
    return not isinstance(error, SealgateError) or isinstance(error, (ModelFailed, Unavailable))


def finite(outputs: Mapping[str, Any]) -> bool:
    """Whether every numeric output is finite (a NaN or inf answer counts as a failure)."""
    for value in outputs.values():
        array = np.asarray(value)
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            return False
    return True


def agree(left: Mapping[str, Any], right: Mapping[str, Any], tolerance: float, compare: str = "values") -> bool:
    """Whether two answers hold the same outputs: equal within `tolerance` (absolute and relative), or with
    `compare="argmax"` the same top class in each row (a retrained classifier's scores always differ a little)."""
    for name, value in left.items():
        other = right.get(name)
        if other is None:
            return False
        a, b = np.asarray(value), np.asarray(other)
        if a.shape != b.shape:
            return False
        if compare == "argmax" and a.ndim >= 2 and a.shape[-1] > 1 and a.dtype.kind in "fciu":
            if not np.array_equal(a.argmax(axis=-1), b.argmax(axis=-1)):
                return False
        elif a.dtype.kind in "fciub" and b.dtype.kind in "fciub":
            if not np.allclose(a, b, rtol=tolerance, atol=tolerance, equal_nan=False):
                return False
        elif not np.array_equal(a, b):
            return False
    return True


def slower(candidate_ms: float, stable_ms: float, cfg: RolloutSettings) -> bool:
    """Whether a candidate latency is a regression: over `max_latency_ratio` x stable's AND at least
    `min_latency_delta_ms` above it (NaN, no successful call on a side, is never slower)."""
    return candidate_ms > cfg.max_latency_ratio * stable_ms and candidate_ms - stable_ms >= cfg.min_latency_delta_ms


class Side:
    """One side's last `window` outcomes: (ok, seconds); counts since the rollout began."""

    def __init__(self, window: int) -> None:
        """An empty reservoir of `window` outcomes."""
        self.outcomes: deque[tuple[bool, float]] = deque(maxlen=window)
        self.requests = 0
        self.errors = 0

    def add(self, ok: bool, seconds: float) -> None:
        """Record one outcome."""
        self.outcomes.append((ok, seconds))
        self.requests += 1
        self.errors += not ok

    def error_rate(self) -> float:
        """Failures among the outcomes in the window (0 with none)."""
        window = list(self.outcomes)
        return sum(1 for ok, _ in window if not ok) / len(window) if window else 0.0

    def quantile(self, q: float) -> float:
        """The q-quantile of successful latencies in the window, seconds (nan with none)."""
        times = sorted(s for ok, s in list(self.outcomes) if ok)
        if not times:
            return math.nan
        return times[min(len(times) - 1, int(q * len(times)))]


class Rollout:
    """A live rollout of one model: routes requests, gathers outcomes, decides once."""

    def __init__(
        self,
        name: str,
        plan: RolloutPlan,
        settings: RolloutSettings,
        resolve: Callable[[int], ServedModel | None],
        decide: Callable[[Rollout, Decision], None],
        mirrors: ThreadPoolExecutor,
    ) -> None:
        """`resolve` finds a serving version's model, `decide` applies a decision (called once, off the lock)."""
        self.name = name
        self.plan = plan
        self.settings = settings
        self.stable = Side(settings.window)
        self.candidate = Side(settings.window)
        self.compared = 0
        self.disagreed = 0
        self.mirrored = 0
        self.decision: Decision | None = None
        self._resolve = resolve
        self._decide = decide
        self._mirrors = mirrors
        self._pending = 0
        self._counter = itertools.count()
        self._mirror_counter = itertools.count()
        self._observed = itertools.count(1)
        self._lock = threading.Lock()

    # --- routing --------------------------------------------------------------------------------
    def to_candidate(self) -> bool:
        """Whether this unversioned request goes to the candidate (canary mode, while undecided)."""
        plan = self.plan
        if plan.mode != CANARY or (self.decision is not None and self.decision.action == ROLLBACK):
            return False
        if plan.sticky:
            subject = SUBJECT.get()
            if subject is not None:
                digest = hashlib.sha256(f"{self.name}\0{subject}".encode()).digest()
                return int.from_bytes(digest[:4], "big") % 100 < plan.percent
        return next(self._counter) * plan.percent % 100 < plan.percent

    # --- outcomes -------------------------------------------------------------------------------
    def observe(
        self,
        version: int,
        seconds: float,
        error: BaseException | None,
        inputs: Mapping[str, np.ndarray] | None,
        outputs: Mapping[str, np.ndarray] | None,
    ) -> None:
        """Count one served call of `version`; mirror it when the mode asks; decide when the figures say so.

        In shadow mode both sides are measured on the mirror thread (the candidate, then stable again on the
        same inputs), so their latencies compare like with like; request-path calls only choose what to mirror.
        """
        if error is not None and not is_backend_error(error):
            return
        ok = error is None and outputs is not None and finite(outputs)
        plan = self.plan
        if plan.mode == SHADOW:
            if ok and version == plan.stable and inputs is not None and outputs is not None and self.decision is None:
                if next(self._mirror_counter) * plan.percent % 100 < plan.percent:
                    self._mirror(plan.candidate, inputs, outputs, shadow=True)
            return
        with self._lock:
            if version == plan.candidate:
                self.candidate.add(ok, seconds)
            elif version == plan.stable:
                self.stable.add(ok, seconds)
            else:
                return
        if ok and version == plan.candidate and inputs is not None and outputs is not None and self.decision is None:
            self._mirror(plan.stable, inputs, outputs, shadow=False)
        if next(self._observed) % JUDGE_EVERY == 0:  # judging sorts the windows: not on every request's path
            self._judge()

    def _mirror(self, version: int, inputs: Mapping[str, np.ndarray], answer: Mapping[str, Any], shadow: bool) -> None:
        """Run `version` on the same inputs off the request path and compare; skipped when the worker is busy."""
        served = self._resolve(version)
        twin = self._resolve(self.plan.stable) if shadow else None
        if served is None or (shadow and twin is None):
            return
        with self._lock:
            if self._pending >= MAX_PENDING_MIRRORS:
                return
            self._pending += 1
        try:
            self._mirrors.submit(self._mirror_run, served, twin, dict(inputs), answer)
        except RuntimeError:  # the pool is shut down: the manager is closing
            with self._lock:
                self._pending -= 1

    @staticmethod
    def _timed_infer(
        served: ServedModel, inputs: Mapping[str, np.ndarray], names: list[str]
    ) -> tuple[Mapping[str, Any] | None, BaseException | None, float]:
        """(answer or None, error or None, seconds) of one run of `served`."""
        started = time.perf_counter()
        try:
            return served.model.infer(inputs, names), None, time.perf_counter() - started
        except Exception as exc:  # a mirrored model's failure is a finding, never the client's problem
            return None, exc, time.perf_counter() - started

    def _mirror_run(
        self,
        served: ServedModel,
        twin: ServedModel | None,
        inputs: dict[str, np.ndarray],
        answer: Mapping[str, Any],
    ) -> None:
        """One mirrored call, its answer compared with `answer`; in shadow mode (`twin`: stable) both sides timed."""
        try:
            names = list(answer)
            twin_first = twin is not None and self.mirrored % 2 == 1  # alternate: the first run pays thread wake-up
            if twin is not None and twin_first:
                again, twin_error, twin_seconds = self._timed_infer(twin, inputs, names)
            other, error, seconds = self._timed_infer(served, inputs, names)
            if twin is not None and not twin_first:
                again, twin_error, twin_seconds = self._timed_infer(twin, inputs, names)
            with self._lock:
                self.mirrored += 1
                if twin is not None:
                    if error is None or is_backend_error(error):
                        self.candidate.add(error is None and other is not None and finite(other), seconds)
                    if twin_error is None or is_backend_error(twin_error):
                        self.stable.add(twin_error is None and again is not None and finite(again), twin_seconds)
                if other is not None and finite(other) and finite(answer):
                    self.compared += 1
                    self.disagreed += not agree(answer, other, self.settings.tolerance, self.settings.compare)
            self._judge()
        finally:
            with self._lock:
                self._pending -= 1

    # --- judging --------------------------------------------------------------------------------
    def figures(self) -> dict[str, float]:
        """The live comparison: counts, error rates, p50/p99 latencies (ms) and disagreement, per side."""
        with self._lock:
            c, s = self.candidate, self.stable
            return {
                "candidate_requests": float(c.requests),
                "candidate_errors": float(c.errors),
                "candidate_error_rate": c.error_rate(),
                "candidate_p50_ms": c.quantile(0.5) * 1e3,
                "candidate_p99_ms": c.quantile(0.99) * 1e3,
                "stable_requests": float(s.requests),
                "stable_errors": float(s.errors),
                "stable_error_rate": s.error_rate(),
                "stable_p50_ms": s.quantile(0.5) * 1e3,
                "stable_p99_ms": s.quantile(0.99) * 1e3,
                "compared": float(self.compared),
                "disagreement": self.disagreed / self.compared if self.compared else 0.0,
            }

    def verdict(self, f: Mapping[str, float]) -> Decision | None:
        """The decision these figures call for, if any (pure: tested on its own)."""
        cfg = self.settings
        n = f["candidate_requests"]
        if n < cfg.min_samples:
            return None
        v = f"v{self.plan.candidate}"  # the rules in order of certainty: errors, disagreement, then latency
        if f["candidate_error_rate"] > f["stable_error_rate"] + cfg.max_error_rate_delta:
            why = (
                f"{v} error rate {f['candidate_error_rate']:.3f} > stable {f['stable_error_rate']:.3f} "
                f"+ {cfg.max_error_rate_delta:g}"
            )
            return Decision(ROLLBACK, why, f)
        c99, s99 = f["candidate_p99_ms"], f["stable_p99_ms"]
        c50, s50 = f["candidate_p50_ms"], f["stable_p50_ms"]
        if f["compared"] >= cfg.min_samples and f["disagreement"] > cfg.max_disagreement:
            why = f"{v} disagrees with stable on {f['disagreement']:.3f} of {int(f['compared'])} compared answers"
            return Decision(ROLLBACK, why, f)
        if f["stable_requests"] >= cfg.min_samples and slower(c50, s50, cfg) and slower(c99, s99, cfg):
            why = (
                f"{v} p99 {c99:.3f} ms > {cfg.max_latency_ratio:g} x stable p99 {s99:.3f} ms "
                f"(p50 {c50:.3f} vs {s50:.3f} ms; both over the ratio and >= {cfg.min_latency_delta_ms:g} ms slower)"
            )
            return Decision(ROLLBACK, why, f)
        if n >= cfg.promote_after:
            why = (
                f"{v} healthy over {int(n)} requests: error rate {f['candidate_error_rate']:.3f}, "
                f"p99 {c99:.2f} ms (stable {s99:.2f}), disagreement {f['disagreement']:.3f}"
            )
            return Decision(PROMOTE, why, f)
        return None

    def _judge(self) -> None:
        """Decide at most once; the decision is applied by the manager outside this rollout's lock."""
        if self.decision is not None:
            return
        decision = self.verdict(self.figures())
        if decision is None:
            return
        with self._lock:
            if self.decision is not None:
                return
            self.decision = decision
        log.warning("model %r rollout: %s: %s", self.name, decision.action, decision.reason)
        self._decide(self, decision)

    def describe(self) -> dict[str, Any]:
        """The state `sealgate models` shows."""
        f = self.figures()
        return {
            "mode": self.plan.mode,
            "percent": self.plan.percent,
            "sticky": self.plan.sticky,
            "stable": self.plan.stable,
            "candidate": self.plan.candidate,
            "decision": "" if self.decision is None else f"{self.decision.action}: {self.decision.reason}",
            **f,
        }


class Health:
    """Runtime-failover watch of a model's default version: cheap on success (one integer increment, no lock).

    It keeps the request index of each of the last `max_errors` backend errors; failover trips when they all
    fall within the last `window` requests. Successes only advance `calls`; unlocked `+=` from several threads
    may lose an increment now and then, which only stretches the window a little.
    """

    __slots__ = ("calls", "errors", "max_errors", "served", "tripped", "version", "window")

    def __init__(self, served: ServedModel, window: int, max_errors: int) -> None:
        """Watch `served`: failing when `max_errors` of its last `window` outcomes were backend errors."""
        self.served = served
        self.version = served.version
        self.window = window
        self.max_errors = max_errors
        self.calls = 0
        self.errors: deque[int] = deque(maxlen=max_errors)
        self.tripped = False

    def failed(self) -> bool:
        """Record one backend error; True the first time the threshold is crossed."""
        self.calls += 1
        self.errors.append(self.calls)
        if self.tripped or len(self.errors) < self.max_errors or self.calls - self.errors[0] >= self.window:
            return False
        self.tripped = True
        return True

    def figures(self) -> dict[str, float]:
        """What failover decided on: backend errors among the last `window` requests."""
        recent = sum(1 for i in list(self.errors) if self.calls - i < self.window)
        return {"errors": float(recent), "window": float(min(self.calls, self.window))}


def plan_text(plan: RolloutPlan) -> str:
    """A short form of a plan, for logs and reasons."""
    sticky = ", sticky" if plan.sticky else ""
    return f"{plan.mode} v{plan.candidate} at {plan.percent}% beside stable v{plan.stable}{sticky}"


def figures_text(figures: Mapping[str, float], keys: Sequence[str] = ()) -> str:
    """Figures as `key=value` pairs (rounded), for an audit reason."""
    chosen = keys or list(figures)
    return " ".join(f"{k}={figures[k]:.4g}" for k in chosen if k in figures)
