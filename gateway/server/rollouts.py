"""The server's side of rollouts: automatic decisions as audit lines, and the rollout state `List` shows.

The manager (gateway/serving/canary.py) decides; this module only writes what it decided into the same
audit log and metrics as every call (method `sealgate:rollout.promote`, `rollout.rollback`,
`rollout.failover`, `rollout.ended`; subject `sealgate`; the reason carries the figures that decided).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import grpc

from gateway.config import Config
from gateway.server.recorder import CallRecord, CallRecorder
from gateway.serving.canary import RolloutSettings

SUBJECT = "sealgate"  # automatic decisions are the gateway's own
PROTOCOL = "sealgate"


def audit_hook(recorder: CallRecorder) -> Callable[[str, int, str, str], None]:
    """A manager `audit_hook` that records each automatic decision as one audit line."""

    def record(model: str, version: int, method: str, reason: str) -> None:
        recorder.record(
            CallRecord(
                time.time(), PROTOCOL, method, SUBJECT, None, model, str(version), grpc.StatusCode.OK, 0.0, reason
            )
        )

    return record


_COUNTS = ("candidate_requests", "candidate_errors", "stable_requests", "stable_errors", "compared")
_RATES = (
    "candidate_error_rate",
    "stable_error_rate",
    "candidate_p50_ms",
    "candidate_p99_ms",
    "stable_p50_ms",
    "stable_p99_ms",
    "disagreement",
)


def rollout_fields(state: Mapping[str, Any]) -> dict[str, Any]:
    """The manager's rollout state as the fields of sealgate.v1.RolloutStatus (NaN percentiles as 0)."""
    out: dict[str, Any] = {k: state[k] for k in ("mode", "percent", "sticky", "stable", "candidate") if k in state}
    out["decision"] = str(state.get("decision", ""))
    out.update({k: int(state[k]) for k in _COUNTS if k in state})
    out.update({k: float(state[k]) if state[k] == state[k] else 0.0 for k in _RATES if k in state})
    return out


def push_rollout(request: Any) -> dict[str, Any]:
    """A push's RolloutRequest as the manager's keyword arguments (none when the mode is NONE)."""
    if request.mode == 0:
        return {}
    mode = request.DESCRIPTOR.fields_by_name["mode"].enum_type.values_by_number[request.mode].name.lower()
    return {"rollout": mode, "percent": int(request.percent), "sticky": bool(request.sticky)}


def rollout_settings(config: Config) -> RolloutSettings:
    """The manager's rollout thresholds from `[rollout]`, with each `[rollout.models.NAME]` merged over them."""
    section = config.rollout

    def flat(s: Any) -> RolloutSettings:
        return RolloutSettings(**{f.name: getattr(s, f.name) for f in dataclasses.fields(s) if f.name != "models"})

    models = {name: flat(section.for_model(name)) for name in section.models}
    return dataclasses.replace(flat(section), models=MappingProxyType(models))
