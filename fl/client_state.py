"""A client's privacy state across rounds, kept in Flower's `Context.state` as one ConfigRecord.

Holds the run's fixed DP plan and the RDP accountant's history [(σ, q, steps), ...]; without it every round
would start a fresh accountant and report the per-round ε instead of the whole run's.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context

from fl.accounting import HistoryEntry
from fl.dp_train import Plan
from gateway.errors import ConfigError

STATE_KEY = "sealgate-privacy"


def load_plan(context: Context) -> Plan | None:
    """The plan stored by an earlier round of this run, if any."""
    rec = context.state.config_records.get(STATE_KEY)
    if rec is None or "noise-multiplier" not in rec:
        return None
    return Plan(
        num_examples=int(_number(rec, "num-examples")),
        sample_rate=_number(rec, "sample-rate"),
        steps_per_round=int(_number(rec, "steps-per-round")),
        noise_multiplier=_number(rec, "noise-multiplier"),
    )


def load_history(context: Context) -> list[HistoryEntry]:
    """The accountant history so far ([] before the first round)."""
    rec = context.state.config_records.get(STATE_KEY)
    if rec is None or "hist-sigma" not in rec:
        return []
    sigmas, rates, steps = _numbers(rec, "hist-sigma"), _numbers(rec, "hist-q"), _numbers(rec, "hist-steps")
    return [(s, q, int(n)) for s, q, n in zip(sigmas, rates, steps, strict=True)]


def save(context: Context, plan: Plan, history: list[HistoryEntry]) -> None:
    """Store the plan and the accountant history in the node's context for the next round."""
    context.state[STATE_KEY] = ConfigRecord(
        {
            "num-examples": plan.num_examples,
            "sample-rate": plan.sample_rate,
            "steps-per-round": plan.steps_per_round,
            "noise-multiplier": plan.noise_multiplier,
            "hist-sigma": [float(s) for s, _, _ in history],
            "hist-q": [float(q) for _, q, _ in history],
            "hist-steps": [int(n) for _, _, n in history],
        }
    )


def _number(rec: ConfigRecord, key: str) -> float:
    """A numeric entry of the stored state (a ConfigRecord value may be any scalar or list type)."""
    value = rec[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"client privacy state: {key} is not a number: {value!r}")
    return float(value)


def _numbers(rec: ConfigRecord, key: str) -> list[float]:
    """A list-of-numbers entry of the stored state."""
    value = rec[key]
    if not isinstance(value, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"client privacy state: {key} is not a list of numbers")
    return [float(v) for v in value]
