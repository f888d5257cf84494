"""Secure aggregation (SecAgg+) with DP clients: what the server receives, what it can decode, and dropouts.

Flower's own `SecAggPlusWorkflow` (as subclassed in fl/secagg.py) and `secaggplus_mod` run unchanged with
sealgate's real ClientApp and Opacus training; the only stand-in is the transport: `LoopbackGrid` hands each
message through Flower's protobuf serialisation to in-process nodes, each with its own Context, so the
protocol runs in seconds without Ray. The Deployment Engine test (tests/fl/test_fl_deployment.py) runs it over
real SuperLink / SuperNode processes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import bytes_to_ndarray, parameters_to_ndarrays
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.compat.common import recorddict_compat as compat
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from scipy import stats
from typer.testing import CliRunner

from fl import secagg
from fl.client_app import make_client_app
from fl.commands import fl_app
from fl.settings import FlSettings
from fl.summary import RunSummary
from gateway.errors import ConfigError

SETTINGS = FlSettings(num_server_rounds=1, epsilon=3.0, min_available_nodes=3, min_train_nodes=3, round_timeout=30)


@pytest.fixture(autouse=True)
def _serverapp_identity() -> Iterator[None]:
    """The process identity Flower's ServerApp runtime sets before `main` (messages are stamped with it)."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


class LoopbackGrid(Grid):
    """A Grid whose nodes are in-process ClientApp calls, each message serialised as on the wire.

    `kill` maps a node to the SecAgg+ stage whose message it dies on: it gets no reply out and is gone for good,
    as a killed SuperNode is. Every reply the server receives is kept in `received`.
    """

    def __init__(self, app: ClientApp, node_configs: dict[int, dict], run_config: dict) -> None:
        self.app = app
        self.contexts = {
            nid: Context(run_id=1, node_id=nid, node_config=cfg, state=RecordDict(), run_config=run_config)
            for nid, cfg in node_configs.items()
        }
        self.alive = set(node_configs)
        self.kill: dict[int, str] = {}
        self.received: list[tuple[int, Message]] = []
        self._run = Run.create_empty(1)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:  # type: ignore[no-untyped-def]
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self.alive)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("LoopbackGrid delivers with send_and_receive only")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("LoopbackGrid delivers with send_and_receive only")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            wire = message_from_proto(message_to_proto(msg))
            node = msg.metadata.dst_node_id
            configs = wire.content.config_records.get(RECORD_KEY_CONFIGS) if wire.has_content() else None
            if configs is not None and self.kill.get(node) == configs.get(Key.STAGE):
                self.alive.discard(node)
            if node not in self.alive:
                replies.append(Message(Error(code=0, reason="node lost"), reply_to=wire))
                continue
            reply = message_from_proto(message_to_proto(self.app(wire, self.contexts[node])))
            self.received.append((node, reply))
            replies.append(reply)
        return replies


class PlainUpdates:
    """A client mod inside `secaggplus_mod`: it sees the update and weight before masking (the test's oracle)."""

    def __init__(self) -> None:
        self.updates: dict[int, tuple[list[np.ndarray], int]] = {}

    def __call__(self, msg: Message, ctxt: Context, call_next) -> Message:  # type: ignore[no-untyped-def]
        out = call_next(msg, ctxt)
        fitres = compat.recorddict_to_fitres(out.content, keep_input=True)
        self.updates[ctxt.node_id] = (parameters_to_ndarrays(fitres.parameters), fitres.num_examples)
        return out


def _federation(settings: FlSettings, nodes: int = 3) -> tuple[LoopbackGrid, PlainUpdates, Context]:
    """`nodes` digits clients (one partition each) behind the router ClientApp, secure aggregation on."""
    oracle = PlainUpdates()
    app = make_client_app(settings, secure_mods=[oracle])
    configs = {1000 + i: {"partition-id": i, "num-partitions": nodes} for i in range(nodes)}
    grid = LoopbackGrid(app, configs, {"secure-aggregation": True})
    server_ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    return grid, oracle, server_ctx


def _fedavg(updates: list[tuple[list[np.ndarray], int]]) -> list[np.ndarray]:
    """Plain FedAvg, weighted by example count, in float64."""
    total = sum(w for _, w in updates)
    return [sum(arrs[i].astype(np.float64) * w for arrs, w in updates) / total for i in range(len(updates[0][0]))]


def _max_diff(state: dict, arrays: list[np.ndarray]) -> float:
    return max(
        float(np.max(np.abs(state[k].numpy() - a))) for k, a in zip(secagg.weight_names("digits"), arrays, strict=True)
    )


