"""Unsafe privacy settings are refused before Ray or Flower start (issue 14): ε finite and positive, δ in (0, 1/n),
no DP only with an explicit --no-dp (warned about and recorded); a bad task fails the same way; nothing is left
behind. Also the --out folder rules. Only the last test runs Flower (slow)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import flwr.simulation
import pytest
from typer.testing import CliRunner

from fl import runner
from fl.commands import fl_app
from fl.data import client_partitions
from fl.dp_train import make_plan
from fl.runner import OUT_MARKER, prepare_out_dir
from fl.settings import FlSettings
from fl.summary import CENTRAL_ONLY_WARNING, NO_DP_WARNING, RunSummary, complete_privacy_record
from gateway.errors import ConfigError

SEALGATE = Path(sys.executable).with_name("sealgate")
SMALLEST = min(len(p) for p in client_partitions("digits", 0, 10, None))  # `fl run`'s default: 10 IID clients


def _engine_dirs() -> set[str]:
    """Ray sessions this process started (Ray names them after the driver's pid) and sealgate's engine folders."""
    pid = os.getpid()
    ray = {p.name for p in Path("/tmp/ray").glob(f"session_*_{pid}")}
    return ray | {str(p) for p in Path("/tmp").glob(f"sg-ray-*/session_*_{pid}")}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty current folder, and a tripwire: the simulation engine must never be reached."""

    def tripwire(*_: object, **__: object) -> None:
        raise AssertionError("the simulation engine was started")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(flwr.simulation, "run_simulation", tripwire)
    yield tmp_path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--epsilon", "-1"], "epsilon must be a finite positive number, got -1 (training without DP needs --no-dp)"),
        (["--epsilon", "0"], "epsilon must be a finite positive number, got 0"),
        (["--epsilon", "nan"], "epsilon must be a finite positive number, got nan"),
        (["--epsilon", "inf"], "epsilon must be a finite positive number, got inf"),
        (["--delta", "0"], "delta must be in (0, 1)"),
        (["--delta", "1"], "delta must be in (0, 1)"),
        (["--delta", repr(1 / SMALLEST)], f"must be below 1/n = {1 / SMALLEST:.3g} (the smallest client holds n = "),
        (["--delta", "0.05"], f"holds n = {SMALLEST} rows"),
        (["--task", "nope"], "unknown task 'nope'; known: ctr, digits"),
        (["--no-dp", "--epsilon", "3"], "--no-dp contradicts --epsilon"),
        (["--no-dp", "--noise-multiplier", "1"], "--no-dp contradicts"),
        (["--noise-multiplier", "-1"], "noise-multiplier must be >= 0, got -1"),
        (["--secure-aggregation", "--clients", "2"], "secure aggregation needs at least 3 clients per round"),
        (["--secure-aggregation", "--central-noise", "1"], "central DP (server-side clipping) needs them"),
    ],
)
def test_unsafe_settings_are_refused_in_one_line_before_anything_starts(
    workdir: Path, args: list[str], message: str
) -> None:
    before = _engine_dirs()
    res = CliRunner().invoke(fl_app, ["run", *args])
    assert isinstance(res.exception, ConfigError), (res.exception, res.output)
    text = str(res.exception)
    assert message in text and "\n" not in text
    assert list(workdir.iterdir()) == []  # no ./fl-out, nothing else
    assert _engine_dirs() == before


