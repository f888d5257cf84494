"""Run a federated fine-tuning on one machine with Flower's Simulation Engine (the embedded default).

`run_federated` binds the settings into a ServerApp and a ClientApp, runs them with
`flwr.simulation.run_simulation` (Ray backend, the only simulation backend Flower 1.42 ships), and reads
back what the ServerApp wrote: model.onnx, weights.safetensors and summary.json. Every setting is checked
before Ray or Flower start; Ray's session files and Flower's home folder live in temporary folders of this
run, removed when it ends.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fl import secagg
from fl.client_app import Mod, make_client_app
from fl.data import client_partitions, public_data
from fl.dp_train import check_secure_mode
from fl.outputs import MODEL_FILE, SUMMARY_FILE, WEIGHTS_FILE
from fl.server_app import make_server_app
from fl.settings import FlSettings
from fl.summary import RoundRow, RunSummary, complete_privacy_record
from fl.tasks import StateDict, get_task, load_into, load_weights
from gateway.errors import ConfigError, Unavailable
from gateway.fsutil import atomic_write

os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a Ray FutureWarning; CPU only
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Flower's Ray transport imports TensorFlow when present

DEFAULT_OUT = Path("fl-out")  # under the current folder, so a run's results are where the user expects them
OUT_MARKER = ".sealgate-fl-out"  # marks a folder sealgate made, which a later run may overwrite


@dataclass
class RunResult:
    """The outcome of a run: final weights, the per-round table and the privacy record, and where files lie."""

    state_dict: StateDict
    summary: RunSummary
    out_dir: Path
    scratch: tuple[Path, ...] = ()  # what the engine wrote to during the run (Ray sessions, FLWR_HOME): removed

    @property
    def rows(self) -> list[RoundRow]:
        """One row per completed round."""
        return self.summary.rows

    @property
    def privacy(self) -> dict[str, Any]:
        """The privacy summary for provenance (ε, δ, accountant, noise, clipping, rounds, clients, sizes)."""
        return self.summary.privacy

    @property
    def onnx_path(self) -> Path:
        """The exported ONNX model."""
        return self.out_dir / MODEL_FILE

    @property
    def weights_path(self) -> Path:
        """The final weights as safetensors."""
        return self.out_dir / WEIGHTS_FILE


def settings_for(
    task: str,
    clients: int,
    rounds: int,
    epsilon: float | None,
    delta: float,
    alpha: float | None,
    out_dir: Path,
    start_weights_path: Path | None,
    **overrides: Any,
) -> FlSettings:
    """FlSettings for a simulated run of `clients` nodes (every node must be present for each round);
    `epsilon=None` means no DP (no_dp), the only way to train without it."""
    if clients < 1:
        raise ConfigError("need at least one client")
    overrides.setdefault("no_dp", epsilon is None)
    per_round = 3 if overrides.get("secure_aggregation") else 2  # SecAgg+ needs at least 3 clients a round
    return FlSettings(
        task=task,
        num_server_rounds=rounds,
        epsilon=epsilon if epsilon is not None else 0.0,
        delta=delta,
        alpha=alpha if alpha is not None else 0.0,
        min_available_nodes=clients,
        min_train_nodes=min(per_round, clients),
        out_dir=str(out_dir),
        start_weights=str(start_weights_path) if start_weights_path else "",
        **overrides,
    )


@contextmanager
def _quiet_flower(verbose: bool) -> Iterator[None]:
    """Turn Flower's per-round INFO chatter down for the duration (the rich progress replaces it)."""
    logger = logging.getLogger("flwr")
    level = logger.level
    root_level = logging.getLogger().level  # Ray sets the root logger's level in this process: put it back
    if not verbose:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
        logging.getLogger().setLevel(root_level)


def preflight(cfg: FlSettings, clients: int, start_weights: bytes | None) -> None:
    """Every check that can fail before Ray or Flower start: task, δ < 1/n for the smallest client, public split,
    secure mode, secure aggregation (≥ 3 clients, no central DP), start weights that fit the task's model."""
    spec = get_task(cfg.task)
    if cfg.public_size:
        public_data(cfg.task, cfg.seed, cfg.public_size)
    sizes = [len(p) for p in client_partitions(cfg.task, cfg.seed, clients, cfg.dirichlet_alpha, cfg.public_size)]
    cfg.check_delta(min(sizes))
    check_secure_mode(cfg)
    if cfg.secure_aggregation:
        secagg.check_settings(cfg)
    if start_weights is not None:
        load_into(spec.model_cls(), load_weights(start_weights), f"start weights for task {cfg.task!r}")


