"""Fine-tuning after pruning, in torch, with the pruning masks kept: pruned weights stay exactly zero.

The masks are applied before training and again after every optimizer step (momentum would otherwise revive
pruned weights). Also the adapters between torch state dicts of Linear MLPs and the numpy pruning functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from gateway.errors import InvalidInput
from gateway.release import prune
from gateway.release.onnx_mlp import Activation, Mlp

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class FinetuneConfig:
    """Minibatch SGD with momentum on cross-entropy; small learning rate, since the model starts trained."""

    epochs: int = 10
    lr: float = 0.02
    batch_size: int = 32
    momentum: float = 0.9
    seed: int = 0


def _masks_as_tensors(
    model: nn.Module, masks: Mapping[str, np.ndarray]
) -> dict[str, tuple[nn.Parameter, torch.Tensor]]:
    params = dict(model.named_parameters())
    out = {}
    for name, mask in masks.items():
        if name not in params:
            raise InvalidInput(f"mask for unknown parameter {name!r}")
        if tuple(mask.shape) != tuple(params[name].shape):
            raise InvalidInput(f"mask for {name!r} has shape {mask.shape}, parameter {tuple(params[name].shape)}")
        out[name] = (params[name], torch.from_numpy(np.asarray(mask, dtype=bool)))
    return out


@torch.no_grad()
def _apply(masked: Mapping[str, tuple[nn.Parameter, torch.Tensor]]) -> None:
    for param, mask in masked.values():
        param.mul_(mask.to(param.dtype))


def finetune(
    model: nn.Module, masks: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray, config: FinetuneConfig
) -> nn.Module:
    """Train `model` on (x, y) in place; parameters named in `masks` keep their zeros (mask True = kept)."""
    if len(x) != len(y) or len(x) == 0:
        raise InvalidInput(f"fine-tuning needs matching, non-empty x and y (got {len(x)} and {len(y)} rows)")
    masked = _masks_as_tensors(model, masks)
    _apply(masked)
    gen = torch.Generator().manual_seed(config.seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), config.batch_size):
            idx = order[start : start + config.batch_size]
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
            _apply(masked)
    model.eval()
    return model


# --- torch state dicts of Linear MLPs -------------------------------------------------------------------------
def linear_keys(state_dict: Mapping[str, torch.Tensor]) -> list[tuple[str, str | None]]:
    """(weight key, bias key or None) of each Linear layer of an MLP state dict, in order."""
    pairs = []
    for key, value in state_dict.items():
        if key.endswith("weight") and value.ndim == 2:
            bias = key[: -len("weight")] + "bias"
            pairs.append((key, bias if bias in state_dict else None))
    if not pairs:
        raise InvalidInput("the state dict holds no 2-D weight matrices")
    return pairs


def prune_state_dict(
    state_dict: Mapping[str, torch.Tensor], sparsity: float, scope: prune.Scope = "global"
) -> tuple[StateDict, dict[str, np.ndarray]]:
    """Magnitude-prune every 2-D weight of a state dict; returns the new state dict and masks keyed like it."""
    matrices = {w: state_dict[w].detach().cpu().numpy() for w, _ in linear_keys(state_dict)}
    result = prune.prune_magnitude(matrices, sparsity, scope)
    out = {k: v.detach().clone() for k, v in state_dict.items()}
    for name, value in result.tensors.items():
        out[name] = torch.from_numpy(value).to(state_dict[name].dtype)
    return out, result.masks


def prune_units_state_dict(state_dict: Mapping[str, torch.Tensor], fraction: float) -> StateDict:
    """Structured pruning of a Linear-MLP state dict: the returned tensors are smaller (build the model to fit)."""
    keys = linear_keys(state_dict)
    weights = [state_dict[w].detach().cpu().numpy() for w, _ in keys]
    biases = [
        state_dict[b].detach().cpu().numpy() if b else np.zeros(state_dict[w].shape[0], np.float32) for w, b in keys
    ]
    result = prune.prune_units(weights, biases, fraction)
    out = {k: v.detach().clone() for k, v in state_dict.items()}
    for (w_key, b_key), weight, bias in zip(keys, result.weights, result.biases, strict=True):
        out[w_key] = torch.from_numpy(np.ascontiguousarray(weight))
        if b_key:
            out[b_key] = torch.from_numpy(np.ascontiguousarray(bias))
    return out


# --- ONNX MLPs through torch ----------------------------------------------------------------------------------
class _Softmax(nn.Module):
    """Softmax over the ONNX axis (ONNX ≥ 13 semantics)."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax along `axis`."""
        return torch.softmax(x, dim=self.axis)


def _activation(act: Activation) -> nn.Module:
    if act.op == "Relu":
        return nn.ReLU()
    if act.op == "Tanh":
        return nn.Tanh()
    if act.op == "Sigmoid":
        return nn.Sigmoid()
    if act.op == "LeakyRelu":
        return nn.LeakyReLU(float(act.attrs.get("alpha", 0.01)))
    if act.op == "Softmax":
        return _Softmax(int(act.attrs.get("axis", -1)))
    return nn.Identity()


def mlp_module(mlp: Mlp) -> nn.Sequential:
    """A torch Sequential computing the same function as `mlp` (Linear + activation per layer)."""
    layers: list[nn.Module] = []
    for weight, bias, act in zip(mlp.weights, mlp.biases, mlp.activations, strict=True):
        linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight))
            linear.bias.copy_(torch.from_numpy(bias))
        layers += [linear, _activation(act)]
    return nn.Sequential(*layers)


def finetune_mlp(
    mlp: Mlp, masks: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray, config: FinetuneConfig
) -> Mlp:
    """Fine-tune an ONNX MLP's weights on (x, y); `masks` are keyed W0, W1, ... as in `Mlp.tensors()`.

    The loss is cross-entropy on the output, so the output must be class logits (not already a Softmax).
    """
    if mlp.activations[-1].op != "Identity":
        raise InvalidInput(f"fine-tuning needs logits; this model ends in {mlp.activations[-1].op}")
    module = mlp_module(mlp)
    by_param = {f"{2 * int(name[1:])}.weight": mask for name, mask in masks.items()}
    finetune(module, by_param, x, y, config)
    linears = [m for m in module if isinstance(m, nn.Linear)]
    return mlp.with_layers(
        [lin.weight.detach().numpy().copy() for lin in linears], [lin.bias.detach().numpy().copy() for lin in linears]
    )