def test_server_sees_uniform_masks_and_decodes_exactly_the_fedavg_of_dp_updates() -> None:
    grid, oracle, server_ctx = _federation(SETTINGS)
    outcome = secagg.run_secure_rounds(grid, server_ctx, SETTINGS)

    masked = {
        node: [bytes_to_ndarray(b) for b in reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
        for node, reply in grid.received
        if reply.has_content() and Key.MASKED_PARAMETERS in reply.content.config_records.get(RECORD_KEY_CONFIGS, {})
    }
    assert sorted(masked) == sorted(oracle.updates) and len(masked) == 3
    for node, (plain, _) in oracle.updates.items():
        values = np.concatenate([a.ravel() for a in masked[node][1:]]).astype(np.float64)  # [0] is the weight
        assert values.size == sum(a.size for a in plain) == 4810
        # what the server got is indistinguishable from uniform on [0, 2^32) ...
        assert stats.kstest(values / secagg.MODULUS_RANGE, "uniform").pvalue > 1e-3
        # ... and carries no trace of the client's update, which is nothing like uniform
        flat = np.concatenate([a.ravel() for a in plain])
        assert abs(np.corrcoef(values, flat)[0, 1]) < 0.06
        spread = (flat + secagg.CLIPPING_RANGE) / (2 * secagg.CLIPPING_RANGE)
        assert stats.kstest(spread, "uniform").pvalue < 1e-12
    # the reply holds no plaintext weights at all
    for _, reply in grid.received:
        if reply.has_content():
            assert all(len(rec) == 0 for rec in reply.content.array_records.values())

    # the unmasked aggregate is FedAvg of the DP updates, up to SecAgg+'s quantization (step 16/2^22 ≈ 3.8e-6)
    expected = _fedavg(list(oracle.updates.values()))
    assert _max_diff(outcome.state_dict, expected) < 2e-5
    one = oracle.updates[min(oracle.updates)][0]
    assert max(float(np.max(np.abs(e - o))) for e, o in zip(expected, one, strict=True)) > 1e-3  # not one client's

    row = outcome.summary.rows[0]
    assert (row.clients, row.failed, row.sampled) == (3, 0, 3)
    privacy = outcome.summary.privacy
    assert privacy["server_sees"] == "masked sum only" and privacy["secure_aggregation"]["rounds_unmasked"] == 1
    assert "SecAgg+" in privacy["mechanism"] and "DP-SGD" in privacy["mechanism"]
    assert 0 < privacy["epsilon"] <= 3.0 and privacy["clients"] == 3


@pytest.mark.parametrize("stage", [Stage.COLLECT_MASKED_VECTORS, Stage.SHARE_KEYS])
def test_a_node_lost_mid_round_is_tolerated_and_the_sum_of_the_others_decoded(stage: str) -> None:
    grid, oracle, server_ctx = _federation(SETTINGS)
    victim = 1001
    grid.kill[victim] = stage  # dies training (its masks rebuilt from shares) or before sharing keys
    outcome = secagg.run_secure_rounds(grid, server_ctx, SETTINGS)

    assert victim not in oracle.updates and len(oracle.updates) == 2
    row = outcome.summary.rows[0]
    assert (row.clients, row.failed, row.sampled) == (2, 1, 3)
    assert outcome.summary.nodes_lost == [victim] and not outcome.summary.dropped_updates
    assert _max_diff(outcome.state_dict, _fedavg(list(oracle.updates.values()))) < 2e-5
    assert row.accuracy > 0.1


def test_too_many_lost_halts_the_round_and_keeps_the_model() -> None:
    grid, _, server_ctx = _federation(SETTINGS)
    grid.kill.update({1001: Stage.COLLECT_MASKED_VECTORS, 1002: Stage.COLLECT_MASKED_VECTORS})
    outcome = secagg.run_secure_rounds(grid, server_ctx, SETTINGS)
    row = outcome.summary.rows[0]
    assert row.clients == 0 and row.failed == 2
    assert outcome.summary.dropped_updates and outcome.summary.dropped_updates[0]["node"] == "aggregate"
    assert row.accuracy == pytest.approx(outcome.summary.initial_accuracy)


def test_settings_secure_aggregation_refuses_what_it_cannot_honour() -> None:
    assert secagg.enabled(SETTINGS, {"secure-aggregation": "true"})
    assert not secagg.enabled(SETTINGS, {"secure-aggregation": False}) and not secagg.enabled(SETTINGS, {})
    with pytest.raises(ConfigError, match="central DP"):
        secagg.check_settings(SETTINGS.replace(central_noise_multiplier=1.0))
    with pytest.raises(ConfigError, match="at least 3"):
        secagg.check_settings(SETTINGS.replace(min_train_nodes=2, min_available_nodes=2))
    # the setting itself refuses the same, whether built in-process or from a Flower run config
    assert SETTINGS.replace(secure_aggregation=True).secure_aggregation
    with pytest.raises(ConfigError, match="at least 3"):
        FlSettings(secure_aggregation=True)
    with pytest.raises(ConfigError, match="central DP"):
        FlSettings.from_run_config(
            {
                "secure-aggregation": "true",
                "min-train-nodes": 3,
                "min-available-nodes": 3,
                "central-noise-multiplier": 1.0,
            }
        )


def test_simulated_secure_aggregation_run_from_the_cli_records_what_the_server_sees(tmp_path: Path) -> None:
    """`sealgate fl run --secure-aggregation` over 3 simulated clients (Ray): every round is unmasked from all
    three masked updates, and provenance says the server saw only their masked sum, at the clients' own ε."""
    out = tmp_path / "out"
    args = ["run", "--clients", "3", "--rounds", "1", "--epsilon", "3", "--secure-aggregation", "--out", str(out)]
    res = CliRunner().invoke(fl_app, args)
    assert res.exit_code == 0, (res.output, res.exception)
    assert "secure aggregation: the server saw the masked sum only" in " ".join(res.output.split())
    summary = RunSummary.read(out / "summary.json")
    privacy = summary.privacy
    assert privacy["server_sees"] == "masked sum only" and "masked sum" in privacy["guarantee"]
    assert privacy["secure_aggregation"]["rounds_unmasked"] == 1 and "SecAgg+" in privacy["mechanism"]
    assert privacy["dp"] is True and privacy["accountant"] == "min(rdp, prv)" and privacy["clients"] == 3
    (row,) = summary.rows
    assert (row.clients, row.sampled, row.failed) == (3, 3, 0)
    assert row.epsilon is not None and row.epsilon == row.epsilon_prv < row.epsilon_rdp
    assert row.epsilon <= 3.0 * (1 + 1e-9) and row.epsilon == privacy["epsilon"]
    assert row.accuracy > summary.initial_accuracy
