"""The push client's side of rollouts: the RolloutRequest `sealgate push --canary/--shadow` sends, and the
one line `sealgate models` prints for a rollout in progress or decided."""

from __future__ import annotations

from gateway.errors import InvalidInput
from gateway.protos.sealgate.v1 import release_pb2 as pb


def rollout_request(canary: int = 0, shadow: int = 0, sticky: bool = False) -> pb.RolloutRequest | None:
    """The rollout a push asks for (None: a plain push); InvalidInput for contradictory or out-of-range flags."""
    if canary and shadow:
        raise InvalidInput("choose one of --canary and --shadow")
    if sticky and not canary:
        raise InvalidInput("--sticky applies to --canary only")
    percent = canary or shadow
    if not percent:
        return None
    if not 1 <= percent <= 100:
        raise InvalidInput("a rollout percent must be from 1 to 100")
    mode = pb.RolloutRequest.CANARY if canary else pb.RolloutRequest.SHADOW
    return pb.RolloutRequest(mode=mode, percent=percent, sticky=sticky)


def rollout_summary(r: pb.RolloutStatus) -> str:
    """One line: the rollout's mode, versions and live comparison (p50 too: latency judges both), or its decision."""
    if not r.mode:
        return f"last rollout: {r.decision}"
    sticky = ", sticky" if r.sticky else ""
    line = (
        f"{r.mode} v{r.candidate} at {r.percent}%{sticky} beside stable v{r.stable}: "
        f"candidate {r.candidate_requests} req, {r.candidate_errors} err, "
        f"p50 {r.candidate_p50_ms:.2f} p99 {r.candidate_p99_ms:.2f} ms; "
        f"stable {r.stable_requests} req, {r.stable_errors} err, "
        f"p50 {r.stable_p50_ms:.2f} p99 {r.stable_p99_ms:.2f} ms; "
        f"disagreement {r.disagreement:.3f} of {r.compared}"
    )
    return line + (f"; decided: {r.decision}" if r.decision else "")
