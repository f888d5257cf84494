"""The optimization pipeline on ONNX bytes: structured pruning → magnitude pruning → masked fine-tuning → int8.

Pruning and fine-tuning need a plain MLP (see onnx_mlp); quantization alone takes any model onnxruntime can
quantize. The record returned goes into the release's provenance ("optimization").
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from gateway.errors import InvalidInput
from gateway.release import onnx_graph, prune, quantize
from gateway.release.onnx_mlp import read_mlp, write_mlp

QuantMode = Literal["dynamic", "static"]


@dataclass(frozen=True)
class OptimizeOptions:
    """What to do; each step is off unless set. `finetune_data` is (x, y) for masked fine-tuning after pruning."""

    structured: float | None = None
    sparsity: float | None = None
    scope: prune.Scope = "global"
    finetune_data: tuple[np.ndarray, np.ndarray] | None = None
    finetune_epochs: int = 10
    finetune_lr: float = 0.02
    finetune_batch_size: int = 32
    seed: int = 0
    quantize: QuantMode | None = None
    calibration: np.ndarray | None = None
    per_channel: bool = False


@dataclass(frozen=True)
class Optimized:
    """The optimized ONNX bytes and a record of every step taken, with sizes before and after."""

    onnx: bytes
    record: dict[str, Any]


def compressed_size(data: bytes) -> int:
    """zlib (level 9) size: what unstructured zeros save on the wire and in the sealed artifact."""
    return len(zlib.compress(data, 9))


def _needs_mlp(options: OptimizeOptions) -> bool:
    return bool(options.structured) or bool(options.sparsity) or options.finetune_data is not None


def optimize(model: bytes, options: OptimizeOptions) -> Optimized:
    """Apply the requested steps in order; InvalidInput when a step cannot apply to this model."""
    record: dict[str, Any] = {"size_bytes_before": len(model), "compressed_bytes_before": compressed_size(model)}
    data = onnx_graph.serialize(onnx_graph.strip_metadata(onnx_graph.parse(model)))
    if _needs_mlp(options):
        mlp = read_mlp(data)
        if options.structured:
            before = mlp.hidden
            result = prune.prune_units(mlp.weights, mlp.biases, options.structured)
            mlp = mlp.with_layers(result.weights, result.biases)
            record["structured"] = {"fraction": options.structured, "hidden_before": before, "hidden_after": mlp.hidden}
        masks: dict[str, np.ndarray] = {}
        if options.sparsity:
            pruned = prune.prune_magnitude(mlp.tensors(), options.sparsity, options.scope)
            mlp, masks = mlp.with_tensors(pruned.tensors), pruned.masks
            record["pruning"] = {
                "method": "magnitude",
                "scope": options.scope,
                "target_sparsity": options.sparsity,
                "sparsity": round(pruned.sparsity, 6),
                "layer_sparsity": {name: round(1.0 - float(m.mean()), 6) for name, m in masks.items()},
            }
        if options.finetune_data is not None:
            from gateway.release.finetune import FinetuneConfig, finetune_mlp

            x, y = options.finetune_data
            config = FinetuneConfig(
                options.finetune_epochs, options.finetune_lr, options.finetune_batch_size, seed=options.seed
            )
            mlp = finetune_mlp(mlp, masks, x, y, config)
            record["finetune"] = {
                "epochs": config.epochs,
                "lr": config.lr,
                "batch_size": config.batch_size,
                "rows": len(x),
                "masks_kept": bool(masks),
            }
        data = write_mlp(mlp)
    if options.quantize == "dynamic":
        data = quantize.quantize_dynamic(data, per_channel=options.per_channel)
        record["quantization"] = {"mode": "dynamic", "weights": "int8", "per_channel": options.per_channel}
    elif options.quantize == "static":
        if options.calibration is None:
            raise InvalidInput("static quantization needs calibration data")
        data = quantize.quantize_static(data, options.calibration, per_channel=options.per_channel)
        record["quantization"] = {
            "mode": "static",
            "format": "QDQ",
            "weights": "int8",
            "activations": "uint8",
            "calibration_rows": len(options.calibration),
            "per_channel": options.per_channel,
        }
    elif options.quantize is not None:
        raise InvalidInput(f"quantize must be 'dynamic' or 'static', got {options.quantize!r}")
    record["size_bytes"] = len(data)
    record["compressed_bytes"] = compressed_size(data)
    return Optimized(data, record)
