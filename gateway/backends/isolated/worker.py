"""The model worker: a fresh interpreter that holds no key, runs one model, and can open no file.

Started by gateway.backends.isolated.process as `python -I -B -m gateway.backends.isolated.worker SHM SIZE
MODEL SLOT_SIZE SPLIT SOCK...` with exactly those descriptors open: the shared tensor region (a memfd of
SIZE bytes), a memfd holding the checked model bytes, and one SOCK_SEQPACKET control socket per slot. It
reads the load message, imports the runtime its `platform` names, reads the model, applies Landlock (no
file-system right beyond what the runtime reads, no TCP, scoped IPC), then builds the model: an ONNX Runtime
session from bytes, or a TensorFlow SavedModel through ram:// (tf_worker.py); one thread per slot answers
that slot's messages in turn. It trusts the gateway, never the model.
"""

from __future__ import annotations

import mmap
import os
import socket
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.backends.base import BackendConfig, LoadedModel
from gateway.backends.isolated import landlock, wire
from gateway.errors import InvalidInput, SealgateError, TooLarge, UnsupportedFormat

if TYPE_CHECKING:
    import onnxruntime as ort

ONNX_PLATFORM = "onnxruntime_onnx"

_ERRORS = (InvalidInput, TooLarge, UnsupportedFormat)


