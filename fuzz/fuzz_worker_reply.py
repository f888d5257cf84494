"""Fuzz the gateway's reader of an isolated worker's reply (gateway/backends/isolated: `wire.read_reply`
through the slot's `outputs_of`, with the region bounds the gateway uses).

Input layout: 2 bytes (little-endian) give the reply's length L, the next L bytes are the reply message, the
rest is what the worker left in the outputs part of the shared region (region[SPLIT:], zeros after it); the
inputs part region[:SPLIT] holds a marker. The model has the outputs NAMES. Allowed: wire.WireError. On
success every returned array must be one a descriptor of the reply names (checked here by an independent
reading of the descriptors): inside region[SPLIT:], of the declared dtype and shape, holding those bytes,
and a copy (writing over the region afterwards changes nothing). An error reply names a known kind.
"""

from __future__ import annotations

import socket
import struct
import sys

from fuzz.common import Harness, fuzz_main, instrumented

with instrumented():
    import numpy as np

    from gateway.backends.dtypes import BYTES, V2_DATATYPES, numpy_dtype
    from gateway.backends.isolated import wire
    from gateway.backends.isolated.process import _Slot

REGION = 8192
SPLIT = 2048  # region[:SPLIT]: the request's inputs; region[SPLIT:]: the worker's outputs
NAMES = ("a", "b", "c")
MARKER = 0xA5
_HEAD = struct.Struct("<HBBQQ")
_BUFFER = bytearray(REGION)
_REGION = memoryview(_BUFFER)
_SOCKETS = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
SLOT = _Slot(_SOCKETS[0], _REGION, SPLIT)


def read(data: bytes) -> None:
    """The target: lay out the region, read the reply, and check what came back against its descriptors."""
    if len(data) < 2:
        return
    length = int.from_bytes(data[:2], "little")
    message, rest = data[2 : 2 + length], data[2 + length :]
    _BUFFER[:SPLIT] = bytes([MARKER]) * SPLIT
    tail = rest[: REGION - SPLIT]
    _BUFFER[SPLIT:] = tail + bytes(REGION - SPLIT - len(tail))
    outputs, kind, text, _ = SLOT.outputs_of(memoryview(message), NAMES)
    if kind or text:
        if outputs or kind not in wire.ERRORS[1:]:
            raise AssertionError(f"an error reply gave outputs {sorted(outputs)} and kind {kind!r}")
        return
    expected = _descriptors(message)
    if set(outputs) != set(expected):
        raise AssertionError(f"outputs {sorted(outputs)}, but the reply describes {sorted(expected)}")
    snapshot = {name: _contents(array) for name, array in outputs.items()}
    for name, array in outputs.items():
        code, dims, offset, nbytes = expected[name]
        if not (SPLIT <= offset and offset + nbytes <= REGION):
            raise AssertionError(f"{name}: read region[{offset}:{offset + nbytes}], outside [{SPLIT}:{REGION}]")
        want = np.dtype(object) if V2_DATATYPES[code] == BYTES else numpy_dtype(V2_DATATYPES[code])
        if array.dtype != want or array.shape != dims:
            raise AssertionError(f"{name}: {array.dtype}{array.shape}, declared {want}{dims}")
        if snapshot[name] != bytes(_REGION[offset : offset + nbytes]):
            raise AssertionError(f"{name}: its contents are not region[{offset}:{offset + nbytes}]")
        if array.dtype != object and np.shares_memory(array, np.frombuffer(_BUFFER, np.uint8)):
            raise AssertionError(f"{name}: a view of the shared region, not a copy")
    _BUFFER[:] = bytes([0x5A]) * REGION
    for name, array in outputs.items():
        if _contents(array) != snapshot[name]:
            raise AssertionError(f"{name}: changed when the worker wrote over the region")


def _contents(array: np.ndarray) -> bytes:
    """An array's bytes as the wire lays them out (BYTES: a 4-byte length before each element)."""
    if array.dtype == object:
        return b"".join(struct.pack("<I", len(e)) + bytes(e) for e in array.flat)
    return array.tobytes()


def _descriptors(message: bytes) -> dict[str, tuple[int, tuple[int, ...], int, int]]:
    """An independent reading of a success reply's descriptors: name -> (code, shape, offset, nbytes)."""
    (count,) = struct.unpack_from("<H", message, 2)
    pos, out = wire.REPLY.size + wire.RUN.size, {}
    for _ in range(count):
        index, code, rank, offset, nbytes = _HEAD.unpack_from(message, pos)
        dims = struct.unpack_from(f"<{rank}q", message, pos + _HEAD.size)
        pos += _HEAD.size + 8 * rank
        out[NAMES[index]] = (code, tuple(dims), offset, nbytes)
    if pos != len(message):
        raise AssertionError("a reply with trailing bytes was accepted")
    return out


def _case(message: bytes, region: bytes = b"") -> bytes:
    return struct.pack("<H", len(message)) + message + region


