"""Secure aggregation (SecAgg+, Bell et al. 2020) on Flower 1.42's ServerApp `main`/Grid path.

Flower ships SecAgg+ only for its legacy API: `SecAggPlusWorkflow` on the server, `secaggplus_mod` around a
NumPyClient-style ClientApp. `run_secure_rounds` drives that workflow round by round with sealgate's budget check,
held-out evaluation and summary rows. Each client still clips and noises its own training (Opacus DP-SGD), so
the one thing the server learns, the masked sum, is differentially private at the clients' own ε.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_extract,
    get_parameters_shape,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from fl.data import heldout_data
from fl.settings import FlSettings
from fl.summary import RoundRow, RunSummary, complete_privacy_record, round_epsilons
from fl.tasks import StateDict, evaluate, get_task, load_into
from gateway.errors import ConfigError

log = logging.getLogger("flwr.sealgate")

# SecAgg+ parameters. Every model coordinate is clamped to ±CLIPPING_RANGE and quantized to QUANTIZATION_RANGE
# levels (step 16/2^22 ≈ 3.8e-6); masks are uniform in [0, MODULUS_RANGE). A client's FedAvg weight is its
# example count, capped at MAX_WEIGHT. Each private key is split among a fraction NUM_SHARES of the round's
# clients (all of them at 1.0) and RECONSTRUCTION_THRESHOLD of those shares rebuild it, so a round survives
# losing up to a third of its clients after they shared keys (with 3 clients: 1).
CLIPPING_RANGE = 8.0
QUANTIZATION_RANGE = 2**22
MODULUS_RANGE = 2**32
MAX_WEIGHT = 1000.0
NUM_SHARES = 1.0
RECONSTRUCTION_THRESHOLD = 2 / 3

GUARANTEE = (
    "sample-level (ε, δ)-DP per client from its own DP-SGD (Opacus); with SecAgg+ the server sees only the "
    "masked sum of the round's updates, never one client's update (honest-but-curious server, fewer than "
    "threshold colluding clients); ε is that of each client's own training: aggregation is post-processing, "
    "and no amplification from summing is claimed"
)
VALIDATION = (
    "individual updates are invisible under SecAgg+, so they cannot be checked one by one: the quantizer clamps "
    "every coordinate of every update to ±clipping_range and each weight to max_weight, and the server rejects "
    "an aggregate that is farther than update-norm-bound from the global model"
)


def enabled(settings: FlSettings, run_config: Mapping[str, Any] | None = None) -> bool:
    """Whether this run uses secure aggregation: the setting, else the run config key `secure-aggregation`."""
    if getattr(settings, "secure_aggregation", False):
        return True
    raw = (run_config or {}).get("secure-aggregation", False)
    return raw if isinstance(raw, bool) else str(raw).strip().lower() in ("1", "true", "yes")


def check_settings(settings: FlSettings) -> None:
    """Refuse combinations SecAgg+ cannot honour, before any node is contacted."""
    if settings.central_noise_multiplier > 0:
        raise ConfigError("secure aggregation hides individual updates: central DP (server-side clipping) needs them")
    if settings.min_train_nodes < 3 or settings.min_available_nodes < 3:
        raise ConfigError("secure aggregation needs at least 3 clients per round (min-train-nodes >= 3)")


def weight_names(task: str) -> list[str]:
    """The task model's state-dict keys, in the order both sides lay the tensors out as a list."""
    return list(get_task(task).model_cls().state_dict().keys())


def state_to_ndarrays(task: str, state: StateDict) -> list[np.ndarray]:
    """A state dict as the ordered NumPy list SecAgg+ masks."""
    return [state[name].detach().cpu().numpy() for name in weight_names(task)]


def ndarrays_to_state(task: str, arrays: list[np.ndarray]) -> StateDict:
    """The ordered NumPy list back into a state dict checked against the task model."""
    names = weight_names(task)
    if len(arrays) != len(names):
        raise ConfigError(f"expected {len(names)} weight tensors for task {task!r}, got {len(arrays)}")
    state = {n: torch.from_numpy(np.asarray(a, dtype=np.float32).copy()) for n, a in zip(names, arrays, strict=True)}
    return load_into(get_task(task).model_cls(), state, "secure aggregate").state_dict()