def _reply(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.send(wire.encode(message))


def _why(exc: BaseException) -> tuple[str, str]:
    """A failure as the gateway reads it: a known error kind and a short message, or "Internal"."""
    kind = type(exc).__name__ if isinstance(exc, _ERRORS) else "Internal"
    text = str(exc).strip().splitlines()
    return kind, (text[0] if text else type(exc).__name__)[: wire.MAX_ERROR_TEXT]


def _error(exc: BaseException) -> bytes:
    """A failed call's binary reply."""
    return wire.reply_error(*_why(exc))


def _options(message: dict[str, Any]) -> ort.SessionOptions:
    """Session options that read and write nothing: ONNX format only, no EP context, no profiling."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.load_model_format", "ONNX")
    options.add_session_config_entry("ep.context_enable", "0")
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", os.getcwd())
    options.intra_op_num_threads = int(message["intra_op_threads"])
    options.inter_op_num_threads = int(message["inter_op_threads"])
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = False
    return options


def _load_onnx(message: dict[str, Any], checked: bytes) -> tuple[LoadedModel, int]:
    """Import ONNX Runtime, restrict this process (no file at all), build the session from the bytes."""
    import onnxruntime  # noqa: F401  (imported before the sandbox closes: an import after it is refused)

    from gateway.backends.onnx_backend import session_model

    abi = 0
    if message.get("landlock", True) and landlock.abi_version() > 0:
        abi = landlock.restrict()
    config = BackendConfig(
        tuple(message["providers"]), int(message["intra_op_threads"]), int(message["inter_op_threads"])
    )
    ranks = {str(k): bool(v) for k, v in message["ranks"].items()}
    return session_model(str(message["model_path"]), checked, ranks, config, _options(message)), abi


def _load(sock: socket.socket, model_fd: int) -> tuple[LoadedModel, int, dict[str, Any]]:
    """Read the load message and the model bytes, then load by the message's platform (each loader applies
    the sandbox after its imports and before the model is parsed)."""
    message = wire.decode(sock.recv(wire.MAX_CONTROL))
    size = int(message["size"])
    checked = os.pread(model_fd, size, 0) if size else b""
    os.close(model_fd)
    if len(checked) != size:
        raise UnsupportedFormat("the model bytes arrived short")
    platform = message.get("platform", ONNX_PLATFORM)
    if platform == ONNX_PLATFORM:
        model, abi = _load_onnx(message, checked)
    elif platform == "tensorflow_savedmodel":
        from gateway.backends.isolated import tf_worker  # TensorFlow is imported only by a worker that runs it

        model, abi = tf_worker.load_in_worker(message, checked)
    else:
        raise UnsupportedFormat(f"the worker runs no {str(platform)[:40]!r} models")
    del checked
    return model, abi, message


def _specs(model: LoadedModel) -> dict[str, Any]:
    def one(spec: Any) -> list[Any]:
        return [spec.name, spec.datatype, list(spec.shape), spec.rank_known]

    return {"inputs": [one(s) for s in model.inputs], "outputs": [one(s) for s in model.outputs]}


_BUSY: set[int] = set()  # the slots running a call now (set.add/discard are atomic under the GIL)
_SPIN_SWITCH_S = 50e-6  # with a spin on, a thread waiting for the GIL gets it within this (default 5 ms)


def serve(
    sock: socket.socket, region: memoryview, split: int, model: LoadedModel, spin_ns: int = 0, slot: int = 0
) -> None:
    """Answer call messages until the gateway closes the socket: inputs in region[:split], outputs after.

    Lean on purpose (this runs per call): one recv into a reused buffer, struct descriptors read into views
    of the region, the model's own infer, each output copied once into the region, one send. With `spin_ns`,
    an idle slot polls for its next call that long before sleeping, while no other slot runs a call (a
    spinning thread would hold the GIL from it) and the last call said the gateway is lightly loaded (under load
    the gateway needs the cores a spin would take)."""
    size = len(region)
    names = tuple(spec.name for spec in model.inputs)
    output_names = tuple(spec.name for spec in model.outputs)
    codes = {name: index for index, name in enumerate(output_names)}
    datatypes = tuple(wire.CODES[spec.datatype] for spec in model.outputs)
    buffer = bytearray(wire.MAX_CONTROL)  # one buffer for every message: recv(n) would allocate n bytes per call
    view = memoryview(buffer)
    recv_into, send, clock, busy = sock.recv_into, sock.send, time.perf_counter_ns, _BUSY
    spin = 0  # the last call's gateway was lightly loaded (its SPIN flag): poll for the next call
    while True:
        received = -1
        if spin:  # a bounded poll for the next call before sleeping (each try releases the GIL)
            until = clock() + spin
            while received < 0 and not busy and clock() < until:
                try:
                    received = recv_into(buffer, 0, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    pass
        if received < 0:
            received = recv_into(buffer)
        if not received:
            return
        busy.add(slot)
        data = view[:received]
        spin = 0
        try:
            inputs, requested, flags = wire.read_request(data, names, output_names, region, split)
            spin = spin_ns + (flags >> 1) * wire.LINGER_UNIT_NS if spin_ns and flags & wire.SPIN else 0
            began = clock()
            outputs = model.infer(inputs, requested)
            run_ns = clock() - began
            try:
                reply = wire.reply_ok(
                    [(codes[name], datatypes[codes[name]], value) for name, value in outputs.items()],
                    region,
                    split,
                    size,
                    run_ns,
                )
            except wire.WireError as exc:
                raise TooLarge(f"the model's outputs do not fit the worker's region: {exc}") from None
        except (SealgateError, wire.WireError, ValueError) as exc:
            reply = _error(exc)
        except Exception as exc:  # an unexpected runtime failure: reported, and the worker keeps serving
            traceback.print_exc()
            reply = _error(exc)
        send(reply)
        busy.discard(slot)


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
        model, abi, load = _load(socks[0], model_fd)
    except Exception as exc:
        kind, text = _why(exc)
        _reply(socks[0], {"ok": False, "error": kind, "message": text})
        return 1
    spin_ns = int(load.get("spin_ns", 0))
    if spin_ns:
        sys.setswitchinterval(_SPIN_SWITCH_S)
    _reply(socks[0], {"ok": True, "landlock": abi, "pid": os.getpid(), **_specs(model)})
    threads = [  # started after the ruleset: every thread of the worker is inside the sandbox
        threading.Thread(
            target=serve, args=(sock, region[i * slot_size : (i + 1) * slot_size], split, model, spin_ns, i)
        )
        for i, sock in enumerate(socks)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
