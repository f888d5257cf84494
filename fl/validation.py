"""Update validation before aggregation: NaN/inf, wrong names or shapes, or an oversized update is dropped.

`ValidatingStrategy` wraps any Flower strategy (plain FedAvg or a DP wrapper around it) and filters the train
replies before the wrapped strategy sees them, so a bad update is counted and logged but never averaged in;
FedAvg itself stays unmodified, which Flower's DP accountant requires.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

log = logging.getLogger("flwr.sealgate")


def update_problem(
    update: dict[str, np.ndarray], reference: dict[str, np.ndarray], bound: float
) -> tuple[str | None, float]:
    """Why `update` must not be averaged (None if fine), and its L2 distance from `reference`."""
    if set(update) != set(reference):
        return f"tensor names differ: {sorted(set(update) ^ set(reference))}", float("nan")
    for name, ref in reference.items():
        if update[name].shape != ref.shape:
            return f"{name}: shape {update[name].shape} != {ref.shape}", float("nan")
        if not np.issubdtype(update[name].dtype, np.floating):
            return f"{name}: dtype {update[name].dtype} is not floating point", float("nan")
        if not np.all(np.isfinite(update[name])):
            return f"{name}: NaN or infinite values", float("nan")
    norm = float(np.sqrt(sum(np.sum((update[k].astype(np.float64) - reference[k]) ** 2) for k in reference)))
    if not np.isfinite(norm) or norm > bound:
        return f"update norm {norm:.4g} exceeds the bound {bound:.4g}", norm
    return None, norm


def scalar_metrics(records: Iterable[MetricRecord]) -> dict[str, float]:
    """The finite numeric scalars of some MetricRecords, merged; lists, NaN, inf and booleans are left out."""
    out: dict[str, float] = {}
    for record in records:
        for key, value in record.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value):
                out[key] = float(value)
    return out


@dataclass
class RoundValidation:
    """What validation did in one round: kept, dropped (with reasons) and failed nodes, capped weights,
    update norms, and every replying node's scalar metrics (dropped updates spent privacy too)."""

    kept: list[int] = field(default_factory=list)
    dropped: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    capped: dict[int, tuple[float, float]] = field(default_factory=dict)
    norms: dict[int, float] = field(default_factory=dict)
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    replies: list[Message] = field(default_factory=list)


@dataclass
class _Candidate:
    """A reply that passed the structural checks, with what the norm and weight checks need."""

    msg: Message
    node: int
    update: dict[str, np.ndarray]
    weight: float
    norm: float = 0.0


class ValidatingStrategy(Strategy):
    """Wraps a strategy; drops train replies that fail `update_problem` before the wrapped aggregation.

    The norm bound is the smaller of `norm_bound` and `norm_factor` times the round's median update norm, so one
    client's huge update cannot hide behind a generous absolute bound; likewise a claimed example count above
    `norm_factor` times the median is capped, so no client buys the average with a made-up weight. Kept replies
    are reduced to their weights and the weight alone, so odd metrics cannot break the wrapped aggregation.
    """

    def __init__(
        self,
        inner: Strategy,
        norm_bound: float,
        norm_factor: float,
        weight_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
    ) -> None:
        self.inner = inner
        self.norm_bound = norm_bound
        self.norm_factor = norm_factor
        self.weight_key = weight_key
        self.arrayrecord_key = arrayrecord_key
        self.rounds: dict[int, RoundValidation] = {}
        self._global: dict[str, np.ndarray] = {}
        self._sent: list[Message] = []

    def summary(self) -> None:
        """Log the wrapped strategy's summary and the validation bounds."""
        log.info("update validation: norm bound %.4g, %.4g x median", self.norm_bound, self.norm_factor)
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global weights the updates are measured against, then delegate."""
        self._global = {k: v.numpy() for k, v in arrays.items()}
        self._sent = list(self.inner.configure_train(server_round, arrays, config, grid))
        return self._sent

    def node_of(self, reply: Message) -> int:
        """The node a train reply answers for: error replies made by the SuperLink carry its id, not the node's,
        so map through the id of the message it replies to (set in place when the grid pushed it)."""
        origin = {m.metadata.message_id: m.metadata.dst_node_id for m in self._sent}
        return origin.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)

    def _structure(self, msg: Message, node: int, result: RoundValidation) -> _Candidate | None:
        """One ArrayRecord under the expected key, a positive weight, and sane tensors; else record why not."""
        records = msg.content.array_records
        if len(records) != 1 or self.arrayrecord_key not in records:
            result.dropped[node] = f"expected exactly one ArrayRecord {self.arrayrecord_key!r}, got {list(records)}"
            return None
        weight = result.metrics[node].get(self.weight_key, 0.0)
        if weight <= 0:
            result.dropped[node] = f"no positive {self.weight_key!r} in the metrics"
            return None
        update = {k: v.numpy() for k, v in records[self.arrayrecord_key].items()}
        problem, norm = update_problem(update, self._global, np.inf)
        if problem:
            result.dropped[node] = problem
            return None
        return _Candidate(msg, node, update, weight, norm)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Filter the replies, record what was dropped, aggregate the rest with the wrapped strategy."""
        result = RoundValidation()
        candidates: list[_Candidate] = []
        for msg in replies:
            node = self.node_of(msg)
            if msg.has_error():
                result.failed[node] = msg.error.reason or "no reason given"
                continue
            result.metrics[node] = scalar_metrics(msg.content.metric_records.values())
            candidate = self._structure(msg, node, result)
            if candidate is not None:
                candidates.append(candidate)
        bound, weight_cap = self.norm_bound, np.inf
        if len(candidates) >= 3:  # a median of fewer says nothing about what is normal
            bound = min(bound, self.norm_factor * float(np.median([c.norm for c in candidates])))
            weight_cap = self.norm_factor * float(np.median([c.weight for c in candidates]))
        for c in candidates:
            result.norms[c.node] = c.norm
            if c.norm > bound:
                result.dropped[c.node] = f"update norm {c.norm:.4g} exceeds the bound {bound:.4g}"
                continue
            if c.weight > weight_cap:
                result.capped[c.node] = (c.weight, weight_cap)
                log.warning(
                    "round %d: node %d claims weight %.4g, capped at %.4g", server_round, c.node, c.weight, weight_cap
                )
            weight = min(c.weight, weight_cap)
            c.msg.content = RecordDict(
                {
                    self.arrayrecord_key: c.msg.content.array_records[self.arrayrecord_key],
                    "metrics": MetricRecord({self.weight_key: weight}),
                }
            )
            result.kept.append(c.node)
            result.replies.append(c.msg)
        for node, reason in result.dropped.items():
            log.warning("round %d: dropped the update of node %d: %s", server_round, node, reason)
        for node, reason in result.failed.items():
            log.warning("round %d: node %d failed: %s", server_round, node, reason)
        self.rounds[server_round] = result
        if not result.replies:
            return None, None
        return self.inner.aggregate_train(server_round, result.replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Delegate."""
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Delegate."""
        return self.inner.aggregate_evaluate(server_round, replies)
