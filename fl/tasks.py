"""Learning tasks that need no download: digits (scikit-learn) and a synthetic click-through task.

Models, data, seeded partitions, plain training/evaluation, and the two safe weight formats a release
carries: ONNX for serving and safetensors (data only, cannot execute code) for further fine-tuning.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from gateway.errors import ConfigError, InvalidInput
from gateway.fsutil import atomic_write

StateDict = dict[str, torch.Tensor]

CTR_FEATURES = 16


class DigitsMLP(nn.Module):
    """64-64-10 MLP for 8x8 digits; no BatchNorm, so Opacus can compute per-sample gradients."""

    def __init__(self, in_dim: int = 64, hidden: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of flattened images."""
        logits: torch.Tensor = self.net(x)
        return logits


class CtrMLP(nn.Module):
    """Small click-through-rate MLP: features -> 2 logits (no click, click)."""

    def __init__(self, in_dim: int = CTR_FEATURES, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of feature rows."""
        logits: torch.Tensor = self.net(x)
        return logits


# --- data -----------------------------------------------------------------------------------------
Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def load_digits_split(seed: int = 0, test_size: float = 0.2) -> Split:
    """scikit-learn's bundled digits, stratified split, pixels scaled to [0, 1] (float32) and int64 labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def ctr_generator(model_seed: int = 0, dim: int = CTR_FEATURES) -> tuple[np.ndarray, float]:
    """The ground-truth logistic model (w, b) behind the synthetic CTR data; fixed by `model_seed`."""
    rng = np.random.default_rng(model_seed)
    w = rng.normal(0.0, 1.0, size=dim) * (2.0 / np.sqrt(dim))
    return w.astype(np.float64), -0.5


def make_ctr_data(n: int, seed: int, model_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` rows x ~ N(0, I), click y ~ Bernoulli(sigmoid(w·x + b)) from `ctr_generator(model_seed)`."""
    if n <= 0:
        raise InvalidInput(f"n must be positive, got {n}")
    w, b = ctr_generator(model_seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, w.shape[0]))
    p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
    y = (rng.random(n) < p).astype(np.int64)
    return x.astype(np.float32), y


def ctr_bayes_accuracy(x: np.ndarray, y: np.ndarray, model_seed: int = 0) -> float:
    """Accuracy of the true generating model on (x, y): the ceiling any learned CTR model can reach."""
    w, b = ctr_generator(model_seed)
    return float(np.mean(((x.astype(np.float64) @ w + b) > 0).astype(np.int64) == y))


def load_ctr_split(seed: int = 0, test_size: float = 0.2, n: int = 4000) -> Split:
    """Synthetic CTR data as (X_train, y_train, X_test, y_test), test rows drawn independently."""
    n_test = max(1, round(n * test_size))
    x_tr, y_tr = make_ctr_data(n - n_test, seed)
    x_te, y_te = make_ctr_data(n_test, seed + 1_000_003)
    return x_tr, y_tr, x_te, y_te


def partition(y: np.ndarray, num_clients: int, alpha: float | None, seed: int) -> list[np.ndarray]:
    """Indices per client: IID shuffle when `alpha` is None, else Dirichlet(alpha) over labels; none empty."""
    n = len(y)
    if num_clients < 1 or num_clients > n:
        raise InvalidInput(f"num_clients must be in 1..{n}, got {num_clients}")
    rng = np.random.default_rng(seed)
    if alpha is None:
        return [np.sort(part) for part in np.array_split(rng.permutation(n), num_clients)]
    if alpha <= 0:
        raise InvalidInput(f"alpha must be positive, got {alpha}")
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        shares = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for client, chunk in enumerate(np.split(idx, cuts)):
            parts[client].extend(chunk.tolist())
    for client in range(num_clients):  # move one sample from the largest client into each empty one
        if not parts[client]:
            donor = max(range(num_clients), key=lambda c: len(parts[c]))
            parts[client].append(parts[donor].pop(int(rng.integers(len(parts[donor])))))
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


# --- training -------------------------------------------------------------------------------------
def train_centralized(
    model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, batch_size: int, seed: int
) -> nn.Module:
    """Plain (non-private) minibatch SGD with momentum; used for the public pre-training of a start model."""
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on (x, y)."""
    model.eval()
    logits = model(torch.from_numpy(x))
    target = torch.from_numpy(y)
    loss = float(nn.functional.cross_entropy(logits, target))
    acc = float((logits.argmax(dim=1) == target).float().mean())
    return loss, acc


# --- task registry --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskSpec:
    """What a named task is: its model class, input width, and how to load its split."""

    name: str
    model_cls: Callable[..., nn.Module]
    in_dim: int
    num_classes: int
    load: Callable[[int], Split]


TASKS: dict[str, TaskSpec] = {
    "digits": TaskSpec("digits", DigitsMLP, 64, 10, lambda seed: load_digits_split(seed)),
    "ctr": TaskSpec("ctr", CtrMLP, CTR_FEATURES, 2, lambda seed: load_ctr_split(seed)),
}


def get_task(name: str) -> TaskSpec:
    """The TaskSpec called `name`; ConfigError names the known tasks otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}") from None


# --- weights and export ---------------------------------------------------------------------------
def save_weights(state_dict: StateDict) -> bytes:
    """Serialize a state dict to safetensors bytes (tensors only: loading can never execute code)."""
    return st_save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()})


def load_weights(data: bytes) -> StateDict:
    """Parse safetensors bytes into a state dict; InvalidInput if they are not safetensors."""
    try:
        return dict(st_load(data))
    except Exception as exc:  # safetensors raises its own SafetensorError and others on garbage
        raise InvalidInput(f"not a safetensors weight file: {exc}") from None


def clean_state_dict(state_dict: StateDict) -> StateDict:
    """Strip Opacus' `_module.` prefix so a GradSampleModule's weights load into the plain model."""
    return {k.removeprefix("_module."): v for k, v in state_dict.items()}


def load_into(model: nn.Module, state_dict: StateDict, what: str) -> nn.Module:
    """Load `state_dict` into `model` exactly (same names and shapes); ConfigError in one line otherwise."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in clean_state_dict(state_dict).items()}
    problems = [f"missing {k}" for k in expected if k not in got]
    problems += [f"unexpected {k}" for k in got if k not in expected]
    problems += [f"{k}: {got[k]} != {expected[k]}" for k in expected if k in got and got[k] != expected[k]]
    if problems:
        raise ConfigError(f"{what} do not fit {type(model).__name__}: {'; '.join(problems[:4])}")
    model.load_state_dict(clean_state_dict(state_dict))
    return model


def export_onnx(
    state_dict: StateDict, model_cls: Callable[..., nn.Module], path: str | Path | None, in_dim: int
) -> bytes:
    """Export a fresh `model_cls` loaded with `state_dict` to ONNX (dynamo, dynamic batch, one file).

    Input is named "input" ([batch, in_dim] float32), output "output"; writes `path` when given.
    """
    model = load_into(model_cls(), state_dict, "weights")
    model.eval()
    example = (torch.zeros(2, in_dim, dtype=torch.float32),)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model,
            example,
            str(target),
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,
            verbose=False,
        )
        data = target.read_bytes()
    if path is not None:
        atomic_write(Path(path), data)
    return data
