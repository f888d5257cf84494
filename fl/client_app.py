"""Flower ClientApp: local DP-SGD on this node's private partition, whole-run ε kept in `Context.state`.

Handles three message types: `train` (fine-tune the received weights, reply with weights and ε), `evaluate`
(loss/accuracy of the received weights on local data) and `query` (ε now and after one more round, so the
server can stop before a round that would exceed the budget). Only clipped, noised updates leave the node.
A node's rows are its own data file (node config `data-file`) or its share of a built-in task. With secure
aggregation on, `train` goes through Flower's SecAgg+ client mod: the update leaves the node only masked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Scalar

from fl import client_state, secagg
from fl.accounting import HistoryEntry, epsilon_from_history
from fl.data import client_data
from fl.dp_train import Plan, check_secure_mode, make_plan, predicted_epsilon, train_local
from fl.local_data import NODE_CONFIG_KEY, load_local_data
from fl.settings import FlSettings
from fl.tasks import StateDict, evaluate, get_task, load_into
from gateway.errors import ConfigError

Mod = Callable[..., Message]


def _settings(bound: FlSettings | None, context: Context) -> FlSettings:
    """Settings bound in-process, else read from the run config (`flwr run`)."""
    return bound if bound is not None else FlSettings.from_run_config(dict(context.run_config))


def _local_data(settings: FlSettings, context: Context) -> tuple[np.ndarray, np.ndarray]:
    """This node's rows: its own file (node config `data-file`), else its partition-id / num-partitions share."""
    data_file = context.node_config.get(NODE_CONFIG_KEY)
    if data_file:
        return load_local_data(str(data_file), settings.task)
    try:
        pid = int(context.node_config["partition-id"])
        num = int(context.node_config["num-partitions"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError("node config needs integer partition-id and num-partitions") from None
    return client_data(settings.task, settings.seed, pid, num, settings.dirichlet_alpha, settings.public_size)


def _plan(settings: FlSettings, context: Context, num_examples: int) -> Plan:
    """The run's fixed DP plan: computed on first use, then read back from the context."""
    plan = client_state.load_plan(context)
    if plan is None:
        plan = make_plan(num_examples, settings)
        client_state.save(context, plan, [])
    return plan


def _model(settings: FlSettings, arrays: ArrayRecord) -> torch.nn.Module:
    """A fresh task model holding the received global weights."""
    return load_into(get_task(settings.task).model_cls(), arrays.to_torch_state_dict(), "received weights")


def _privacy_metrics(
    settings: FlSettings, context: Context, plan: Plan, history: list[HistoryEntry], num_examples: int
) -> dict[str, float | int]:
    """ε so far and after one more round, with the parameters that determine them."""
    metrics: dict[str, float | int] = {
        "partition-id": int(context.node_config.get("partition-id", -1)),
        "num-examples": num_examples,
        "noise-multiplier": plan.noise_multiplier,
        "sample-rate": plan.sample_rate,
        "steps-per-round": plan.steps_per_round,
        "steps": sum(n for _, _, n in history),
    }
    if settings.dp:
        metrics["epsilon"] = epsilon_from_history(history, settings.delta)
        metrics["epsilon-next"] = predicted_epsilon(history, plan, settings.delta)
    return metrics


def local_round(cfg: FlSettings, context: Context, state: StateDict) -> tuple[StateDict, dict[str, float | int]]:
    """One DP-SGD round on this node's rows from `state`: the new weights and the metrics that may leave."""
    torch.set_num_threads(1)
    x, y = _local_data(cfg, context)
    plan = _plan(cfg, context, len(y))
    history = client_state.load_history(context)
    budget = cfg.budget
    if budget is not None and predicted_epsilon(history, plan, cfg.delta) > budget * (1 + 1e-9):
        raise ConfigError(f"privacy budget: another round would exceed ε={budget}; not training")
    model = load_into(get_task(cfg.task).model_cls(), state, "received weights")
    result = train_local(model, x, y, cfg, plan, history)
    client_state.save(context, plan, result.history)
    metrics = _privacy_metrics(cfg, context, plan, result.history, len(y))
    metrics["unit-weight"] = 1  # the training loss stays here: it is not covered by the DP guarantee
    if cfg.dp:
        metrics["epsilon"] = result.epsilon  # min(RDP, PRV): the tighter bound, what the budget counts
        metrics["epsilon-rdp"] = result.epsilon_rdp
        metrics["epsilon-prv"] = result.epsilon_prv
    return result.state_dict, metrics


class _SecureClient(NumPyClient):
    """The legacy-API client SecAgg+ needs: `fit` trains as `train` does and returns weights as a NumPy list."""

    def __init__(self, settings: FlSettings | None, context: Context) -> None:
        self.settings = settings
        self.ctx = context

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Scalar]
    ) -> tuple[list[np.ndarray], int, dict[str, Scalar]]:
        """DP-SGD from the received weights; the weight is the example count capped at SecAgg+'s max_weight."""
        cfg = _settings(self.settings, self.ctx)
        state, metrics = local_round(cfg, self.ctx, secagg.ndarrays_to_state(cfg.task, parameters))
        weight = int(min(int(metrics["num-examples"]), secagg.MAX_WEIGHT))
        return secagg.state_to_ndarrays(cfg.task, state), weight, dict(metrics)


def make_secure_client_app(settings: FlSettings | None = None, mods: Sequence[Mod] = ()) -> ClientApp:
    """The SecAgg+ ClientApp: Flower's `secaggplus_mod` outermost, then `mods` (which see the plain update)."""

    def client_fn(context: Context) -> Any:
        return _SecureClient(settings, context).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod, *mods])


def make_client_app(
    settings: FlSettings | None = None, mods: Sequence[Mod] = (), secure_mods: Sequence[Mod] = ()
) -> ClientApp:
    """A ClientApp bound to `settings` (None: read the run config), with optional Flower mods; `train` goes
    through SecAgg+ (with `secure_mods` inside its mod) when the run asks for secure aggregation."""
    app = ClientApp(mods=list(mods))
    secure = make_secure_client_app(settings, secure_mods)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        """Fine-tune the received model with DP-SGD; reply with the weights, ε and the example count."""
        cfg = _settings(settings, context)
        if secagg.enabled(cfg, context.run_config):
            return secure(msg, context)
        state, metrics = local_round(cfg, context, msg.content.array_records["arrays"].to_torch_state_dict())
        content = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(dict(metrics))})
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate_local(msg: Message, context: Context) -> Message:
        """Loss and accuracy of the received model on this node's data (off by default: not DP-accounted)."""
        torch.set_num_threads(1)
        cfg = _settings(settings, context)
        x, y = _local_data(cfg, context)
        loss, acc = evaluate(_model(cfg, msg.content.array_records["arrays"]), x, y)
        content = RecordDict({"metrics": MetricRecord({"eval-loss": loss, "eval-acc": acc, "num-examples": len(y)})})
        return Message(content=content, reply_to=msg)

    @app.query()
    def privacy_preview(msg: Message, context: Context) -> Message:
        """ε spent so far and ε after one more round, computed from this node's accountant history."""
        cfg = _settings(settings, context)
        check_secure_mode(cfg)
        _, y = _local_data(cfg, context)
        plan = _plan(cfg, context, len(y))
        metrics = _privacy_metrics(cfg, context, plan, client_state.load_history(context), len(y))
        return Message(content=RecordDict({"privacy": MetricRecord(dict(metrics))}), reply_to=msg)

    return app


app = make_client_app()
