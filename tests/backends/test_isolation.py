"""Isolated backend workers (issue 12) without a gateway: same answers as in-process, a worker that holds
nothing of the gateway's and can open no file, and supervision (kill -9, deadline, crash loop).

Every test starts real worker processes (a fresh interpreter each) and checks them through /proc.
"""

from __future__ import annotations

import os
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from gateway.auth import pki
from gateway.backends import BackendConfig, load_model
from gateway.backends.isolated import IsolatedModel, events, landlock, process, sandbox_status, wire
from gateway.config import Config
from gateway.errors import ConfigError, InvalidInput, ModelFailed, TooLarge, Unavailable
from tests.models import make_onnx_gather, make_onnx_mlp, make_onnx_string_identity

ISOLATED = BackendConfig(isolation="process", max_message_bytes=1 << 20)
needs_landlock = pytest.mark.skipif(landlock.abi_version() <= 0, reason="this kernel has no Landlock")


@pytest.fixture
def mlp() -> Iterator[IsolatedModel]:
    model = load_model(make_onnx_mlp(16, (32,), 2, seed=3), ISOLATED, "mlp:1")
    assert isinstance(model, IsolatedModel)
    yield model
    model.close()


@pytest.fixture
def seen() -> Iterator[list[events.WorkerEvent]]:
    """The worker events emitted during the test."""
    got: list[events.WorkerEvent] = []
    unsubscribe = events.subscribe(got.append)
    yield got
    unsubscribe()


def _wait(predicate: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# --- same answers --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("files", "inputs"),
    [
        (make_onnx_mlp(16, (32,), 2, seed=3), {"input": np.random.default_rng(1).standard_normal((5, 16), np.float32)}),
        (make_onnx_string_identity(), {"text": np.array([b"a", b"", "é".encode(), b"x" * 1000], dtype=object)}),
        (make_onnx_gather(6), {"index": np.array([0, 5, -1, 2], dtype=np.int64)}),
    ],
    ids=["mlp", "strings", "gather"],
)
def test_isolated_outputs_equal_in_process(files: dict[str, bytes], inputs: dict[str, np.ndarray]) -> None:
    """Byte-identical outputs, dtypes and specs through the worker as in the gateway's process."""
    local = load_model(files)
    isolated = load_model(files, ISOLATED, "t:1")
    try:
        assert isolated.inputs == local.inputs and isolated.outputs == local.outputs
        assert isolated.platform == local.platform == "onnxruntime_onnx"
        want, got = local.infer(inputs), isolated.infer(inputs)
        assert want.keys() == got.keys()
        for name in want:
            assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
            if want[name].dtype == object:
                assert got[name].tolist() == want[name].tolist()
            else:
                assert got[name].tobytes() == want[name].tobytes()
    finally:
        isolated.close()


def test_client_errors_keep_their_type_and_the_worker(mlp: IsolatedModel) -> None:
    """A bad request is InvalidInput (INVALID_ARGUMENT), a too-large one TooLarge; the worker serves on."""
    pid = mlp.pid
    with pytest.raises(InvalidInput, match="dimension 1 must be 16"):
        mlp.infer({"input": np.zeros((2, 3), np.float32)})
    with pytest.raises(TooLarge):
        mlp.infer({"input": np.zeros((40_000, 16), np.float32)})  # 2.56 MB > the 1 MiB (+1 MiB slack) region
    assert mlp.infer({"input": np.ones((1, 16), np.float32)})["output"].shape == (1, 2)
    assert mlp.pid == pid


