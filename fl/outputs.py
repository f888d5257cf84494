"""What a run leaves in its output folder: model.onnx, weights.safetensors and summary.json.

The ONNX file is for serving, the safetensors file is what the next fine-tuning starts from (it cannot
execute code when opened), and the summary carries the per-round table and the privacy record.
"""

from __future__ import annotations

from pathlib import Path

from fl.summary import RunSummary
from fl.tasks import StateDict, export_onnx, get_task, save_weights
from gateway.fsutil import atomic_write

MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "weights.safetensors"
SUMMARY_FILE = "summary.json"


def write_outputs(out_dir: Path, task: str, state_dict: StateDict, summary: RunSummary) -> list[Path]:
    """Export and write the three files atomically; returns their paths."""
    out_dir = Path(out_dir)
    spec = get_task(task)
    paths = [out_dir / MODEL_FILE, out_dir / WEIGHTS_FILE, out_dir / SUMMARY_FILE]
    export_onnx(state_dict, spec.model_cls, paths[0], spec.in_dim)
    atomic_write(paths[1], save_weights(state_dict))
    atomic_write(paths[2], summary.to_json().encode("utf-8"))
    return paths
