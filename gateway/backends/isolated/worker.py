"""The model worker: a fresh interpreter that holds no key, runs one model, and can open no file.

Started by gateway.backends.isolated.process as `python -I -B -m gateway.backends.isolated.worker SHM SIZE
MODEL SLOT_SIZE SPLIT SOCK...` with exactly those descriptors open: the shared tensor region (a memfd of
SIZE bytes), a memfd holding the checked model bytes, and one SOCK_SEQPACKET control socket per slot. It
imports what it needs, reads the model, applies Landlock (no file-system right at all, no TCP, scoped IPC),
then builds the ONNX Runtime session from bytes; one thread per slot answers that slot's messages in turn.
It trusts the gateway, never the model.
"""

from __future__ import annotations

import mmap
import os
import socket
import sys
import threading
import traceback
from typing import Any

import numpy as np
import onnxruntime as ort

from gateway.backends.base import BackendConfig
from gateway.backends.isolated import landlock, wire
from gateway.backends.onnx_backend import OnnxModel, session_model
from gateway.errors import InvalidInput, SealgateError, TooLarge, UnsupportedFormat

_ERRORS = (InvalidInput, TooLarge, UnsupportedFormat)


def _reply(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.send(wire.encode(message))


def _error(exc: BaseException) -> dict[str, Any]:
    """A failure as the gateway reads it: a known error kind and a short message, or "Internal"."""
    kind = type(exc).__name__ if isinstance(exc, _ERRORS) else "Internal"
    text = str(exc).strip().splitlines()
    return {"ok": False, "error": kind, "message": (text[0] if text else type(exc).__name__)[:300]}


def _options(message: dict[str, Any]) -> ort.SessionOptions:
    """Session options that read and write nothing: ONNX format only, no EP context, no profiling."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.load_model_format", "ONNX")
    options.add_session_config_entry("ep.context_enable", "0")
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", os.getcwd())
    options.intra_op_num_threads = int(message["intra_op_threads"])
    options.inter_op_num_threads = int(message["inter_op_threads"])
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = False
    return options


def _load(sock: socket.socket, model_fd: int) -> tuple[OnnxModel, int]:
    """Read the load message and the model bytes, restrict this process, build the session."""
    message = wire.decode(sock.recv(wire.MAX_CONTROL))
    size = int(message["size"])
    checked = os.pread(model_fd, size, 0) if size else b""
    os.close(model_fd)
    if len(checked) != size:
        raise UnsupportedFormat("the model bytes arrived short")
    abi = 0
    if message.get("landlock", True) and landlock.abi_version() > 0:
        abi = landlock.restrict()
    config = BackendConfig(
        tuple(message["providers"]), int(message["intra_op_threads"]), int(message["inter_op_threads"])
    )
    ranks = {str(k): bool(v) for k, v in message["ranks"].items()}
    model = session_model(str(message["model_path"]), checked, ranks, config, _options(message))
    del checked
    return model, abi


def _specs(model: OnnxModel) -> dict[str, Any]:
    def one(spec: Any) -> list[Any]:
        return [spec.name, spec.datatype, list(spec.shape), spec.rank_known]

    return {"inputs": [one(s) for s in model.inputs], "outputs": [one(s) for s in model.outputs]}


def serve(sock: socket.socket, region: memoryview, split: int, model: OnnxModel) -> None:
    """Answer infer messages until the gateway closes the socket: inputs in region[:split], outputs after."""
    size = len(region)
    while True:
        data = sock.recv(wire.MAX_CONTROL)
        if not data:
            return
        try:
            message = wire.decode(data)
            inputs = wire.read_tensors(region, 0, split, message.get("inputs"), copy=False)
            requested = message.get("outputs") or None
            if requested is not None and not (
                isinstance(requested, list) and all(isinstance(n, str) for n in requested)
            ):
                raise InvalidInput("requested outputs must be a list of names")
            outputs = model.infer(inputs, requested)
            try:
                descriptors = wire.write_tensors(region, split, size, outputs)
            except wire.WireError as exc:
                raise TooLarge(f"the model's outputs do not fit the worker's region: {exc}") from None
            reply: dict[str, Any] = {"ok": True, "outputs": descriptors}
        except (SealgateError, wire.WireError, ValueError) as exc:
            reply = _error(exc)
        except Exception as exc:  # an unexpected runtime failure: reported, and the worker keeps serving
            traceback.print_exc()
            reply = _error(exc)
        _reply(sock, reply)


def main(argv: list[str]) -> int:
    """Run the worker on the descriptors named in argv; exit 0 when the gateway closes the sockets.

    argv: SHM SIZE MODEL SLOT_SIZE SPLIT SOCK... ; slot i owns region[i*SLOT_SIZE:(i+1)*SLOT_SIZE].
    """
    shm_fd, shm_size, model_fd, slot_size, split, *sock_fds = (int(a) for a in argv[1:])
    socks = [socket.socket(fileno=fd) for fd in sock_fds]
    shm = mmap.mmap(shm_fd, shm_size)
    os.close(shm_fd)
    region = memoryview(shm)
    np.empty(0)  # numpy fully initialised before the sandbox closes
    try:
        model, abi = _load(socks[0], model_fd)
    except Exception as exc:
        _reply(socks[0], _error(exc))
        return 1
    _reply(socks[0], {"ok": True, "landlock": abi, "pid": os.getpid(), **_specs(model)})
    threads = [  # started after the ruleset: every thread of the worker is inside the sandbox
        threading.Thread(target=serve, args=(sock, region[i * slot_size : (i + 1) * slot_size], split, model))
        for i, sock in enumerate(socks)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
