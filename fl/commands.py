"""`sealgate fl ...`: run a federated DP fine-tuning on this machine and print its per-round table.

Registered by the main CLI as a sub-app; errors are sealgate's typed errors, which the main CLI prints as
one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fl.runner import run_federated
from fl.tasks import TASKS
from gateway.errors import ConfigError

fl_app = typer.Typer(
    name="fl",
    help="Federated fine-tuning with differential privacy (Flower + Opacus).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()


@fl_app.callback()
def _group() -> None:
    """Federated fine-tuning with differential privacy (Flower + Opacus)."""


@fl_app.command("run")
def run_cmd(
    task: Annotated[str, typer.Option(help=f"Task: {', '.join(sorted(TASKS))}.")] = "digits",
    clients: Annotated[int, typer.Option(help="Simulated clients (SuperNodes).")] = 10,
    rounds: Annotated[int, typer.Option(help="Server rounds (at most; the budget may stop earlier).")] = 5,
    epsilon: Annotated[float, typer.Option(help="Target ε per client for the whole run; 0 = no DP.")] = 3.0,
    delta: Annotated[float, typer.Option(help="δ of the (ε, δ) guarantee.")] = 1e-5,
    alpha: Annotated[float | None, typer.Option(help="Dirichlet α over labels (non-IID); omit for IID.")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder for model.onnx, weights, summary.")] = None,
    start: Annotated[Path | None, typer.Option(help="Start weights (safetensors), e.g. the served release's.")] = None,
    noise_multiplier: Annotated[float, typer.Option(help="Fixed noise multiplier instead of one from ε.")] = 0.0,
    budget: Annotated[float, typer.Option(help="ε budget that stops the run (default: --epsilon).")] = 0.0,
    max_grad_norm: Annotated[float, typer.Option(help="Per-sample clipping norm.")] = 1.0,
    lr: Annotated[float, typer.Option(help="Client learning rate.")] = 0.5,
    batch_size: Annotated[int, typer.Option(help="Expected batch size (Poisson sampling).")] = 32,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 1,
    central_noise: Annotated[float, typer.Option(help="Central DP noise multiplier (client level); 0 = off.")] = 0.0,
    central_clip: Annotated[float, typer.Option(help="Central DP clipping norm of client updates.")] = 1.0,
    secure_mode: Annotated[bool, typer.Option(help="Opacus secure mode (needs torchcsprng).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the data split and partitions (not of DP noise).")] = 0,
    verbose: Annotated[bool, typer.Option(help="Show Flower's own log.")] = False,
) -> None:
    """Fine-tune on simulated private clients with DP-SGD and print the per-round summary."""
    start_bytes = None
    if start is not None:
        try:
            start_bytes = start.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {start}: {exc}") from None
    result = run_federated(
        task=task,
        clients=clients,
        rounds=rounds,
        epsilon=epsilon if epsilon > 0 else None,
        delta=delta,
        alpha=alpha,
        start_weights=start_bytes,
        out_dir=out_dir,
        show_progress=True,
        verbose=verbose,
        noise_multiplier=noise_multiplier,
        budget_epsilon=budget,
        max_grad_norm=max_grad_norm,
        lr=lr,
        batch_size=batch_size,
        local_epochs=local_epochs,
        central_noise_multiplier=central_noise,
        central_clipping_norm=central_clip,
        secure_mode=secure_mode,
        seed=seed,
    )
    out.print(result.summary.table())
    p = result.privacy
    if p.get("epsilon") is not None:
        out.print(
            f"privacy: ε={p['epsilon']:.4f}, δ={p['delta']:g} ({p['accountant']}), "
            f"noise multiplier {p['noise_multiplier']}, clipping {p['max_grad_norm']}, "
            f"{p['rounds']} rounds, {p['clients']} clients"
        )
    else:
        out.print("privacy: no DP")
    if result.summary.stopped_early:
        out.print(f"[yellow]stopped early:[/yellow] {result.summary.stop_reason}", highlight=False)
    out.print(f"wrote {result.onnx_path}, {result.weights_path}, {result.out_dir / 'summary.json'}")