def test_the_real_cli_prints_one_line_and_exits_non_zero(tmp_path: Path) -> None:
    env = {**os.environ, "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    proc = subprocess.run(
        [str(SEALGATE), "fl", "run", "--epsilon", "-1"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: epsilon must be a finite positive number, got -1 (training without DP needs --no-dp)"
    ]
    assert "privacy: no DP" not in proc.stdout and list(tmp_path.iterdir()) == []


def test_run_config_without_a_positive_epsilon_is_refused_unless_no_dp() -> None:
    with pytest.raises(ConfigError, match="finite positive"):
        FlSettings.from_run_config({"epsilon": 0.0})
    cfg = FlSettings.from_run_config({"epsilon": 0.0, "no-dp": True})
    assert not cfg.dp and cfg.budget is None
    assert FlSettings.from_run_config(cfg.to_run_config()) == cfg
    fixed = FlSettings(noise_multiplier=1.2)  # fixed noise still needs an ε: it is the budget
    assert fixed.dp and fixed.budget == 3.0
    with pytest.raises(ConfigError, match="no-dp contradicts"):
        FlSettings(no_dp=True, noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="unknown task"):
        FlSettings.from_run_config({"task": "mnist"})


def test_delta_must_be_below_one_over_n_and_each_client_checks_its_own_n() -> None:
    cfg = FlSettings(delta=0.01)
    cfg.check_delta(99)  # 0.01 < 1/99
    with pytest.raises(ConfigError, match=r"delta 0.01 must be below 1/n = 0.01 \(the smallest client holds n = 100"):
        cfg.check_delta(100)
    FlSettings(delta=0.5, no_dp=True).check_delta(100)  # no DP: no δ to honour
    # a node with its own data file knows n only at the node: its plan refuses too, before training
    with pytest.raises(ConfigError, match="n = 150 rows"):
        make_plan(150, FlSettings(delta=1 / 150))
    assert make_plan(150, FlSettings(delta=1e-5, num_server_rounds=1)).noise_multiplier > 0


def test_no_dp_is_recorded_with_a_warning_and_dp_runs_record_both_accountants() -> None:
    summary = RunSummary(task="digits", rounds_requested=1)
    summary.privacy = {"epsilon": None, "per_client": {}}
    assert complete_privacy_record(summary, FlSettings(no_dp=True))
    assert summary.privacy["dp"] is False and summary.privacy["no_dp"] is True
    assert summary.privacy["warnings"] == [NO_DP_WARNING]
    assert "WARNING: trained WITHOUT differential privacy" in str(summary.table().caption)
    assert not complete_privacy_record(summary, FlSettings(no_dp=True))  # idempotent
    again = RunSummary.from_json(summary.to_json())
    assert again.privacy["dp"] is False and again.privacy["warnings"] == [NO_DP_WARNING]

    central = RunSummary(task="digits", rounds_requested=1)
    central.privacy = {"epsilon": None, "per_client": {}}
    complete_privacy_record(central, FlSettings(no_dp=True, central_noise_multiplier=1.0))
    assert central.privacy["dp"] is True and central.privacy["warnings"] == [CENTRAL_ONLY_WARNING]

    dp = RunSummary(task="digits", rounds_requested=2)
    client = {"noise_multiplier": 1.0, "sample_rate": 1 / 15, "steps": 30, "epsilon": 1.0}
    dp.privacy = {"epsilon": 1.0, "per_client": {"7": client}}
    complete_privacy_record(dp, FlSettings())
    assert dp.privacy["dp"] is True and dp.privacy["warnings"] == [] and dp.privacy["accountant"] == "min(rdp, prv)"
    assert dp.privacy["epsilon_prv"] < dp.privacy["epsilon_rdp"]
    assert math.isclose(client["epsilon_rdp"], dp.privacy["epsilon_rdp"])


def test_out_folder_not_made_by_sealgate_is_refused_unless_forced(workdir: Path) -> None:
    foreign = workdir / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty and was not made by sealgate"):
        prepare_out_dir(foreign, force=False)
    res = CliRunner().invoke(fl_app, ["run", "--clients", "2", "--out", str(foreign)])
    assert isinstance(res.exception, ConfigError) and sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    prepare_out_dir(foreign, force=True)
    assert (foreign / "notes.txt").read_text() == "keep me" and (foreign / OUT_MARKER).is_file()
    # sealgate's own folder is reused, and the last run's results go first (a failed run cannot pass them off)
    ours = prepare_out_dir(workdir / "fl-out", force=False)
    (ours / "summary.json").write_text("{}")
    prepare_out_dir(ours, force=False)
    assert not (ours / "summary.json").exists()
    (workdir / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a folder"):
        prepare_out_dir(workdir / "file", force=True)


@pytest.mark.slow
def test_no_dp_run_writes_to_default_out_warns_records_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLWR_HOME", raising=False)
    before = _engine_dirs()
    scratch: list[Path] = []
    real = runner.engine_scratch

    @contextmanager
    def watched() -> Iterator[runner.EngineScratch]:
        with real() as s:  # the real one, only noting where the engine was told to write
            scratch.extend(s.paths)
            yield s

    monkeypatch.setattr(runner, "engine_scratch", watched)
    res = CliRunner().invoke(fl_app, ["run", "--no-dp", "--clients", "2", "--rounds", "1"])
    assert res.exit_code == 0, res.output
    output = " ".join(res.output.split())
    assert f"warning: {NO_DP_WARNING}" in output and "privacy: no DP" in output
    out = tmp_path / "fl-out"
    assert f"results in {out.resolve()}: model.onnx" in output
    assert {p.name for p in out.iterdir()} == {OUT_MARKER, "model.onnx", "weights.safetensors", "summary.json"}
    privacy = json.loads((out / "summary.json").read_text())["privacy"]
    assert privacy["dp"] is False and privacy["no_dp"] is True and privacy["warnings"] == [NO_DP_WARNING]
    assert privacy["epsilon"] is None
    assert _engine_dirs() == before and "FLWR_HOME" not in os.environ
    assert len(scratch) == 2 and not any(p.exists() for p in scratch)
