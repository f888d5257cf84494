"""Fast checks of the federated pieces that need no Flower run: tasks, partitions, weights, export,
settings, accounting against Opacus' own accountant, update validation, client state and the summary."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from flwr.app import ConfigRecord, Context, RecordDict
from opacus.accountants import PRVAccountant, RDPAccountant

from fl import accounting, client_state
from fl.data import client_data, client_partitions, heldout_data, public_data
from fl.dp_train import Plan, make_plan, predicted_epsilon, train_local
from fl.settings import FlSettings
from fl.summary import RoundRow, RunSummary, round_epsilons
from fl.tasks import (
    CtrMLP,
    DigitsMLP,
    ctr_bayes_accuracy,
    evaluate,
    export_onnx,
    load_ctr_split,
    load_digits_split,
    load_into,
    load_weights,
    make_ctr_data,
    partition,
    save_weights,
    train_centralized,
)
from fl.validation import update_problem
from gateway.errors import ConfigError, InvalidInput


def test_digits_split_is_scaled_float32_and_stratified() -> None:
    x_tr, _, x_te, y_te = load_digits_split(seed=0)
    assert x_tr.dtype == np.float32 and x_tr.shape[1] == 64 and len(x_te) == 360
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    assert set(np.unique(y_te)) == set(range(10))


@pytest.mark.parametrize("alpha", [None, 0.5, 0.05])
def test_partition_covers_every_row_once_and_no_client_is_empty(alpha: float | None) -> None:
    y = load_digits_split()[1]
    parts = partition(y, 10, alpha, seed=3)
    joined = np.concatenate(parts)
    assert len(joined) == len(y) and len(np.unique(joined)) == len(y)
    assert min(len(p) for p in parts) >= 1
    assert [p.tolist() for p in parts] == [p.tolist() for p in partition(y, 10, alpha, seed=3)]


def test_dirichlet_partition_is_label_skewed_and_iid_is_not() -> None:
    y = load_digits_split()[1]

    def skew(parts: list[np.ndarray]) -> float:
        return float(np.mean([np.bincount(y[p], minlength=10).max() / len(p) for p in parts]))

    assert skew(partition(y, 10, 0.1, seed=0)) > 2 * skew(partition(y, 10, None, seed=0))


def test_partition_rejects_nonsense() -> None:
    with pytest.raises(InvalidInput):
        partition(np.zeros(5, dtype=np.int64), 6, None, 0)
    with pytest.raises(InvalidInput):
        partition(np.zeros(5, dtype=np.int64), 2, -1.0, 0)


def test_public_rows_never_reach_clients() -> None:
    x_pub, _ = public_data("digits", 0, 200)
    parts = client_partitions("digits", 0, 5, None, public_size=200)
    x_tr = load_digits_split(0)[0]
    client_rows = {x_tr[i].tobytes() for p in parts for i in p}
    assert sum(len(p) for p in parts) == len(x_tr) - 200
    assert not any(row.tobytes() in client_rows for row in x_pub)
    x_c, y_c = client_data("digits", 0, 4, 5, None, 200)
    assert len(x_c) == len(parts[4]) and len(y_c) == len(x_c)
    assert len(heldout_data("digits", 0)[0]) == 360


def test_ctr_data_follows_its_generating_model() -> None:
    x, y = make_ctr_data(20000, seed=1)
    assert x.dtype == np.float32 and set(np.unique(y)) == {0, 1}
    assert ctr_bayes_accuracy(x, y) > 0.7  # the true model predicts well above the base rate
    assert np.array_equal(make_ctr_data(50, 2)[1], make_ctr_data(50, 2)[1])
    x_tr, y_tr, x_te, y_te = load_ctr_split(seed=0)
    model = train_centralized(CtrMLP(), x_tr, y_tr, epochs=5, lr=0.05, batch_size=64, seed=0)
    _, acc = evaluate(model, x_te, y_te)
    assert acc > ctr_bayes_accuracy(x_te, y_te) - 0.06


def test_weights_round_trip_and_garbage_is_refused() -> None:
    model = DigitsMLP()
    restored = load_weights(save_weights(model.state_dict()))
    assert all(torch.equal(restored[k], v) for k, v in model.state_dict().items())
    with pytest.raises(InvalidInput):
        load_weights(b"\x80\x04 this is a pickle, not safetensors")


def test_weights_of_another_model_are_refused_in_one_line() -> None:
    with pytest.raises(
        ConfigError, match=r"^start weights do not fit DigitsMLP: net.0.weight: \(32, 16\) != \(64, 64\)"
    ):
        load_into(DigitsMLP(), CtrMLP().state_dict(), "start weights")
    with pytest.raises(ConfigError, match=r"missing net\.2\.bias"):
        load_into(DigitsMLP(), {k: v for k, v in DigitsMLP().state_dict().items() if k != "net.2.bias"}, "w")


def test_onnx_export_has_dynamic_batch_and_matches_torch(tmp_path) -> None:
    x_tr, y_tr, x_te, _ = load_digits_split()
    model = train_centralized(DigitsMLP(), x_tr[:300], y_tr[:300], epochs=2, lr=0.05, batch_size=32, seed=0)
    prefixed = {f"_module.{k}": v for k, v in model.state_dict().items()}  # as a GradSampleModule names them
    data = export_onnx(prefixed, DigitsMLP, tmp_path / "m.onnx", 64)
    assert (tmp_path / "m.onnx").read_bytes() == data
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"] and [o.name for o in sess.get_outputs()] == ["output"]
    for batch in (1, 17):
        got = sess.run(None, {"input": x_te[:batch]})[0]
        want = model(torch.from_numpy(x_te[:batch])).detach().numpy()
        assert got.shape == (batch, 10) and np.allclose(got, want, atol=1e-5)


def test_settings_round_trip_through_run_config_and_reject_bad_values() -> None:
    cfg = FlSettings(task="ctr", epsilon=8.0, alpha=0.5, secure_mode=True, num_server_rounds=7)
    assert FlSettings.from_run_config(cfg.to_run_config()) == cfg
    assert FlSettings.from_run_config({"num-server-rounds": 2, "epsilon": 3}).num_server_rounds == 2
    assert FlSettings(no_dp=True).budget is None and FlSettings(epsilon=3.0).budget == 3.0
    with pytest.raises(ConfigError):
        FlSettings(delta=1.5)
    with pytest.raises(ConfigError):
        FlSettings.from_run_config({"batch-size": "many"})


def test_accounting_matches_opacus_accountant_for_a_mixed_history() -> None:
    acc = RDPAccountant()
    history = [(1.1, 0.05, 40), (0.9, 0.1, 7), (1.1, 0.05, 3)]
    for sigma, q, steps in history:
        for _ in range(steps):
            acc.step(noise_multiplier=sigma, sample_rate=q)
    ours = accounting.epsilon_from_history(history, 1e-5)
    assert math.isclose(ours, acc.get_epsilon(delta=1e-5), rel_tol=1e-9)
    assert accounting.compose([(1.1, 0.05, 40)], (1.1, 0.05, 2)) == [(1.1, 0.05, 42)]
    sigma = accounting.rdp_noise_for_target(3.0, 1e-5, 0.05, 200)
    assert 2.9 < accounting.epsilon(sigma, 0.05, 200, 1e-5) <= 3.0
    assert accounting.central_epsilon(1.0, 0, 1e-5) == 0.0
    assert accounting.central_epsilon(1.0, 5, 1e-5) > accounting.central_epsilon(1.0, 2, 1e-5) > 0


@pytest.mark.parametrize("history", [[(1.0, 1 / 15, 30)], [(0.9, 1 / 8, 80)], [(1.1, 0.05, 40), (0.9, 0.1, 7)]])
def test_prv_is_tighter_than_rdp_on_the_same_history_and_matches_opacus(history: list) -> None:
    prv = PRVAccountant()
    prv.history = list(history)
    eps = accounting.epsilons_from_history(history, 1e-5)
    assert math.isclose(eps.prv, prv.get_epsilon(delta=1e-5, eps_error=accounting.PRV_EPS_ERROR), rel_tol=1e-9)
    assert 0 < eps.prv < eps.rdp and eps.tight == eps.prv and eps.accountant == "prv"
    assert accounting.tight_epsilon_from_history(history, 1e-5) == min(eps.rdp, eps.prv)


def test_noise_calibrated_on_the_tighter_accountant_is_smaller_and_stays_within_target() -> None:
    q, steps, target = 1 / 15, 45, 3.0
    sigma_rdp = accounting.rdp_noise_for_target(target, 1e-5, q, steps)
    sigma = accounting.noise_for_target(target, 1e-5, q, steps)
    assert sigma < 0.97 * sigma_rdp  # PRV lets the same ε carry less noise
    eps = accounting.epsilons_from_history([(sigma, q, steps)], 1e-5)
    assert (1 - accounting.EPS_SLACK) * target - 1e-9 <= eps.tight <= target < eps.rdp  # RDP alone would overspend
    with pytest.raises(ConfigError):
        accounting.noise_for_target(math.nan, 1e-5, q, steps)


def test_budget_and_reported_epsilon_use_the_tighter_accountant_with_opacus_cross_check() -> None:
    x, y = client_data("digits", 0, 2, 3, None)
    cfg = FlSettings(num_server_rounds=2, epsilon=2.0)
    plan = make_plan(len(y), cfg)
    result = train_local(DigitsMLP(), x, y, cfg, plan, [])
    # Opacus' own RDPAccountant agrees with the independent RDP computation on the history it kept
    assert math.isclose(result.epsilon_rdp, accounting.epsilon_from_history(result.history, cfg.delta), rel_tol=1e-9)
    assert result.epsilon_prv == accounting.prv_epsilon_from_history(result.history, cfg.delta)
    assert result.epsilon == min(result.epsilon_rdp, result.epsilon_prv) == result.epsilon_prv
    # the prediction the budget check uses is the tight one: after the last round ε is within target, RDP is not
    final = predicted_epsilon(result.history, plan, cfg.delta)
    assert final == accounting.tight_epsilon_from_history(
        accounting.compose(result.history, (plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)), cfg.delta
    )
    assert final <= 2.0 < accounting.epsilon(plan.noise_multiplier, plan.sample_rate, 2 * plan.steps_per_round, 1e-5)


def test_local_dp_round_carries_history_so_epsilon_is_cumulative() -> None:
    x, y = client_data("digits", 0, 0, 3, None)
    cfg = FlSettings(num_server_rounds=2, epsilon=3.0)
    plan = make_plan(len(y), cfg)
    assert plan.steps_per_round == math.ceil(len(y) / cfg.batch_size)
    history: list = []
    eps = []
    for _ in range(2):
        predicted = predicted_epsilon(history, plan, cfg.delta)
        result = train_local(DigitsMLP(), x, y, cfg, plan, history)
        history = result.history
        eps.append(result.epsilon)
        assert math.isclose(result.epsilon, predicted, rel_tol=1e-9)
    assert eps[0] < eps[1] <= 3.0
    assert history == [(plan.noise_multiplier, plan.sample_rate, 2 * plan.steps_per_round)]
    assert all(torch.isfinite(v).all() for v in result.state_dict.values())
    assert not any(k.startswith("_module.") for k in result.state_dict)


def test_head_only_fine_tuning_leaves_the_body_untouched() -> None:
    x, y = client_data("digits", 0, 1, 3, None)
    cfg = FlSettings(num_server_rounds=1, epsilon=3.0, head_only=True)
    model = DigitsMLP()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_local(model, x, y, cfg, make_plan(len(y), cfg), [])
    assert torch.equal(result.state_dict["net.0.weight"], before["net.0.weight"])
    assert not torch.equal(result.state_dict["net.2.weight"], before["net.2.weight"])


def test_project_flower_config_names_only_known_settings() -> None:
    with open(Path(__file__).resolve().parents[2] / "pyproject.toml", "rb") as fh:
        config = tomllib.load(fh)["tool"]["flwr"]["app"]["config"]
    known = set(FlSettings().to_run_config())
    assert set(config) <= known, f"unknown keys in [tool.flwr.app.config]: {set(config) - known}"
    FlSettings.from_run_config(config)


def test_client_state_survives_a_context_round_trip() -> None:
    ctx = Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})
    assert client_state.load_plan(ctx) is None and client_state.load_history(ctx) == []
    plan = Plan(num_examples=100, sample_rate=0.25, steps_per_round=4, noise_multiplier=1.2)
    client_state.save(ctx, plan, [(1.2, 0.25, 8)])
    assert isinstance(ctx.state.config_records[client_state.STATE_KEY], ConfigRecord)
    assert client_state.load_plan(ctx) == plan
    assert client_state.load_history(ctx) == [(1.2, 0.25, 8)]


def test_update_validation_flags_nan_shapes_names_and_norm() -> None:
    ref = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}
    ok = {"w": np.full((2, 2), 0.5, np.float32), "b": np.zeros(2, np.float32)}
    assert update_problem(ok, ref, 10.0) == (None, 1.0)
    nan = {**ok, "b": np.array([np.nan, 0], np.float32)}
    assert "NaN" in (update_problem(nan, ref, 10.0)[0] or "")
    inf = {**ok, "w": np.full((2, 2), np.inf, np.float32)}
    assert "NaN or infinite" in (update_problem(inf, ref, 10.0)[0] or "")
    assert "shape" in (update_problem({**ok, "b": np.zeros(3, np.float32)}, ref, 10.0)[0] or "")
    assert "names" in (update_problem({"w": ok["w"]}, ref, 10.0)[0] or "")
    assert "exceeds" in (update_problem({k: v * 1000 for k, v in ok.items()}, ref, 10.0)[0] or "")


def test_summary_json_round_trip_and_table_says_how_it_ended() -> None:
    summary = RunSummary(task="digits", rounds_requested=3, initial_accuracy=0.1, initial_loss=2.3)
    summary.rows.append(RoundRow(1, 0.5, 1.5, 1.2, 3, 0, 0, 3))
    summary.stopped_early, summary.stop_reason = True, "privacy budget: round 2 would exceed"
    summary.privacy = {"epsilon": 1.2, "delta": 1e-5, "bad": math.inf}
    again = RunSummary.from_json(summary.to_json())
    assert again.rows == summary.rows and again.privacy["bad"] is None and again.stopped_early
    assert "stopped early: privacy budget" in str(again.table().caption)
    with pytest.raises(ConfigError):
        RunSummary.from_json("{}")


def test_round_epsilons_take_the_worst_client_per_accountant_and_table_shows_both() -> None:
    clients = {
        1: {"steps": 30, "epsilon": 2.5, "epsilon-rdp": 2.9, "epsilon-prv": 2.5},
        2: {"steps": 15, "epsilon": 2.7, "epsilon-rdp": 3.1, "epsilon-prv": 2.7},
        3: {"steps": 15, "epsilon": math.nan, "epsilon-rdp": math.nan, "epsilon-prv": math.nan},  # a lying client
        4: {"epsilon-next": 9.0},  # asked, never trained
    }
    eps = round_epsilons(clients, dp=True)
    assert eps == {"epsilon": 2.7, "epsilon_rdp": 3.1, "epsilon_prv": 2.7}
    assert round_epsilons(clients, dp=False) == {"epsilon": None, "epsilon_rdp": None, "epsilon_prv": None}
    summary = RunSummary(task="digits", rounds_requested=1, initial_accuracy=0.1, initial_loss=2.3)
    summary.rows.append(RoundRow(1, 0.5, 1.5, clients=2, dropped=0, failed=0, sampled=2, **eps))
    table = summary.table()
    headers = [c.header for c in table.columns]
    assert headers[3:6] == ["ε (max client)", "ε RDP", "ε PRV"]
    assert [list(c.cells)[1] for c in table.columns[3:6]] == ["2.7000", "3.1000", "2.7000"]
