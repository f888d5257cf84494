"""Isolated backends: each model version runs in its own sandboxed worker process (`[backend] isolation =
"process"`), away from the gateway's keys and files. See process.py (the gateway's side), worker.py (the
worker), tf_worker.py (TensorFlow's check, packing and load), landlock.py (the sandbox) and events.py (crash
and restart reports).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from gateway.backends import registry
from gateway.backends.base import BackendConfig, LoadedModel
from gateway.backends.isolated import events, landlock
from gateway.backends.isolated.process import IsolatedModel

log = logging.getLogger(__name__)

__all__ = ["IsolatedModel", "events", "load_isolated", "sandbox_status", "worker_settings"]


def sandbox_status() -> str:
    """One line on what the sandbox of a worker can be on this kernel, for start-up logs and health details."""
    abi = landlock.abi_version()
    if abi <= 0:
        return "landlock unavailable: workers run in an empty folder without a file-system sandbox"
    return f"landlock ABI {abi}: workers may open no file, connect no TCP socket, signal nothing outside"


def load_isolated(files: Mapping[str, bytes], config: BackendConfig, label: str = "") -> LoadedModel:
    """Load a model in a worker process: ONNX and TensorFlow are checked here (the model policy), run there.

    Other backends still load in this process, with a warning: their isolation is not built yet.
    """
    backend = registry.detect(files)
    if backend.name == "tensorflow":
        from gateway.backends.isolated.tf_worker import tensorflow_load

        payload, tf_load = tensorflow_load(files, config)  # UnsafeModel here: no worker is started
        return IsolatedModel(backend.platform, payload, tf_load, config, label or registry.SAVED_MODEL)
    if backend.name != "onnx":
        log.warning(
            "isolation covers ONNX and TensorFlow models only: %s model %s loads in the gateway's process",
            backend.name,
            label,
        )
        return backend.load(files, config)
    from gateway.backends.onnx_backend import prepare_onnx

    model_path = registry.onnx_files(files)[0]
    checked, ranks = prepare_onnx(model_path, files)
    load = {
        "platform": backend.platform,
        "model_path": model_path,
        "ranks": ranks,
        "providers": list(config.providers),
        "intra_op_threads": config.intra_op_threads,
        "inter_op_threads": config.inter_op_threads,
        "landlock": config.landlock,
    }
    return IsolatedModel(backend.platform, checked, load, config, label or model_path)


def worker_settings(section: Any, max_message_bytes: int) -> dict[str, Any]:
    """The BackendConfig keywords of a `[backend]` config section (isolation and worker knobs)."""
    return {
        "isolation": section.isolation,
        "worker_deadline_s": section.worker_deadline_s,
        "worker_restart_backoff_s": section.worker_restart_backoff_s,
        "worker_max_crashes": section.worker_max_crashes,
        "worker_crash_window_s": section.worker_crash_window_s,
        "worker_slots": section.worker_slots,
        "worker_spin_us": section.worker_spin_us,
        "max_message_bytes": max_message_bytes,
    }