def prepare_out_dir(out: Path, force: bool) -> Path:
    """Create `out` (marked as sealgate's); refuse a non-empty folder sealgate did not make unless `force`."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / OUT_MARKER).is_file() and not force:
        raise ConfigError(f"--out {out} is not empty and was not made by sealgate; choose another folder or --force")
    out.mkdir(parents=True, exist_ok=True)
    (out / OUT_MARKER).write_text(json.dumps({"made_by": "sealgate fl run"}) + "\n", encoding="utf-8")
    for name in (MODEL_FILE, WEIGHTS_FILE, SUMMARY_FILE):
        (out / name).unlink(missing_ok=True)  # a failed run must not leave the last run's results looking new
    return out


@dataclass
class EngineScratch:
    """Temporary folders for the simulation engine, and the `ray.init` arguments that point Ray at its own."""

    ray_args: dict[str, Any]
    paths: tuple[Path, ...]


@contextmanager
def engine_scratch() -> Iterator[EngineScratch]:
    """Temporary folders for what the simulation engine writes (Ray's session files, Flower's home), removed
    afterwards; Ray gets its own only when this run starts it (not when the caller already did)."""
    import ray

    # under /tmp, short: Ray's socket paths must fit in 107 bytes (a long TMPDIR would not); mkdtemp makes it
    # private (0700) and unpredictable, so the fixed parent is safe
    short = "/tmp" if os.path.isdir("/tmp") else None  # noqa: S108
    ray_tmp = Path(tempfile.mkdtemp(prefix="sg-ray-", dir=short))
    flwr_home = Path(tempfile.mkdtemp(prefix="sealgate-flwr-"))
    saved = os.environ.get("FLWR_HOME")
    os.environ["FLWR_HOME"] = str(flwr_home)
    ours = not ray.is_initialized()
    try:
        yield EngineScratch({"_temp_dir": str(ray_tmp)} if ours else {}, (ray_tmp, flwr_home))
    finally:
        if saved is None:
            os.environ.pop("FLWR_HOME", None)
        else:
            os.environ["FLWR_HOME"] = saved
        if ours and ray.is_initialized():  # Flower shuts Ray down at the end of a run, but not after every failure
            ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        shutil.rmtree(flwr_home, ignore_errors=True)


def run_federated(
    task: str = "digits",
    clients: int = 10,
    rounds: int = 5,
    epsilon: float | None = 3.0,
    delta: float = 1e-5,
    alpha: float | None = None,
    start_weights: bytes | None = None,
    out_dir: str | Path | None = None,
    *,
    show_progress: bool = False,
    verbose: bool = False,
    num_cpus: int | None = None,
    client_mods: Sequence[Mod] = (),
    force: bool = False,
    **overrides: Any,
) -> RunResult:
    """Fine-tune `task` over `clients` simulated nodes for up to `rounds` rounds at (ε, δ) per client.

    `epsilon=None` trains without DP (recorded as such). `start_weights` are safetensors bytes (the served
    release's weights); None starts from a seeded fresh model. Results go to `out_dir` (default ./fl-out).
    Other FlSettings fields (lr, batch_size, max_grad_norm, noise_multiplier, secure_aggregation, ...) pass
    through `overrides`.
    """
    out = Path(out_dir) if out_dir is not None else DEFAULT_OUT
    cfg = settings_for(task, clients, rounds, epsilon, delta, alpha, out, None, **overrides)
    preflight(cfg, clients, start_weights)
    prepare_out_dir(out, force)
    from flwr.simulation import run_simulation

    with tempfile.TemporaryDirectory(prefix="sealgate-fl-start-") as tmp:
        if start_weights is not None:
            start_path = Path(tmp) / "start.safetensors"
            atomic_write(start_path, start_weights, mode=0o600)
            cfg = cfg.replace(start_weights=str(start_path))
        cpus = num_cpus or max(1, min(clients, os.cpu_count() or 1))
        with _quiet_flower(verbose), _progress(cfg, show_progress) as progress, engine_scratch() as scratch:
            backend = {
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {
                    "num_cpus": cpus,
                    "num_gpus": 0,
                    "logging_level": "ERROR",
                    "log_to_driver": verbose,
                    **scratch.ray_args,
                },
            }
            run_simulation(
                server_app=make_server_app(cfg, progress),
                client_app=make_client_app(cfg, client_mods),
                num_supernodes=clients,
                backend_config=backend,
                verbose_logging=verbose,
            )
    if not (out / SUMMARY_FILE).exists():
        raise Unavailable("the federated run ended without a summary; see the log above")
    summary = RunSummary.read(out / SUMMARY_FILE)
    if complete_privacy_record(summary, cfg):
        atomic_write(out / SUMMARY_FILE, summary.to_json().encode("utf-8"))
    weights = load_weights((out / WEIGHTS_FILE).read_bytes())
    return RunResult(state_dict=weights, summary=summary, out_dir=out, scratch=scratch.paths)


@contextmanager
def _progress(cfg: FlSettings, show: bool) -> Iterator[Any]:
    """A rich progress bar over rounds, fed by the ServerApp after each round (None when not shown)."""
    if not show:
        yield None
        return
    columns = (
        TextColumn("[bold]rounds"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task_id = bar.add_task("", total=cfg.num_server_rounds)

        def update(row: RoundRow) -> None:
            """Advance one round and show its accuracy and ε."""
            eps = "no DP" if row.epsilon is None else f"ε={row.epsilon:.3f}"
            bar.update(task_id, advance=1, description=f"acc={row.accuracy:.3f} {eps}")

        yield update