def _desc(index: int, code: int, dims: list[int], offset: int, nbytes: int) -> bytes:
    return struct.pack(f"<HBBQQ{len(dims)}q", index, code, len(dims), offset, nbytes, *dims)


def seeds() -> dict[str, bytes]:
    """Replies the worker's own encoder writes, and every malformed field of the isolation tests."""
    fp32, i64, text = wire.CODES["FP32"], wire.CODES["INT64"], wire.CODES["BYTES"]
    region = memoryview(bytearray(REGION))
    outputs = [
        (0, fp32, np.arange(6, dtype=np.float32).reshape(2, 3)),
        (1, text, np.array([b"ab", b"", b"c"], dtype=object)),
        (2, i64, np.array([-1, 2**40], dtype=np.int64)),
    ]
    valid = wire.reply_ok(outputs, region, SPLIT, REGION)
    mine = bytes(region[SPLIT:]).rstrip(b"\0")
    run = wire.RUN.pack(2_000)
    ok = wire.REPLY.pack(wire.OK, 1) + run
    cases = {
        "seed-valid-three-outputs": _case(valid, mine),
        "seed-valid-one-output": _case(wire.reply_ok(outputs[:1], region, SPLIT, REGION), mine),
        "seed-valid-empty-tensor": _case(ok + _desc(0, fp32, [0, 3], SPLIT, 0)),
        "seed-valid-scalar": _case(ok + _desc(2, i64, [], SPLIT, 8), b"\1" * 8),
        "seed-valid-error-reply": _case(wire.reply_error("TooLarge", "too big")),
        "seed-valid-error-internal": _case(wire.reply_error("KeyError", "?")),
        "seed-outside-region": _case(ok + _desc(0, fp32, [2], 1 << 30, 8)),
        "seed-in-the-inputs-part": _case(ok + _desc(0, fp32, [2], SPLIT - 8, 8)),
        "seed-past-the-end": _case(ok + _desc(0, fp32, [2], REGION - 6, 8)),
        "seed-offset-overflow": _case(ok + _desc(0, fp32, [2], 2**64 - 4, 8)),
        "seed-size-mismatch": _case(ok + _desc(0, fp32, [2], SPLIT, 7)),
        "seed-unknown-datatype": _case(ok + _desc(0, 200, [2], SPLIT, 8)),
        "seed-negative-dimension": _case(ok + _desc(0, fp32, [-1], SPLIT, 8)),
        "seed-shape-far-larger": _case(ok + _desc(0, fp32, [1 << 40, 1 << 40], SPLIT, 8)),
        "seed-bytes-element-past-end": _case(ok + _desc(1, text, [2], SPLIT, 6), b"\2\0\0\0ab"),
        "seed-bytes-huge-count": _case(ok + _desc(1, text, [1 << 40], SPLIT, 8)),
        "seed-unknown-output": _case(ok + _desc(3, fp32, [2], SPLIT, 8)),
        "seed-same-output-twice": _case(
            wire.REPLY.pack(wire.OK, 2) + run + _desc(0, fp32, [2], SPLIT, 8) + _desc(0, fp32, [2], SPLIT + 64, 8)
        ),
        "seed-count-lies": _case(wire.REPLY.pack(wire.OK, 2) + run + _desc(0, fp32, [2], SPLIT, 8)),
        "seed-more-than-the-model": _case(wire.REPLY.pack(wire.OK, 5) + run + _desc(0, fp32, [2], SPLIT, 8)),
        "seed-no-run-time": _case(wire.REPLY.pack(wire.OK, 0) + b"\1"),
        "seed-trailing-bytes": _case(ok + _desc(0, fp32, [2], SPLIT, 8) + b"x"),
        "seed-rank-65": _case(ok + struct.pack("<HBBQQ", 0, fp32, 65, SPLIT, 0) + bytes(65 * 8)),
        "seed-cut-short": _case((ok + _desc(0, fp32, [2], SPLIT, 8))[:-3]),
        "seed-unknown-status": _case(wire.REPLY.pack(99, 0)),
        "seed-error-text-short": _case(wire.REPLY.pack(1, 50) + b"short"),
        "seed-error-invalid-utf8": _case(wire.REPLY.pack(1, 4) + b"\xff\xfe\x00\n"),
        "seed-header-short": _case(b"\x00"),
        # found by this harness: a zero dimension beside huge ones passes the size check (0 elements, 0 bytes)
        # and numpy's reshape raises a plain ValueError, not WireError: the worker is not replaced
        "seed-finding-worker_reply-zero-dim-beside-huge": _case(ok + _desc(0, fp32, [0, 1 << 62, 1 << 62], SPLIT, 0)),
        "seed-finding-worker_reply-bytes-zero-dim-beside-huge": _case(
            ok + _desc(1, text, [0, 1 << 62, 1 << 62], SPLIT, 0)
        ),
    }
    return cases


TestOneInput = Harness("worker_reply", read, (wire.WireError,))

if __name__ == "__main__":
    fuzz_main(TestOneInput)
    sys.exit(0)