@dataclass
class SecureRound:
    """Who took part in one SecAgg+ round and what the server could decode (only the weighted average)."""

    sampled: set[int] = field(default_factory=set)
    shared_keys: set[int] = field(default_factory=set)
    masked: set[int] = field(default_factory=set)
    completed: bool = False
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    weight_total: float = 0.0
    aggregate: list[np.ndarray] | None = None
    halted: str = ""

    @property
    def dropped_out(self) -> set[int]:
        """Sampled nodes whose masked update never arrived."""
        return self.sampled - self.masked


class SealgateSecAggPlus(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, recording each round, with an unmask stage that tolerates early dropouts.

    Flower 1.42's unmask stage asks for key shares of every sampled node, so one that left before sharing its
    keys halts the round, and it cancels a dropped node's pairwise masks with all its neighbours, which is wrong
    once two neighbours drop. Here only nodes that shared keys are reconstructed, against neighbours whose
    masked vectors arrived (the masks that are really in the sum).
    """

    def __init__(self, timeout: float | None) -> None:
        super().__init__(
            NUM_SHARES,
            RECONSTRUCTION_THRESHOLD,
            max_weight=MAX_WEIGHT,
            clipping_range=CLIPPING_RANGE,
            quantization_range=QUANTIZATION_RANGE,
            modulus_range=MODULUS_RANGE,
            timeout=timeout,
        )
        self.rounds: dict[int, SecureRound] = {}

    def __call__(self, grid: Grid, context: Context) -> None:
        """Run one round of the protocol, recording it under the current round number."""
        legacy = cast(LegacyContext, context)
        rnd = int(cast(int, legacy.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND]))
        self.rounds[rnd] = SecureRound()
        super().__call__(grid, context)

    def _current(self, context: LegacyContext) -> SecureRound:
        return self.rounds[int(cast(int, context.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND]))]

    def setup_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        """Flower's setup; remember who was sampled."""
        ok = super().setup_stage(grid, context, state)
        self._current(context).sampled = set(state.sampled_node_ids)
        if not ok:
            self._current(context).halted = "too few nodes answered the setup stage"
        return ok

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        """Flower's key sharing; remember who shared keys (only they can be in anyone's masks)."""
        ok = super().share_keys_stage(grid, context, state)
        self._current(context).shared_keys = set(state.active_node_ids)
        if not ok:
            self._current(context).halted = "too few nodes shared their keys"
        return ok

    def collect_masked_vectors_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        """Flower's collection of masked vectors; record the senders and their (data-independent) metrics."""
        ok = super().collect_masked_vectors_stage(grid, context, state)
        current = self._current(context)
        current.masked = set(state.active_node_ids)
        for proxy, fitres in state.legacy_results:
            current.metrics[proxy.node_id] = {
                k: float(v) for k, v in fitres.metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
            }
        if not ok:
            current.halted = "too few masked updates arrived to unmask their sum"
        return ok

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        """Collect key shares, remove every mask, and store the weighted average as the new global model."""
        current = self._current(context)
        rnd = int(cast(int, context.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND]))
        active, shared = set(state.active_node_ids), current.shared_keys
        dead = shared - active

        def make(nid: int) -> Message:
            neighbours = state.nid_to_neighbours[nid]
            record = ConfigRecord(
                {
                    Key.STAGE: Stage.UNMASK,
                    Key.ACTIVE_NODE_ID_LIST: sorted(neighbours & active),
                    Key.DEAD_NODE_ID_LIST: sorted(neighbours & dead),
                }
            )
            return Message(
                content=RecordDict({RECORD_KEY_CONFIGS: record}),
                dst_node_id=nid,
                message_type=MessageType.TRAIN,
                group_id=str(rnd),
            )

        replies = grid.send_and_receive([make(n) for n in sorted(active)], timeout=self.timeout)
        shares: dict[int, list[bytes]] = {nid: [] for nid in shared}
        for msg in replies:
            if msg.has_error():
                continue
            record = msg.content.config_records[RECORD_KEY_CONFIGS]
            owners = cast(list[int], record[Key.NODE_ID_LIST])
            for owner, share in zip(owners, cast(list[bytes], record[Key.SHARE_LIST]), strict=True):
                if owner in shares:
                    shares[owner].append(share)
        vector = state.aggregate_ndarrays
        shape = get_parameters_shape(vector)
        for nid, owned in shares.items():
            if len(owned) < state.threshold:
                current.halted = f"only {len(owned)} of {state.threshold} key shares of node {nid} came back"
                log.error("secure aggregation: %s", current.halted)
                return False
            secret = combine_shares(owned)
            if nid in active:  # remove the node's private mask (its seed rebuilt from shares)
                vector = parameters_subtraction(vector, pseudo_rand_gen(secret, state.mod_range, shape))
                continue
            for other in sorted((state.nid_to_neighbours[nid] - {nid}) & active):  # dropped: its pairwise masks
                key = generate_shared_key(
                    bytes_to_private_key(secret), bytes_to_public_key(state.nid_to_publickeys[other][0])
                )
                mask = pseudo_rand_gen(key, state.mod_range, shape)
                vector = parameters_addition(vector, mask) if nid > other else parameters_subtraction(vector, mask)
        q_total, summed = factor_extract(parameters_mod(vector, state.mod_range))
        if q_total <= 0:
            current.halted = "the unmasked weight total is not positive"
            return False
        average = dequantize(summed, state.clipping_range, state.quantization_range)
        offset = -(len(active) - 1) * state.clipping_range
        scale = state.quantization_range / float(q_total)
        current.aggregate = [((arr + offset) * scale).astype(np.float32) for arr in average]
        current.weight_total = float(q_total) / state.quantization_range * state.max_weight
        current.completed = True
        context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            ndarrays_to_parameters(current.aggregate), True
        )
        log.info("secure aggregation: round %d unmasked the sum of %d updates", rnd, len(active))
        return True


