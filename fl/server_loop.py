"""The ServerApp's round loop: budget check, FedAvg with validated updates, held-out evaluation, one row per round.

Written as an explicit loop over the strategy's configure/aggregate hooks (as Flower's own `Strategy.start`
does) so that a round which would exceed the privacy budget is never started and the run ends with what it has.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg, Strategy

from fl import accounting
from fl.data import heldout_data
from fl.settings import FlSettings
from fl.summary import RoundRow, RunSummary, complete_privacy_record, round_epsilons
from fl.tasks import StateDict, evaluate, get_task, load_into, load_weights
from fl.validation import ValidatingStrategy, scalar_metrics
from gateway.errors import ConfigError, Unavailable

log = logging.getLogger("flwr.sealgate")

ProgressFn = Callable[[RoundRow], None]


@dataclass
class RunOutcome:
    """The final global weights and the run's summary."""

    state_dict: StateDict
    summary: RunSummary
    client_privacy: dict[int, dict[str, Any]] = field(default_factory=dict)


def initial_weights(cfg: FlSettings) -> StateDict:
    """Start weights: the safetensors file named in settings (the served release), else a seeded fresh model."""
    model = get_task(cfg.task).model_cls()
    if cfg.start_weights:
        try:
            data = Path(cfg.start_weights).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read start weights {cfg.start_weights}: {exc}") from None
        return load_into(model, load_weights(data), f"start weights for task {cfg.task!r}").state_dict()
    with torch.random.fork_rng():  # seeded init without touching the process' global generator
        torch.manual_seed(cfg.seed)
        return get_task(cfg.task).model_cls().state_dict()


def wait_for_nodes(grid: Grid, minimum: int, timeout: float) -> list[int]:
    """Node ids once at least `minimum` are connected; Unavailable after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < minimum:
        if time.monotonic() > deadline:
            raise Unavailable(f"only {len(nodes)} of the {minimum} nodes needed connected within {timeout:.0f}s")
        time.sleep(0.5)
    return nodes


def build_strategy(cfg: FlSettings, num_nodes: int) -> ValidatingStrategy:
    """FedAvg (fraction and minimum of nodes), optionally inside Flower's server-side fixed-clipping DP wrapper,
    inside update validation."""
    central = cfg.central_noise_multiplier > 0
    fedavg = FedAvg(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=0.0,
        min_train_nodes=cfg.min_train_nodes,
        min_available_nodes=cfg.min_available_nodes,
        # Central DP's sensitivity argument needs equal client weights; else weight by data size.
        weighted_by_key="unit-weight" if central else "num-examples",
    )
    inner: Strategy = fedavg
    if central:
        sampled = max(int(num_nodes * cfg.fraction_train), cfg.min_train_nodes)
        inner = DifferentialPrivacyServerSideFixedClipping(
            fedavg, cfg.central_noise_multiplier, cfg.central_clipping_norm, sampled
        )
    return ValidatingStrategy(inner, cfg.update_norm_bound, cfg.update_norm_factor, fedavg.weighted_by_key)


def query_privacy(grid: Grid, nodes: list[int], server_round: int, timeout: float) -> dict[int, dict[str, float]]:
    """Ask `nodes` for their ε so far and after one more round (`query` messages); later rounds reuse
    the `epsilon-next` each train reply carries, so only new nodes are asked."""
    if not nodes:
        return {}
    messages = [
        Message(
            content=RecordDict({"config": ConfigRecord({"server-round": server_round})}),
            dst_node_id=node,
            message_type=MessageType.QUERY,
        )
        for node in nodes
    ]
    out: dict[int, dict[str, float]] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            log.warning("privacy query failed: %s", reply.error.reason)
            continue
        record = reply.content.metric_records.get("privacy")
        if record is not None:
            out[reply.metadata.src_node_id] = scalar_metrics([record])
    return out


def _note_lost(summary: RunSummary, nodes: set[int]) -> None:
    """Record nodes that dropped out (disconnected, failed or silent), once each."""
    for node in sorted(nodes - set(summary.nodes_lost)):
        summary.nodes_lost.append(node)
        log.warning("node %d lost: the run goes on with the others", node)


def _evaluate(cfg: FlSettings, state: StateDict, x: Any, y: Any) -> tuple[float, float]:
    """Held-out (loss, accuracy) of `state`."""
    return evaluate(load_into(get_task(cfg.task).model_cls(), state, "global weights"), x, y)


def _arrays_to_state(arrays: ArrayRecord) -> StateDict:
    """An ArrayRecord as a torch state dict (copies, so later edits to the record cannot alias)."""
    return {k: v.clone() for k, v in arrays.to_torch_state_dict().items()}


def run_rounds(grid: Grid, cfg: FlSettings, progress: ProgressFn | None = None) -> RunOutcome:
    """Run up to `cfg.num_server_rounds` rounds on `grid` and return the final weights and summary."""
    x_te, y_te = heldout_data(cfg.task, cfg.seed)
    state = initial_weights(cfg)
    nodes = wait_for_nodes(grid, cfg.min_available_nodes, cfg.round_timeout)
    strategy = build_strategy(cfg, len(nodes))
    summary = RunSummary(task=cfg.task, rounds_requested=cfg.num_server_rounds)
    summary.initial_loss, summary.initial_accuracy = _evaluate(cfg, state, x_te, y_te)
    arrays = ArrayRecord(state)
    clients: dict[int, dict[str, Any]] = {}
    seen_nodes: set[int] = set(nodes)
    budget = cfg.budget
    for rnd in range(1, cfg.num_server_rounds + 1):
        connected = set(grid.get_node_ids())
        _note_lost(summary, seen_nodes - connected)
        if cfg.dp:
            unknown = [n for n in connected if "epsilon-next" not in clients.get(n, {})]
            for node, metrics in query_privacy(grid, unknown, rnd, cfg.round_timeout).items():
                clients.setdefault(node, {}).update(metrics)
            worst = max((clients[n].get("epsilon-next", 0.0) for n in connected if n in clients), default=0.0)
            if budget is not None and worst > budget * (1 + 1e-9):
                summary.stopped_early = True
                summary.stop_reason = (
                    f"privacy budget: round {rnd} would bring the largest client ε to {worst:.4f} > budget {budget:g}"
                )
                log.warning(summary.stop_reason)
                break
        central_eps = None
        if cfg.central_noise_multiplier > 0:
            central_eps = accounting.central_epsilon(cfg.central_noise_multiplier, rnd, cfg.delta)
        messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(), grid))
        replies = list(grid.send_and_receive(messages, timeout=cfg.round_timeout))
        new_arrays, _ = strategy.aggregate_train(rnd, replies)
        validation = strategy.rounds[rnd]
        for node, metrics in validation.metrics.items():
            clients.setdefault(node, {}).update(metrics)
        for node, (claimed, cap) in validation.capped.items():
            summary.capped_weights.append({"round": rnd, "node": node, "claimed": claimed, "cap": cap})
        answered = {strategy.node_of(m) for m in replies if not m.has_error()}
        missing = {m.metadata.dst_node_id for m in messages} - answered
        _note_lost(summary, missing)
        seen_nodes |= answered
        for node, reason in validation.dropped.items():
            summary.dropped_updates.append({"round": rnd, "node": node, "reason": reason})
        if new_arrays is not None:
            arrays = new_arrays
        loss, acc = _evaluate(cfg, _arrays_to_state(arrays), x_te, y_te)
        row = RoundRow(
            round=rnd,
            accuracy=acc,
            loss=loss,
            **round_epsilons(clients, cfg.dp),
            clients=len(validation.kept),
            dropped=len(validation.dropped),
            failed=len(missing),
            sampled=len(messages),
            central_epsilon=central_eps if new_arrays is not None else None,
        )
        finish_round(summary, row, progress)
    summary.privacy = privacy_summary(cfg, summary, clients)
    complete_privacy_record(summary, cfg)
    return RunOutcome(state_dict=_arrays_to_state(arrays), summary=summary, client_privacy=clients)


def finish_round(summary: RunSummary, row: RoundRow, progress: ProgressFn | None, how: str = "") -> None:
    """Keep a round's row, log it and report it (the plain and the secure-aggregation loops alike)."""
    summary.rows.append(row)
    log.info(
        "round %d: accuracy %.4f loss %.4f ε %s kept %d dropped %d failed %d%s",
        row.round,
        row.accuracy,
        row.loss,
        row.epsilon,
        row.clients,
        row.dropped,
        row.failed,
        how,
    )
    if progress is not None:
        progress(row)


