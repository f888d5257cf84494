"""Run a federated fine-tuning on one machine with Flower's Simulation Engine (the embedded default).

`run_federated` binds the settings into a ServerApp and a ClientApp, runs them with
`flwr.simulation.run_simulation` (Ray backend, the only simulation backend Flower 1.42 ships), and reads
back what the ServerApp wrote: model.onnx, weights.safetensors and summary.json.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fl.client_app import Mod, make_client_app
from fl.dp_train import check_secure_mode
from fl.outputs import MODEL_FILE, SUMMARY_FILE, WEIGHTS_FILE
from fl.server_app import make_server_app
from fl.settings import FlSettings
from fl.summary import RoundRow, RunSummary
from fl.tasks import StateDict, load_weights
from gateway.errors import ConfigError, Unavailable
from gateway.fsutil import atomic_write

os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a Ray FutureWarning; CPU only
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Flower's Ray transport imports TensorFlow when present


@dataclass
class RunResult:
    """The outcome of a run: final weights, the per-round table and the privacy record, and where files lie."""

    state_dict: StateDict
    summary: RunSummary
    out_dir: Path

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
    """FlSettings for a simulated run of `clients` nodes (every node must be present for each round)."""
    if clients < 1:
        raise ConfigError("need at least one client")
    return FlSettings(
        task=task,
        num_server_rounds=rounds,
        epsilon=epsilon if epsilon is not None else 0.0,
        delta=delta,
        alpha=alpha if alpha is not None else 0.0,
        min_available_nodes=clients,
        min_train_nodes=min(2, clients),
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
    **overrides: Any,
) -> RunResult:
    """Fine-tune `task` over `clients` simulated nodes for up to `rounds` rounds at (ε, δ) per client.

    `epsilon=None` trains without DP. `start_weights` are safetensors bytes (the served release's weights);
    None starts from a seeded fresh model. Other FlSettings fields (lr, batch_size, max_grad_norm,
    noise_multiplier, budget_epsilon, central_noise_multiplier, ...) pass through `overrides`.
    """
    from flwr.simulation import run_simulation

    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="sealgate-fl-"))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sealgate-fl-start-") as tmp:
        start_path = None
        if start_weights is not None:
            load_weights(start_weights)  # refuse anything that is not safetensors before starting nodes
            start_path = Path(tmp) / "start.safetensors"
            atomic_write(start_path, start_weights, mode=0o600)
        cfg = settings_for(task, clients, rounds, epsilon, delta, alpha, out, start_path, **overrides)
        check_secure_mode(cfg)
        (out / SUMMARY_FILE).unlink(missing_ok=True)
        cpus = num_cpus or max(1, min(clients, os.cpu_count() or 1))
        backend = {
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": cpus, "num_gpus": 0, "logging_level": "ERROR", "log_to_driver": verbose},
        }
        with _quiet_flower(verbose), _progress(cfg, show_progress) as progress:
            run_simulation(
                server_app=make_server_app(cfg, progress),
                client_app=make_client_app(cfg, client_mods),
                num_supernodes=clients,
                backend_config=backend,  # type: ignore[arg-type]
                verbose_logging=verbose,
            )
    if not (out / SUMMARY_FILE).exists():
        raise Unavailable("the federated run ended without a summary; see the log above")
    summary = RunSummary.read(out / SUMMARY_FILE)
    return RunResult(state_dict=load_weights((out / WEIGHTS_FILE).read_bytes()), summary=summary, out_dir=out)


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