class _SamplingFedAvg(LegacyFedAvg):
    """Flower's legacy FedAvg used only to sample nodes; it does not wait a day when too few are connected."""

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[Any]:
        """Sample as FedAvg does, or nobody when fewer than min_available_clients are connected."""
        if client_manager.num_available() < self.min_available_clients:
            return []
        return super().configure_fit(server_round, parameters, client_manager)


def _current_arrays(context: LegacyContext) -> list[np.ndarray]:
    """The global model as the workflow holds it."""
    return parameters_to_ndarrays(
        compat.arrayrecord_to_parameters(context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
    )


def _set_arrays(context: LegacyContext, arrays: list[np.ndarray]) -> None:
    """Put `arrays` back as the workflow's global model."""
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters(arrays), True
    )


def run_secure_rounds(grid: Grid, context: Context, cfg: FlSettings, progress: Any = None) -> Any:
    """Run up to `cfg.num_server_rounds` SecAgg+ rounds; returns the same RunOutcome as the plain loop."""
    from fl.server_loop import (
        RunOutcome,
        _note_lost,
        finish_round,
        initial_weights,
        privacy_summary,
        query_privacy,
        wait_for_nodes,
    )

    check_settings(cfg)
    x_te, y_te = heldout_data(cfg.task, cfg.seed)
    state = initial_weights(cfg)
    wait_for_nodes(grid, cfg.min_available_nodes, cfg.round_timeout)
    strategy = _SamplingFedAvg(
        fraction_fit=cfg.fraction_train,
        fraction_evaluate=0.0,
        min_fit_clients=cfg.min_train_nodes,
        min_evaluate_clients=cfg.min_train_nodes,
        min_available_clients=cfg.min_available_nodes,
    )
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=cfg.num_server_rounds), strategy=strategy)
    workflow = SealgateSecAggPlus(timeout=cfg.round_timeout)
    summary = RunSummary(task=cfg.task, rounds_requested=cfg.num_server_rounds)

    def _eval(arrays: list[np.ndarray]) -> tuple[float, float]:
        return evaluate(
            load_into(get_task(cfg.task).model_cls(), ndarrays_to_state(cfg.task, arrays), "global"), x_te, y_te
        )

    arrays = state_to_ndarrays(cfg.task, state)
    summary.initial_loss, summary.initial_accuracy = _eval(arrays)
    _set_arrays(legacy, arrays)
    round_cfg = ConfigRecord({WorkflowKey.START_TIME: time.time()})
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = round_cfg
    clients: dict[int, dict[str, Any]] = {}
    thread, stop, ready = start_update_client_manager_thread(grid, legacy.client_manager)
    try:
        ready.wait()
        for rnd in range(1, cfg.num_server_rounds + 1):
            connected = set(grid.get_node_ids())
            if cfg.dp:
                unknown = [n for n in connected if "epsilon-next" not in clients.get(n, {})]
                for node, metrics in query_privacy(grid, unknown, rnd, cfg.round_timeout).items():
                    clients.setdefault(node, {}).update(metrics)
                worst = max((clients[n].get("epsilon-next", 0.0) for n in connected if n in clients), default=0.0)
                if cfg.budget is not None and worst > cfg.budget * (1 + 1e-9):
                    summary.stopped_early = True
                    summary.stop_reason = (
                        f"privacy budget: round {rnd} would bring the largest client ε to {worst:.4f} "
                        f"> budget {cfg.budget:g}"
                    )
                    log.warning(summary.stop_reason)
                    break
            round_cfg[WorkflowKey.CURRENT_ROUND] = rnd
            before = _current_arrays(legacy)
            workflow(grid, legacy)
            record = workflow.rounds[rnd]
            if not record.sampled:
                summary.stopped_early = True
                summary.stop_reason = f"round {rnd}: fewer than {cfg.min_available_nodes} nodes connected"
                log.warning(summary.stop_reason)
                break
            for node, metrics in record.metrics.items():
                clients.setdefault(node, {}).update(metrics)
            _note_lost(summary, record.dropped_out)
            dropped = 0
            if record.completed and record.aggregate is not None:
                norm = float(
                    np.sqrt(
                        sum(
                            np.sum((a.astype(np.float64) - b) ** 2)
                            for a, b in zip(record.aggregate, before, strict=True)
                        )
                    )
                )
                if not np.isfinite(norm) or norm > cfg.update_norm_bound:
                    reason = f"aggregate moved the model by {norm:.4g} > update-norm-bound {cfg.update_norm_bound:g}"
                    summary.dropped_updates.append({"round": rnd, "node": "aggregate", "reason": reason})
                    log.warning("round %d: %s; kept the previous model", rnd, reason)
                    _set_arrays(legacy, before)
                    dropped = len(record.masked)
            elif record.halted:
                summary.dropped_updates.append({"round": rnd, "node": "aggregate", "reason": record.halted})
            arrays = _current_arrays(legacy)
            loss, acc = _eval(arrays)
            row = RoundRow(
                round=rnd,
                accuracy=acc,
                loss=loss,
                **round_epsilons(clients, cfg.dp),
                clients=len(record.masked) - dropped if record.completed else 0,
                dropped=dropped,
                failed=len(record.dropped_out),
                sampled=len(record.sampled),
            )
            finish_round(summary, row, progress, " (secure aggregation)")
    finally:
        stop.set()
        thread.join()
    summary.privacy = privacy_summary(cfg, summary, clients)
    complete_privacy_record(summary, cfg)
    summary.privacy.update(secure_privacy(workflow))
    summary.privacy["mechanism"] += "; SecAgg+ secure aggregation (the server sees only the masked sum)"
    return RunOutcome(state_dict=ndarrays_to_state(cfg.task, arrays), summary=summary, client_privacy=clients)


def secure_privacy(workflow: SealgateSecAggPlus) -> dict[str, Any]:
    """The provenance entries that say which guarantee holds under secure aggregation and with what parameters."""
    return {
        "secure_aggregation": {
            "protocol": "SecAgg+ (Flower 1.42 SecAggPlusWorkflow / secaggplus_mod)",
            "num_shares": NUM_SHARES,
            "reconstruction_threshold": RECONSTRUCTION_THRESHOLD,
            "clipping_range": CLIPPING_RANGE,
            "quantization_range": QUANTIZATION_RANGE,
            "modulus_range": MODULUS_RANGE,
            "max_weight": MAX_WEIGHT,
            "rounds_unmasked": sum(1 for r in workflow.rounds.values() if r.completed),
            "validation": VALIDATION,
        },
        "guarantee": GUARANTEE,
        "server_sees": "masked sum only",
    }
