"""One client's local round: DP-SGD with Opacus (Poisson sampling, per-sample clipping, Gaussian noise).

The accountant's history comes in and goes out, so the ε after each round covers the whole run; ε is the tighter
of Opacus' RDP accountant (which also cross-checks fl.accounting) and the PRV analysis. Noise and
sampling draw from fresh OS entropy (or torchcsprng in secure mode), never from torch's fixed default seed.
"""

from __future__ import annotations

import importlib.util
import math
import secrets
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from opacus import GradSampleModule, PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fl import accounting
from fl.settings import FlSettings
from fl.tasks import StateDict, clean_state_dict
from gateway.errors import ConfigError


@dataclass(frozen=True)
class Plan:
    """The DP-SGD parameters of one client for the whole run, fixed before its first step."""

    num_examples: int
    sample_rate: float
    steps_per_round: int
    noise_multiplier: float


@dataclass
class LocalResult:
    """What a local round produced: new weights, the extended accountant history and the ε it implies
    (`epsilon` is the tighter of `epsilon_rdp`, Opacus' RDPAccountant's own figure, and `epsilon_prv`)."""

    state_dict: StateDict
    history: list[accounting.HistoryEntry]
    epsilon: float
    train_loss: float
    epsilon_rdp: float = math.inf
    epsilon_prv: float = math.inf


def make_plan(num_examples: int, settings: FlSettings) -> Plan:
    """Sample rate and steps as Opacus will use them, and the noise for the run's target ε over all its steps
    (calibrated on the tighter accountant); refuses δ >= 1/n for this client's n rows."""
    if num_examples < 1:
        raise ConfigError("a client without training rows cannot train")
    settings.check_delta(num_examples)
    batches = math.ceil(num_examples / settings.batch_size)
    sample_rate = 1.0 / batches
    steps = settings.local_epochs * batches
    if not settings.dp:
        sigma = 0.0
    elif settings.noise_multiplier > 0:
        sigma = settings.noise_multiplier
    else:
        sigma = accounting.noise_for_target(
            settings.epsilon, settings.delta, sample_rate, steps * settings.num_server_rounds
        )
    return Plan(num_examples, sample_rate, steps, sigma)


def predicted_epsilon(history: list[accounting.HistoryEntry], plan: Plan, delta: float) -> float:
    """ε (the tighter accountant) after one more round of `plan` on top of `history`."""
    return accounting.tight_epsilon_from_history(
        accounting.compose(history, (plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)), delta
    )


def check_secure_mode(settings: FlSettings) -> None:
    """Opacus' secure mode needs torchcsprng; say so before any training rather than mid-run."""
    if settings.secure_mode and importlib.util.find_spec("torchcsprng") is None:
        raise ConfigError("secure-mode needs the torchcsprng package (a CSPRNG for noise and sampling); not installed")


def _fresh_generator() -> torch.Generator:
    """A torch generator seeded from OS entropy: DP noise and sampling must not be predictable."""
    return torch.Generator().manual_seed(secrets.randbits(63))


def freeze_to_head(model: nn.Module) -> list[nn.Parameter]:
    """Freeze every parameter but those of the last layer; returns the trainable ones.

    Private fine-tuning of the head alone: fewer noised coordinates, so far less noise per useful signal.
    """
    names = [name for name, _ in model.named_parameters()]
    head = names[-1].rsplit(".", 1)[0] + "."
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(head))
        if param.requires_grad:
            trainable.append(param)
    return trainable


def _batches(loader: DataLoader[tuple[torch.Tensor, ...]], epochs: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Every batch of `epochs` passes over `loader`."""
    for _ in range(epochs):
        yield from loader


def train_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    settings: FlSettings,
    plan: Plan,
    history: list[accounting.HistoryEntry],
) -> LocalResult:
    """Run `settings.local_epochs` of DP-SGD (or plain SGD without DP) and return weights, history and ε."""
    gen = _fresh_generator()
    # shuffled minibatches without DP; with DP, make_private swaps this for Poisson sampling on the same generator
    loader = DataLoader(
        TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
        batch_size=settings.batch_size,
        shuffle=True,
        generator=gen,
    )
    params = freeze_to_head(model) if settings.head_only else list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum)
    engine: PrivacyEngine | None = None
    module: nn.Module = model
    model.train()
    if settings.dp:
        check_secure_mode(settings)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Secure RNG turned off": secure_mode is a documented setting
            engine = PrivacyEngine(accountant="rdp", secure_mode=settings.secure_mode)
        engine.accountant.history = list(history)
        module, optimizer, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=settings.max_grad_norm,
            poisson_sampling=True,
            noise_generator=None if settings.secure_mode else gen,
        )
    loss_fn = nn.CrossEntropyLoss()
    module.train()
    total, count = 0.0, 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")  # Opacus' hooks, inputs need no grad
        for xb, yb in _batches(loader, settings.local_epochs):
            optimizer.zero_grad()
            loss = loss_fn(module(xb), yb)  # an empty Poisson batch still steps: noise only, and counted
            loss.backward()
            optimizer.step()
            if len(yb):
                total += float(loss.detach()) * len(yb)
                count += len(yb)
    if isinstance(module, GradSampleModule):
        module.remove_hooks()  # leave the caller's plain module as it was: no per-sample hooks behind
    new_history = [(float(s), float(q), int(n)) for s, q, n in engine.accountant.history] if engine else []
    eps_rdp = eps_prv = math.inf
    if engine is not None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the")
            eps_rdp = float(engine.accountant.get_epsilon(delta=settings.delta))
        eps_prv = accounting.prv_epsilon_from_history(new_history, settings.delta)
    return LocalResult(
        state_dict=clean_state_dict({k: v.detach().clone() for k, v in module.state_dict().items()}),
        history=new_history,
        epsilon=min(eps_rdp, eps_prv),
        train_loss=total / max(count, 1),
        epsilon_rdp=eps_rdp,
        epsilon_prv=eps_prv,
    )
