"""`sealgate fl ...`: run a federated DP fine-tuning on this machine and print its per-round table.

Registered by the main CLI as a sub-app; errors are sealgate's typed errors, which the main CLI prints as
one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fl.outputs import MODEL_FILE, SUMMARY_FILE, WEIGHTS_FILE
from fl.runner import DEFAULT_OUT, run_federated
from fl.summary import CENTRAL_ONLY_WARNING, NO_DP_WARNING
from fl.tasks import TASKS
from gateway.errors import ConfigError

DEFAULT_EPSILON = 3.0

fl_app = typer.Typer(
    name="fl",
    help="Federated fine-tuning with differential privacy (Flower + Opacus).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


@fl_app.callback()
def _group() -> None:
    """Federated fine-tuning with differential privacy (Flower + Opacus)."""


@fl_app.command("run")
def run_cmd(
    task: Annotated[str, typer.Option(help=f"Task: {', '.join(sorted(TASKS))}.")] = "digits",
    clients: Annotated[int, typer.Option(help="Simulated clients (SuperNodes).")] = 10,
    rounds: Annotated[int, typer.Option(help="Server rounds (at most; the budget may stop earlier).")] = 5,
    epsilon: Annotated[
        float | None, typer.Option(help="Target ε per client for the whole run: finite, > 0 (default 3).")
    ] = None,
    no_dp: Annotated[
        bool, typer.Option("--no-dp", help="Train WITHOUT differential privacy (recorded; release gates refuse it).")
    ] = False,
    delta: Annotated[float, typer.Option(help="δ of the (ε, δ) guarantee.")] = 1e-5,
    alpha: Annotated[float | None, typer.Option(help="Dirichlet α over labels (non-IID); omit for IID.")] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for model.onnx, weights.safetensors, summary.json.")
    ] = DEFAULT_OUT,
    force: Annotated[bool, typer.Option(help="Write into a non-empty --out folder sealgate did not make.")] = False,
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
    secure_aggregation: Annotated[
        bool,
        typer.Option(
            "--secure-aggregation",
            help="SecAgg+: the server sees only the masked sum of the DP updates; needs ≥ 3 clients.",
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the data split and partitions (not of DP noise).")] = 0,
    verbose: Annotated[bool, typer.Option(help="Show Flower's own log.")] = False,
) -> None:
    """Fine-tune on simulated private clients with DP-SGD and print the per-round summary."""
    if no_dp and (epsilon is not None or noise_multiplier or budget):
        raise ConfigError("--no-dp contradicts --epsilon / --noise-multiplier / --budget: choose one")
    if no_dp:
        warning = CENTRAL_ONLY_WARNING if central_noise > 0 else NO_DP_WARNING
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
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
        epsilon=None if no_dp else (DEFAULT_EPSILON if epsilon is None else epsilon),
        delta=delta,
        alpha=alpha,
        start_weights=start_bytes,
        out_dir=out_dir,
        force=force,
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
        secure_aggregation=secure_aggregation,
        seed=seed,
    )
    out.print(result.summary.table())
    p = result.privacy
    if p.get("epsilon") is not None:
        both = ""
        if p.get("epsilon_rdp") is not None and p.get("epsilon_prv") is not None:
            both = f" (RDP {p['epsilon_rdp']:.4f}, PRV {p['epsilon_prv']:.4f}: the tighter counts)"
        out.print(
            f"privacy: ε={p['epsilon']:.4f}{both}, δ={p['delta']:g}, "
            f"noise multiplier {_num(p['noise_multiplier'])}, clipping {p['max_grad_norm']}, "
            f"{p['rounds']} rounds, {p['clients']} clients",
            highlight=False,
            soft_wrap=True,
        )
    else:
        out.print("privacy: no DP", highlight=False)
    if p.get("server_sees"):
        out.print(f"secure aggregation: the server saw the {p['server_sees']}", highlight=False, soft_wrap=True)
    for warning in p.get("warnings", []):
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    if result.summary.stopped_early:
        out.print(f"[yellow]stopped early:[/yellow] {result.summary.stop_reason}", highlight=False)
    where = result.out_dir.resolve()
    out.print(f"results in {where}: {MODEL_FILE}, {WEIGHTS_FILE}, {SUMMARY_FILE}", highlight=False, soft_wrap=True)


def _num(value: object) -> str:
    """A noise multiplier (or the list of them, one per client size) to 4 significant digits."""
    if isinstance(value, list):
        return "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
