"""Privacy accounting computed from first principles with Opacus' RDP and PRV analyses.

Independent of any PrivacyEngine: given (noise multiplier, sample rate, steps, δ) it returns ε, so the ε that
clients report can be cross-checked and a round's ε predicted before it runs. Both accountants give valid upper
bounds on the same mechanism, so the run uses the tighter (smaller) of the two for its budget and its noise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from opacus.accountants import PRVAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier

from gateway.errors import ConfigError

# The orders Opacus' RDPAccountant uses by default, so both computations search the same grid.
ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
# Absolute error allowed in PRV's ε estimate; Opacus returns the upper end, so the bound stays valid.
PRV_EPS_ERROR = 0.01
# Noise calibration stops once the run's ε is within this fraction below the target.
EPS_SLACK = 0.01

HistoryEntry = tuple[float, float, int]  # (noise multiplier, sample rate, steps), as in Opacus' accountants


@dataclass(frozen=True)
class Epsilons:
    """ε of one history under both accountants; `tight` is the one the run uses."""

    rdp: float
    prv: float

    @property
    def tight(self) -> float:
        """The smaller bound (both are valid upper bounds on the same mechanism)."""
        return min(self.rdp, self.prv)

    @property
    def accountant(self) -> str:
        """Which accountant gave the tighter bound."""
        return "prv" if self.prv < self.rdp else "rdp"


def _entries(history: Iterable[HistoryEntry]) -> tuple[HistoryEntry, ...]:
    """Normalised, hashable history with empty entries dropped."""
    return tuple((float(s), float(q), int(n)) for s, q, n in history if int(n) > 0)


@lru_cache(maxsize=512)
def _rdp(entries: tuple[HistoryEntry, ...], delta: float) -> float:
    """RDP composition of `entries`, converted to ε at `delta`."""
    if not entries:
        return 0.0
    rdp = sum(
        rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=list(ORDERS))
        for sigma, q, steps in entries
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        eps, _ = rdp_analysis.get_privacy_spent(orders=list(ORDERS), rdp=rdp, delta=delta)
    return float(eps)


@lru_cache(maxsize=512)
def _prv(entries: tuple[HistoryEntry, ...], delta: float) -> float:
    """PRV (Gopi et al. 2021) composition of `entries`: the upper end of Opacus' numerical ε estimate."""
    if not entries:
        return 0.0
    if any(sigma <= 0 for sigma, _, _ in entries):
        return math.inf
    accountant = PRVAccountant()
    accountant.history = list(entries)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")  # its domain bound uses RDP
        return float(accountant.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))


def epsilon_from_history(history: Iterable[HistoryEntry], delta: float) -> float:
    """RDP ε at `delta` after composing every (σ, q, steps) entry: the cross-check of Opacus' RDPAccountant."""
    return _rdp(_entries(history), float(delta))


def prv_epsilon_from_history(history: Iterable[HistoryEntry], delta: float) -> float:
    """PRV ε at `delta` of the same history (tighter than RDP for many steps)."""
    return _prv(_entries(history), float(delta))


def epsilons_from_history(history: Iterable[HistoryEntry], delta: float) -> Epsilons:
    """ε of `history` under RDP and PRV."""
    entries = _entries(history)
    return Epsilons(rdp=_rdp(entries, float(delta)), prv=_prv(entries, float(delta)))


def tight_epsilon_from_history(history: Iterable[HistoryEntry], delta: float) -> float:
    """The smaller of the RDP and PRV ε: what the budget and the reported ε use."""
    return epsilons_from_history(history, delta).tight


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """RDP ε of `steps` subsampled Gaussian steps with noise `noise_multiplier` and rate `sample_rate`."""
    return epsilon_from_history([(noise_multiplier, sample_rate, steps)], delta)


def tight_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """min(RDP, PRV) ε of `steps` subsampled Gaussian steps."""
    return tight_epsilon_from_history([(noise_multiplier, sample_rate, steps)], delta)


def rdp_noise_for_target(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The noise multiplier whose whole run stays within `target_epsilon` under RDP alone."""
    _check_target(target_epsilon, steps)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")  # the search probes extreme σ
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant="rdp",
            )
        )


@lru_cache(maxsize=256)
def noise_for_target(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """A noise multiplier whose whole run stays within `target_epsilon` under the tighter accountant, within
    `EPS_SLACK` of it: RDP's σ, then a bracketed secant search (Illinois) below it on the tight ε."""
    sigma_rdp = rdp_noise_for_target(target_epsilon, delta, sample_rate, steps)

    def gap(sigma: float) -> float:
        return tight_epsilon(sigma, sample_rate, steps, delta) - target_epsilon

    hi, g_hi = sigma_rdp, gap(sigma_rdp)  # g_hi <= 0: RDP's σ fits, and min(RDP, PRV) only lowers ε
    lo, g_lo = hi * 0.9, gap(hi * 0.9)
    while g_lo <= 0 and lo > sigma_rdp * 0.25:  # PRV allows even less noise: widen the bracket downwards
        hi, g_hi = lo, g_lo
        lo, g_lo = lo * 0.8, gap(lo * 0.8)
    if g_lo <= 0:
        return lo
    side = 0
    for _ in range(30):
        if -g_hi <= EPS_SLACK * target_epsilon or (hi - lo) / hi < 1e-4:
            break
        mid = hi - g_hi * (hi - lo) / (g_hi - g_lo)
        g_mid = gap(mid)
        if g_mid <= 0:
            hi, g_hi = mid, g_mid
            if side == -1:
                g_lo /= 2
            side = -1
        else:
            lo, g_lo = mid, g_mid
            if side == 1:
                g_hi /= 2
            side = 1
    return hi


def _check_target(target_epsilon: float, steps: int) -> None:
    """Refuse a non-positive target or step count."""
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)) or steps <= 0:
        raise ConfigError(f"need a finite positive target ε and step count, got ε={target_epsilon}, steps={steps}")


def compose(history: Sequence[HistoryEntry], entry: HistoryEntry) -> list[HistoryEntry]:
    """Append `entry`, merging with the last entry when σ and q match (as RDPAccountant.step does)."""
    out = [(float(s), float(q), int(n)) for s, q, n in history]
    sigma, q, steps = float(entry[0]), float(entry[1]), int(entry[2])
    if out and out[-1][0] == sigma and out[-1][1] == q:
        out[-1] = (sigma, q, out[-1][2] + steps)
    elif steps > 0:
        out.append((sigma, q, steps))
    return out


def central_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """Client-level ε of `releases` rounds of the Gaussian mechanism on clipped updates, no sampling amplification."""
    if releases <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    return epsilon(noise_multiplier, 1.0, releases, delta)