def privacy_summary(cfg: FlSettings, summary: RunSummary, clients: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """What goes into a release's provenance: ε, δ, accountant, noise, clipping, rounds, clients and their sizes."""
    eps = [float(m["epsilon"]) for m in clients.values() if "epsilon" in m and m.get("steps", 0) > 0]
    per_client: dict[str, dict[str, Any]] = {
        str(node): {
            "partition_id": int(m.get("partition-id", -1)),
            "num_examples": int(m.get("num-examples", 0)),
            "noise_multiplier": float(m.get("noise-multiplier", 0.0)),
            "sample_rate": float(m.get("sample-rate", 0.0)),
            "steps": int(m.get("steps", 0)),
            "steps_per_round": int(m.get("steps-per-round", 0)),
            "epsilon": float(m["epsilon"]) if "epsilon" in m else None,
        }
        for node, m in sorted(clients.items())
    }
    noise = sorted({c["noise_multiplier"] for c in per_client.values() if c["steps"] > 0})
    mechanisms = []
    if cfg.dp:
        mechanisms.append("DP-SGD (Opacus, per-sample clipping, Poisson sampling), sample-level")
    if cfg.central_noise_multiplier > 0:
        mechanisms.append("Gaussian noise on the clipped average (Flower server-side fixed clipping), client-level")
    out: dict[str, Any] = {
        "mechanism": "; ".join(mechanisms) or "none",
        "epsilon": max(eps) if eps else (0.0 if cfg.dp else None),
        "delta": cfg.delta if cfg.dp else None,
        "epsilon_budget": cfg.budget,
        "accountant": "min(rdp, prv)" if cfg.dp else None,
        "noise_multiplier": (noise[0] if len(noise) == 1 else noise) if cfg.dp else 0.0,
        "max_grad_norm": cfg.max_grad_norm if cfg.dp else None,
        "secure_mode": cfg.secure_mode,
        "rounds": summary.rounds_completed,
        "rounds_requested": cfg.num_server_rounds,
        "clients": len([c for c in per_client.values() if c["steps"] > 0]),
        "client_sizes": [c["num_examples"] for c in per_client.values()],
        "per_client": per_client,
    }
    if cfg.central_noise_multiplier > 0:
        released = sum(1 for r in summary.rows if r.central_epsilon is not None)
        out["central"] = {
            "noise_multiplier": cfg.central_noise_multiplier,
            "clipping_norm": cfg.central_clipping_norm,
            "epsilon": accounting.central_epsilon(cfg.central_noise_multiplier, released, cfg.delta),
            "delta": cfg.delta,
            "accountant": "rdp, no sampling amplification",
        }
    return out
