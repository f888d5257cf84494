"""Privacy accounting computed from first principles with Opacus' RDP analysis functions.

Independent of any PrivacyEngine or accountant object: given (noise multiplier, sample rate, steps, δ)
it returns ε, so the ε that clients report can be cross-checked, and a round's ε predicted before it runs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier

from gateway.errors import ConfigError

# The orders Opacus' RDPAccountant uses by default, so both computations search the same grid.
ORDERS: tuple[float, ...] = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))

HistoryEntry = tuple[float, float, int]  # (noise multiplier, sample rate, steps), as in RDPAccountant.history


def epsilon_from_history(history: Iterable[HistoryEntry], delta: float) -> float:
    """ε at `delta` after composing every (σ, q, steps) entry (RDP composition, then conversion)."""
    entries = [(float(s), float(q), int(n)) for s, q, n in history if int(n) > 0]
    if not entries:
        return 0.0
    rdp = sum(
        rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=list(ORDERS))
        for sigma, q, steps in entries
    )
    eps, _ = rdp_analysis.get_privacy_spent(orders=list(ORDERS), rdp=rdp, delta=delta)
    return float(eps)


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε of `steps` subsampled Gaussian steps with noise `noise_multiplier` and rate `sample_rate`."""
    return epsilon_from_history([(noise_multiplier, sample_rate, steps)], delta)


def noise_for_target(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The noise multiplier whose whole run (`steps` at `sample_rate`) stays within `target_epsilon`."""
    if target_epsilon <= 0 or steps <= 0:
        raise ConfigError(f"need a positive target ε and step count, got ε={target_epsilon}, steps={steps}")
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
