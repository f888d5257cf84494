"""Malicious clients on Flower's Simulation Engine: one sends NaN, one an update 1000x too large, one claims a
billion examples and adds metrics the others lack; the server drops the first two every round, caps the third's
weight, says why, and the model stays finite and accurate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

from fl.data import heldout_data, public_data
from fl.runner import run_federated
from fl.tasks import DigitsMLP, evaluate, save_weights, train_centralized


def corrupt_update(msg: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """A Flower mod: partition 0 replies NaN weights, partition 1 the honest update scaled 1000x, partition 2 its
    honest update claiming 10^9 examples, with a list-valued metric and a NaN ε."""
    reply = call_next(msg, context)
    pid = int(context.node_config["partition-id"])
    if msg.metadata.message_type != "train" or reply.has_error() or pid > 2:
        return reply
    if pid == 2:
        metrics = MetricRecord({**reply.content["metrics"], "num-examples": 10**9, "extra": [1.0, 2.0]})
        metrics["epsilon"] = float("nan")
        return Message(content=RecordDict({"arrays": reply.content["arrays"], "metrics": metrics}), reply_to=msg)
    sent = msg.content["arrays"]
    local = reply.content["arrays"]
    bad = {}
    for name in local.keys():
        g, w = sent[name].numpy(), local[name].numpy()
        bad[name] = Array(np.full_like(w, np.nan) if pid == 0 else g + 1000.0 * (w - g))
    content = RecordDict({"arrays": ArrayRecord(bad), "metrics": reply.content["metrics"]})
    return Message(content=content, reply_to=msg)


def test_nan_and_oversized_updates_are_dropped_and_the_model_stays_good(tmp_path: Path) -> None:
    # start from a served-quality model (trained on rows no client holds): any averaged-in attack would wreck it
    x_pub, y_pub = public_data("digits", 0, 200)
    start_model = train_centralized(DigitsMLP(), x_pub, y_pub, epochs=40, lr=0.05, batch_size=16, seed=0)
    _, start_acc = evaluate(start_model, *heldout_data("digits", 0))
    assert start_acc > 0.8
    result = run_federated(
        "digits",
        clients=5,
        rounds=2,
        epsilon=8.0,
        out_dir=tmp_path,
        client_mods=[corrupt_update],
        start_weights=save_weights(start_model.state_dict()),
        public_size=200,
    )
    rows = result.rows
    assert len(rows) == 2
    for row in rows:
        assert row.sampled == 5 and row.dropped == 2 and row.clients == 3 and row.failed == 0
    capped = result.summary.capped_weights
    assert len(capped) == 2 and all(c["claimed"] == 10**9 and c["cap"] < 10**4 for c in capped)
    assert result.privacy["epsilon"] <= 8.0  # the NaN ε claim did not poison the record
    reasons = [d["reason"] for d in result.summary.dropped_updates]
    assert len(reasons) == 4
    assert sum("NaN" in r for r in reasons) == 2 and sum("norm" in r for r in reasons) == 2
    assert all(torch.isfinite(v).all() for v in result.state_dict.values())
    assert all(np.isfinite(r.loss) and r.accuracy > start_acc - 0.05 for r in rows)