def _one_row_only(files: dict[str, bytes]) -> dict[str, bytes]:
    """The MLP with a Reshape to one row in front: right for one row, a runtime error in ORT for more."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(files["model.onnx"])
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array([1, 16], np.int64), "one_row"))
    for node in graph.node:
        node.input[:] = ["input_r" if name == "input" else name for name in node.input]
    graph.node.insert(0, helper.make_node("Reshape", ["input", "one_row"], ["input_r"]))
    return {"model.onnx": model.SerializeToString()}


def test_a_runtime_error_is_internal_in_both_modes_and_the_worker_serves_on() -> None:
    """An error inside ONNX Runtime reaches clients as INTERNAL whether the model runs in-process or in a
    worker (not UNAVAILABLE: the worker did not fail), with no runtime text; the worker keeps serving."""
    from gateway.server.status_map import grpc_status

    files = _one_row_only(make_onnx_mlp(16, (32,), 2, seed=3))
    two_rows = {"input": np.ones((2, 16), np.float32)}
    local, isolated = load_model(files), load_model(files, ISOLATED, "err:1")
    try:
        with pytest.raises(Exception) as in_process:
            local.infer(two_rows)
        pid = isolated.pid
        with pytest.raises(ModelFailed) as in_worker:
            isolated.infer(two_rows)
        assert grpc_status(in_worker.value)[0] == grpc_status(in_process.value)[0] == grpc.StatusCode.INTERNAL
        assert "Reshape" not in grpc_status(in_worker.value)[1]
        assert isolated.infer({"input": np.ones((1, 16), np.float32)})["output"].shape == (1, 2)
        assert isolated.pid == pid
    finally:
        isolated.close()


# --- what a worker holds -------------------------------------------------------------------------
def test_worker_holds_nothing_of_the_gateways(mlp: IsolatedModel, tmp_path: Path) -> None:
    """Fresh interpreter (-I), no inherited fd (no key file, no socket of the gateway), scrubbed
    environment, no_new_privs, an empty private working directory of its own."""
    os.environ["SEALGATE_TEST_SECRET_ENV"] = "must-not-leak"
    closing: list[IsolatedModel] = []
    keyfd = os.open(Path(__file__), os.O_RDONLY)  # an inheritable-looking fd the gateway holds
    os.set_inheritable(keyfd, True)
    try:
        mlp.close()
        model = load_model(make_onnx_mlp(16, (32,), 2, seed=3), ISOLATED, "mlp:1")
        assert isinstance(model, IsolatedModel)
        closing.append(model)
        pid = model.pid
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[:5] == [sys.executable.encode(), b"-I", b"-B", b"-m", b"gateway.backends.isolated.worker"]
        cwd = os.readlink(f"/proc/{pid}/cwd")
        assert stat.S_IMODE(os.stat(cwd).st_mode) == 0o700 and Path(cwd).name.startswith("sealgate-worker-")
        targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        for target in targets:
            ok = target == "/dev/null" or target.startswith(("socket:", "/memfd:sealgate-tensors", cwd + "/"))
            assert ok, f"the worker holds {target}"
        assert sum(t.startswith("socket:") for t in targets) == ISOLATED.worker_slots  # one per slot
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"SEALGATE_TEST_SECRET_ENV" not in environ and b"PYTHONPATH" not in environ
        status = Path(f"/proc/{pid}/status").read_text()
        if landlock.abi_version() > 0:
            assert "NoNewPrivs:\t1" in status
        model.close()
        _wait(lambda: not Path(cwd).exists())
    finally:
        for opened in closing:
            opened.close()
        os.close(keyfd)
        del os.environ["SEALGATE_TEST_SECRET_ENV"]


@needs_landlock
def test_landlock_ruleset_denies_every_file_and_tcp(tmp_path: Path) -> None:
    """The worker's ruleset in a fresh interpreter: a private key it could read before is refused after,
    so is writing, listing and connecting; imports made before still work."""
    certs = tmp_path / "certs"
    pki.write_recipient_keys(certs)
    key = certs / "gateway.key"
    script = textwrap.dedent(
        f"""
        import os, socket, sys
        from gateway.backends.isolated import landlock
        key = {str(key)!r}
        assert open(key, "rb").read()
        print("abi", landlock.restrict())
        for attempt in (lambda: open(key, "rb").read(), lambda: open({str(tmp_path / "w")!r}, "w"),
                        lambda: os.listdir({str(tmp_path)!r}), lambda: open("/etc/passwd").read()):
            try:
                attempt()
                print("ALLOWED")
            except PermissionError:
                print("denied")
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", 9))
            print("ALLOWED")
        except PermissionError:
            print("denied")
        except OSError as exc:
            print("ALLOWED", exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    lines = out.stdout.split()
    assert lines[:2] == ["abi", str(landlock.abi_version())]
    assert lines[2:] == ["denied"] * 5, out.stdout
    assert not (tmp_path / "w").exists()


def test_sandbox_status_says_when_landlock_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start-up logs and the gauge say plainly when there is no file-system sandbox."""
    monkeypatch.setattr(landlock, "abi_version", lambda: 0)
    assert sandbox_status().startswith("landlock unavailable")
    with pytest.raises(landlock.LandlockError):
        landlock.restrict()


# --- the gateway never trusts the worker's replies ------------------------------------------------
FP32, BYTES_CODE = wire.CODES["FP32"], wire.CODES["BYTES"]


def _reply(*descriptors: bytes, count: int | None = None) -> bytes:
    """A success reply of `descriptors` (the count can lie)."""
    head = wire.REPLY.pack(wire.OK, len(descriptors) if count is None else count)
    return head + wire.RUN.pack(1000) + b"".join(descriptors)


def _desc(index: int, code: int, dims: list[int], offset: int, nbytes: int) -> bytes:
    return struct.pack(f"<HBBQQ{len(dims)}q", index, code, len(dims), offset, nbytes, *dims)


@pytest.mark.parametrize(
    "message",
    [
        _reply(_desc(0, FP32, [2], 1 << 30, 8)),  # outside the region
        _reply(_desc(0, FP32, [2], 4090, 8)),  # runs past the region's end
        _reply(_desc(0, FP32, [2], 0, 7)),  # size does not match the shape
        _reply(_desc(0, 200, [2], 0, 8)),  # unknown datatype
        _reply(_desc(0, FP32, [-1], 0, 8)),  # negative dimension
        _reply(_desc(0, FP32, [1 << 40, 1 << 40], 0, 8)),  # a shape far larger than its bytes
        _reply(_desc(0, BYTES_CODE, [2], 0, 6)),  # BYTES element runs past its tensor
        _reply(_desc(2, FP32, [2], 0, 8)),  # an output the model does not have
        _reply(_desc(0, FP32, [2], 0, 8), _desc(0, FP32, [2], 64, 8)),  # the same output twice
        _reply(_desc(0, FP32, [2], 0, 8), count=2),  # fewer descriptors than it says
        _reply(_desc(0, FP32, [2], 0, 8), count=5),  # more outputs than the model has
        _reply(_desc(0, FP32, [2], 0, 8)) + b"x",  # trailing bytes
        _reply(struct.pack("<HBBQQ", 0, FP32, 65, 0, 0) + bytes(65 * 8)),  # rank above the limit
        _reply(_desc(0, FP32, [2], 0, 8))[:-3],  # cut short
        wire.REPLY.pack(99, 0),  # unknown status
        wire.REPLY.pack(1, 50) + b"short",  # error text shorter than it says
        b"\x00",  # shorter than a header
        wire.REPLY.pack(wire.OK, 0) + b"\x01\x02",  # a success header without its run time
    ],
)
def test_malformed_worker_replies_are_refused(message: bytes) -> None:
    """Every binary reply field a worker controls is checked before the gateway reads the region."""
    region = memoryview(bytearray(4096))
    with pytest.raises(wire.WireError):
        wire.read_reply(message, ("a", "b"), region, 0, 4096)
    with pytest.raises(wire.WireError):
        wire.decode(b"[1, 2]")


def test_well_formed_replies_round_trip() -> None:
    """The same encoder the worker uses gives back exact copies (not views of the region) and typed errors."""
    region = memoryview(bytearray(8192))
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    s = np.array([b"ab", b"", b"c"], dtype=object)
    message = wire.reply_ok([(1, FP32, x), (0, BYTES_CODE, s)], region, 0, 8192, run_ns=12_345)
    out, kind, text, run_ns = wire.read_reply(message, ("s", "x"), region, 0, 8192)
    assert kind == text == "" and out["x"].tobytes() == x.tobytes() and out["s"].tolist() == s.tolist()
    assert run_ns == 12_345  # the model's run as the worker timed it
    region[:] = bytes(8192)
    assert out["x"].tobytes() == x.tobytes()
    assert wire.read_reply(wire.reply_error("TooLarge", "too big"), ("x",), region, 0, 8192) == (
        {},
        "TooLarge",
        "too big",
        0,
    )
    assert wire.read_reply(wire.reply_error("KeyError", "?"), ("x",), region, 0, 8192)[1] == "Internal"


# --- supervision ---------------------------------------------------------------------------------
def test_killed_idle_worker_is_restarted_and_reported(mlp: IsolatedModel, seen: list[events.WorkerEvent]) -> None:
    """kill -9 of an idle worker: reported (crashed, then restarted); the next call waits for the new worker."""
    x = np.ones((3, 16), np.float32)
    want = mlp.infer({"input": x})["output"]
    old = mlp.pid
    os.kill(old, signal.SIGKILL)
    started = time.monotonic()
    _wait(lambda: any(e.kind == events.CRASHED for e in seen))  # dead, not dying: the next call is not in flight
    np.testing.assert_array_equal(mlp.infer({"input": x})["output"], want)
    assert time.monotonic() - started < 2.0
    assert mlp.pid != old
    _wait(lambda: [e.kind for e in seen if e.label == "mlp:1"][-2:] == [events.CRASHED, events.RESTARTED])
    crash = next(e for e in seen if e.kind == events.CRASHED)
    assert crash.pid == old and "SIGKILL" in crash.detail


def test_overdue_call_fails_alone_and_the_worker_is_replaced(seen: list[events.WorkerEvent]) -> None:
    """A call past the deadline (a stopped worker) is Unavailable; the worker is killed and restarted."""
    model = load_model(make_onnx_mlp(16, (32,), 2, seed=3), BackendConfig(isolation="process", worker_deadline_s=0.5))
    assert isinstance(model, IsolatedModel)
    try:
        x = {"input": np.ones((1, 16), np.float32)}
        stopped = model.pid
        os.kill(stopped, signal.SIGSTOP)
        with pytest.raises(Unavailable, match="deadline"):
            model.infer(x)
        _wait(lambda: model.pid not in (0, stopped))
        assert model.infer(x)["output"].shape == (1, 2)
        assert any(e.kind == events.DEADLINE and e.pid == stopped and e.failed_calls == 1 for e in seen)
        _wait(lambda: not Path(f"/proc/{stopped}").exists() or "Z" in Path(f"/proc/{stopped}/stat").read_text())
    finally:
        model.close()


def test_crash_loop_marks_the_model_failed(seen: list[events.WorkerEvent]) -> None:
    """worker_max_crashes crashes within the window: FAILED is reported, every later call is Unavailable."""
    config = BackendConfig(isolation="process", worker_max_crashes=2, worker_restart_backoff_s=0.0)
    model = load_model(make_onnx_mlp(16, (32,), 2, seed=3), config, "loop:7")
    assert isinstance(model, IsolatedModel)
    try:
        os.kill(model.pid, signal.SIGKILL)
        _wait(lambda: any(e.kind == events.RESTARTED for e in seen))
        os.kill(model.pid, signal.SIGKILL)
        _wait(lambda: bool(model.failed))
        with pytest.raises(Unavailable, match="failed"):
            model.infer({"input": np.ones((1, 16), np.float32)})
        assert [e.kind for e in seen if e.label == "loop:7"][-1] == events.FAILED
        assert model.pid == 0
    finally:
        model.close()


def test_isolation_config_is_checked() -> None:
    """Unknown isolation modes and impossible worker knobs are refused at load, naming the key."""
    with pytest.raises(ConfigError, match="isolation"):
        Config().replaced(backend={"isolation": "thread"})
    with pytest.raises(ConfigError, match="worker_max_crashes"):
        Config().replaced(backend={"worker_max_crashes": 0})
    assert Config().backend.isolation == "process"  # the default: models never share the gateway's process
    with pytest.raises(ConfigError):
        BackendConfig(isolation="fork")
    with pytest.raises(ConfigError, match="worker_spin_us"):
        Config().replaced(backend={"worker_spin_us": -1})
    with pytest.raises(ConfigError, match="worker_spin_us"):
        BackendConfig(worker_spin_us=20_000)


def test_spin_is_off_on_one_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bounded spin is used only where a second core can run the worker meanwhile, and 0 turns it off."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert process.spin_budget_ns(250.0) == 250_000 and process.spin_budget_ns(0.0) == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert process.spin_budget_ns(250.0) == 0


@pytest.mark.parametrize("spin_us", [0.0, 1000.0])
def test_overdue_async_call_fails_alone_and_the_worker_is_replaced(
    spin_us: float, seen: list[events.WorkerEvent]
) -> None:
    """The data plane's path (a reader on the slot's socket, a timer for the deadline): a stopped worker's
    call is Unavailable at the deadline, the worker is killed and restarted, the next call is answered."""
    import asyncio

    config = BackendConfig(isolation="process", worker_deadline_s=0.5, worker_spin_us=spin_us)
    model = load_model(make_onnx_mlp(16, (32,), 2, seed=3), config)
    assert isinstance(model, IsolatedModel)
    try:
        x = {"input": np.ones((1, 16), np.float32)}
        stopped = model.pid
        os.kill(stopped, signal.SIGSTOP)
        _wait(
            lambda: all(  # every thread stopped: none answers a call it is woken for on the way
                Path(f"/proc/{stopped}/task/{t}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
                for t in os.listdir(f"/proc/{stopped}/task")
            )
        )
        started = time.monotonic()
        with pytest.raises(Unavailable, match="deadline"):
            asyncio.run(model.infer_async(x))
        assert 0.4 < time.monotonic() - started < 3.0
        _wait(lambda: model.pid not in (0, stopped))
        out, _began, took = asyncio.run(model.infer_async(x))
        assert out["output"].shape == (1, 2) and took > 0
        assert any(e.kind == events.DEADLINE and e.pid == stopped and e.failed_calls == 1 for e in seen)
    finally:
        model.close()


def test_async_calls_share_the_slots_and_match_sync(mlp: IsolatedModel) -> None:
    """infer_async (the data plane's path: no thread held while the worker runs) gives the same bytes as
    infer, with more concurrent calls than slots (the overflow waits in threads); a cancelled caller does
    not leave a stale reply in its slot."""
    import asyncio

    rng = np.random.default_rng(5)
    batches = [{"input": rng.standard_normal((i + 1, 16), np.float32)} for i in range(12)]
    want = [mlp.infer(b)["output"].tobytes() for b in batches]

    async def run() -> list[bytes]:
        slow = asyncio.ensure_future(mlp.infer_async(batches[0]))
        await asyncio.sleep(0)
        slow.cancel()  # the call itself finishes in the background and gives its slot back
        results = await asyncio.gather(*(mlp.infer_async(b) for b in batches))
        return [out["output"].tobytes() for out, _began, took in results if took > 0]

    assert asyncio.run(run()) == want
    assert mlp.infer(batches[3])["output"].tobytes() == want[3]


def test_a_batchers_delay_keeps_a_lone_calls_worker_awake(mlp: IsolatedModel) -> None:
    """A dynamic batcher in front asks the worker to poll through its queue delay (plus a round trip) between
    lone calls; concurrent requests seen by the batcher switch the poll off, so it never takes a busy core."""
    if not mlp._spin:
        pytest.skip("one core: workers never spin")
    worker = mlp._worker
    assert worker is not None
    try:
        mlp.linger(500)
        mlp._contended = 0.0
        flags = mlp._flags(worker)
        assert flags & wire.SPIN and (flags >> 1) * wire.LINGER_UNIT_NS == 1_500_000
        mlp.loaded()
        assert mlp._flags(worker) == 0
        mlp.linger(0)
        mlp._contended = 0.0
        assert mlp._flags(worker) == wire.SPIN
    finally:
        mlp.linger(0)


def test_an_async_call_reports_the_models_own_run(mlp: IsolatedModel) -> None:
    """The run the data plane records (statistics, canary judgment) is the model's, timed in the worker: less
    than the round trip seen here, and placed at its end (the hand-over counts as queueing)."""
    import asyncio

    x = {"input": np.ones((4, 16), np.float32)}

    async def run() -> tuple[int, int, int, int]:
        t0 = time.perf_counter_ns()
        _, began, took = await mlp.infer_async(x)
        return t0, began, took, time.perf_counter_ns()

    for t0, began, took, t1 in [asyncio.run(run()) for _ in range(5)]:
        assert 0 < took < t1 - t0
        assert t0 < began and began + took <= t1


def test_kill_under_async_load_fails_only_the_calls_in_the_worker(seen: list[events.WorkerEvent]) -> None:
    """16 awaiting callers, 2 slots, kill -9 mid-way: at most the 2 running calls fail, every slot comes back,
    and no call hangs to the deadline (the sockets a loop reads are shut down, never closed under it)."""
    import asyncio

    model = load_model(make_onnx_mlp(16, (32,), 2, seed=3), BackendConfig(isolation="process", worker_deadline_s=5))
    assert isinstance(model, IsolatedModel)
    x = {"input": np.ones((4, 16), np.float32)}
    errors: list[str] = []

    async def run() -> None:
        issued = [0]

        async def caller() -> None:
            while issued[0] < 600:
                issued[0] += 1
                if issued[0] == 200:
                    os.kill(model.pid, signal.SIGKILL)
                try:
                    await model.infer_async(x)
                except Unavailable as exc:
                    errors.append(str(exc))

        await asyncio.wait_for(asyncio.gather(*(caller() for _ in range(16))), 4.0)

    try:
        asyncio.run(run())
        assert len(errors) <= model._config.worker_slots and all("died during the call" in e for e in errors)
        worker = model._worker
        assert worker is not None and sorted(worker.free) == list(range(model._config.worker_slots))
        assert [e.kind for e in seen if e.kind in (events.CRASHED, events.DEADLINE)] == [events.CRASHED]
    finally:
        model.close()
