"""TensorFlow SavedModels in isolated workers: the gateway's check and packing, and the worker's load.

The gateway checks the SavedModel against the op policy (tf_policy) and packs its files (saved_model.pb,
variables/*, assets/*) into one container (gateway.artifact.container: a manifest of (path, size), then the
bytes), which reaches the worker in the model memfd. The worker imports TensorFlow, unpacks the container,
applies Landlock BEFORE TensorFlow creates its runtime and thread pools (a ruleset binds only the threads
started after it), then loads with tf_backend's own loader, which checks the op policy again. TensorFlow's
runtime needs to read two files after that, each granted read-only on its own (`TF_READABLE`).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

from gateway.artifact import container
from gateway.backends.base import BackendConfig
from gateway.backends.isolated import landlock
from gateway.errors import UnsafeArchive, UnsupportedFormat

PLATFORM = "tensorflow_savedmodel"
# Read-only, each one file: libstdc++'s std::random_device opens /dev/urandom when TF seeds its runtime, and
# TF aborts the process if it cannot read its own /proc/self/cmdline (its runfiles lookup at start-up).
TF_READABLE = ("/dev/urandom", "/proc/self/cmdline")


def tensorflow_load(files: Mapping[str, bytes], config: BackendConfig) -> tuple[bytes, dict[str, Any]]:
    """In the gateway: refuse a SavedModel outside the op policy (UnsafeModel) before any worker starts, and
    return the checked files as one container plus the worker's load message."""
    from gateway.backends.tf_policy import check_saved_model

    check_saved_model(files)
    payload = b"".join(container.stream(container.from_mapping(files)))
    load = {
        "platform": PLATFORM,
        "intra_op_threads": config.intra_op_threads,
        "inter_op_threads": config.inter_op_threads,
        "landlock": config.landlock,
    }
    return payload, load


def prepare() -> None:
    """In the worker, before the sandbox: import TensorFlow and every module the load and the policy check
    use (an import after Landlock would be refused)."""
    from gateway.backends import tf_backend

    tf_backend._tensorflow()
    importlib.import_module("tensorflow.core.protobuf.saved_model_pb2")
    importlib.import_module("gateway.backends.tf_policy")


def readable() -> list[str]:
    """The files of TF_READABLE present on this machine (a missing one gets no rule)."""
    return [path for path in TF_READABLE if os.path.exists(path)]


def load_in_worker(message: Mapping[str, Any], payload: bytes) -> tuple[Any, int]:
    """In the worker: unpack the container, sandbox this process, load the SavedModel (the op policy is checked
    again by the loader); return (the TensorFlowModel, the Landlock ABI applied, 0 for none)."""
    prepare()
    from gateway.backends.tf_backend import load_tensorflow

    try:
        files = container.unpack(payload)
    except UnsafeArchive as exc:
        raise UnsupportedFormat(f"the SavedModel's files arrived damaged: {exc}") from None
    abi = 0
    if message.get("landlock", True) and landlock.abi_version() > 0:
        abi = landlock.restrict(readable())
    config = BackendConfig(
        intra_op_threads=int(message["intra_op_threads"]), inter_op_threads=int(message["inter_op_threads"])
    )
    model = load_tensorflow(files, config)
    return model, abi
