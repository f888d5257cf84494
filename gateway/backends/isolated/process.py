"""The gateway's side of an isolated model: a worker process per model version, supervised.

`IsolatedModel` has the same `infer(inputs, requested)` / `close()` interface as an in-process model, so
wrappers (batching) compose around it. The worker is a fresh interpreter (never a fork: a forked child
would inherit the keys in memory) started with close_fds, a scrubbed environment and an empty private
working directory; the checked model bytes reach it in a memfd, tensors through one shared-memory
region, one small fixed-layout binary message per call and direction over a socketpair (wire.py); the
reply wakes the event loop through a reader on the slot's socket, with no task or thread per call. A
worker has `worker_slots` channels (socket and part of the region each), so that many calls run in it at
once; other calls wait for a free channel (and for a restart) up to the deadline. A dead or overdue
worker fails only the call it was running (Unavailable) and is restarted with backoff; too many crashes in
the window mark the model failed (events.FAILED), and every later call is Unavailable until the manager
replaces it.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import logging
import mmap
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from asyncio import events as asyncio_events
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gateway.backends.base import BackendConfig, TensorSpec
from gateway.backends.isolated import events, wire
from gateway.backends.validation import validate_inputs, validate_outputs
from gateway.errors import InvalidInput, ModelFailed, TooLarge, Unavailable, UnsupportedFormat, clip

log = logging.getLogger("sealgate.backends")

_SLACK = 1 << 20  # alignment and BYTES length prefixes on top of the message limit
_MIN_OUTPUT = 4 << 20
_MAX_SPECS = 4096
_START_TIMEOUT_S = 120.0
_MAX_BACKOFF_S = 5.0
_CALM_S = 0.2  # calls one at a time this long before a worker may spin between them
_LINGER_SLACK_US = 1000  # on top of a batcher's queue delay: the caller's round trip between two lone calls
_ERRORS: dict[str, type[Exception]] = {
    "InvalidInput": InvalidInput,
    "TooLarge": TooLarge,
    "UnsupportedFormat": UnsupportedFormat,
}
_ENV_KEEP = ("LANG", "LC_ALL")
_LIVE: weakref.WeakSet[IsolatedModel] = weakref.WeakSet()
_Call = tuple[list[tuple[int, int, np.ndarray]], list[int]]  # (input index, datatype code, array), output indices


@atexit.register
def _close_all() -> None:
    """At interpreter exit, stop every worker still running (a killed gateway's workers see EOF and exit)."""
    for model in list(_LIVE):
        model.close()


def sandbox_folder() -> str:
    """A new empty private folder (0700) for one worker's working directory and TMPDIR."""
    return tempfile.mkdtemp(prefix="sealgate-worker-")


def worker_env(folder: str) -> dict[str, str]:
    """The whole environment a worker gets: nothing of the gateway's but the locale; one thread per library."""
    env = {key: os.environ[key] for key in _ENV_KEEP if key in os.environ}
    env.update(
        PATH="/usr/bin:/bin",
        HOME=folder,
        TMPDIR=folder,
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    return env


class _Slot:
    """One channel to a worker: a control socket (non-blocking once started) and its own part of the shared
    region (inputs, then outputs)."""

    def __init__(self, sock: socket.socket, region: memoryview, split: int) -> None:
        self.sock = sock
        self.region = region
        self.split = split
        self.buffer = bytearray(wire.MAX_CONTROL + 1)  # replies land here: recv(n) would allocate n bytes per call
        self.view = memoryview(self.buffer)

    def _receive(self) -> dict[str, Any]:
        """The load handshake's JSON reply (blocking, with the socket's timeout)."""
        data = self.sock.recv(wire.MAX_CONTROL + 1)
        if not data:
            raise EOFError("the worker closed its socket")
        return wire.decode(data)

    def send(self, call: _Call, flags: int = 0) -> None:
        """Put one request's tensors into the region and send its message (OSError: the worker is gone)."""
        try:
            message = wire.request(call[0], call[1], self.region, self.split, flags)
        except wire.WireError as exc:
            raise TooLarge(f"the request does not fit the model worker's region: {exc}") from None
        self.sock.send(message)

    def poll(self) -> memoryview | None:
        """The reply if it has arrived (a view of the slot's buffer, valid until the next poll), else None;
        EOFError if the worker closed its socket; never blocks."""
        try:
            received = self.sock.recv_into(self.buffer)
        except BlockingIOError:
            return None
        if not received:
            raise EOFError("the worker closed its socket")
        return self.view[:received]

    def receive(self, timeout: float) -> memoryview:
        """The reply to the message sent, waiting up to `timeout` (TimeoutError; EOFError if the worker died)."""
        until = time.monotonic() + timeout
        while True:
            data = self.poll()
            if data is not None:
                return data
            left = until - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise TimeoutError("no reply before the deadline")

    def outputs_of(self, data: memoryview, names: tuple[str, ...]) -> tuple[dict[str, np.ndarray], str, str, int]:
        """The reply's outputs, copied out of the region after every descriptor was checked (or its error), and
        the run the worker claims (ns)."""
        return wire.read_reply(data, names, self.region, self.split, len(self.region))


class _Worker:
    """One running worker process: its slots (socket + part of the region each) and which of them are free."""

    def __init__(self, payload: bytes, load: Mapping[str, Any], config: BackendConfig, label: str) -> None:
        """Start the worker, hand it the model, and wait for its specs (UnsupportedFormat if it refuses)."""
        split = config.max_message_bytes + _SLACK
        slot_size = split + max(config.max_message_bytes, _MIN_OUTPUT) + _SLACK
        count = config.worker_slots
        size = slot_size * count
        self.folder = sandbox_folder()
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(count)]
        shm_fd = os.memfd_create("sealgate-tensors", os.MFD_CLOEXEC)
        model_fd = os.memfd_create("sealgate-model", os.MFD_CLOEXEC)
        try:
            os.ftruncate(shm_fd, size)
            self.shm = mmap.mmap(shm_fd, size)
            region = memoryview(self.shm)
            view = memoryview(payload)
            while view:
                view = view[os.write(model_fd, view) :]
            socks = [child.fileno() for _, child in pairs]
            argv = [sys.executable, "-I", "-B", "-m", "gateway.backends.isolated.worker"]
            argv += [str(n) for n in (shm_fd, size, model_fd, slot_size, split, *socks)]
            self.proc = subprocess.Popen(
                argv,
                cwd=self.folder,
                env=worker_env(self.folder),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                pass_fds=(shm_fd, model_fd, *socks),
                start_new_session=True,
            )
        finally:
            for _, child in pairs:
                child.close()
            os.close(shm_fd)
            os.close(model_fd)
        self.slots = [
            _Slot(parent, region[i * slot_size : (i + 1) * slot_size], split) for i, (parent, _) in enumerate(pairs)
        ]
        self.free = list(range(count))
        self.pid = self.proc.pid
        self.label = label
        first = self.slots[0]
        try:
            first.sock.settimeout(_START_TIMEOUT_S)
            spin_ns = spin_budget_ns(config.worker_spin_us)
            first.sock.send(wire.encode({**load, "size": len(payload), "spin_ns": spin_ns}))
            reply = first._receive()
        except (OSError, EOFError, wire.WireError) as exc:
            self.kill()
            raise UnsupportedFormat(f"the model worker did not start: {clip(exc)}") from None
        if not reply.get("ok"):
            self.kill()
            raise UnsupportedFormat(f"the model worker refused the model: {clip(reply.get('message', ''), 300)}")
        self.landlock = int(reply.get("landlock", 0))
        self.inputs = _specs(reply.get("inputs"))
        self.outputs = _specs(reply.get("outputs"))
        for slot in self.slots:  # calls poll, or wait on the loop's selector: never a blocking recv
            slot.sock.setblocking(False)

    def kill(self) -> None:
        """SIGKILL the worker, reap it, and drop its sockets and folder."""
        try:
            self.proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.release()

    def release(self) -> None:
        """Close the free slots' sockets, shut down the busy ones (their calls see EOF and close them when they
        give the slot back: a socket is never closed under a reader, whose fd number could be reused), and
        remove the folder; the mapping goes with its last reference."""
        for index, slot in enumerate(self.slots):
            if index in self.free:
                slot.sock.close()
            else:
                try:
                    slot.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        shutil.rmtree(self.folder, ignore_errors=True)


def _specs(items: Any) -> tuple[TensorSpec, ...]:
    """TensorSpecs from the worker's answer, each checked (the worker is not trusted)."""
    if not isinstance(items, list) or len(items) > _MAX_SPECS:
        raise UnsupportedFormat("the model worker described its tensors badly")
    specs = []
    for item in items:
        try:
            name, datatype, shape, rank_known = item
            specs.append(TensorSpec(str(name), str(datatype), tuple(int(d) for d in shape), bool(rank_known)))
        except (TypeError, ValueError):
            raise UnsupportedFormat("the model worker described its tensors badly") from None
    return tuple(specs)


class IsolatedModel:
    """A model served by a supervised worker process; safe to call from many threads (`worker_slots` at once)."""

    runs_inline = False  # it waits on another process: the data plane awaits infer_async, never the loop

    def __init__(
        self, platform: str, payload: bytes, load: Mapping[str, Any], config: BackendConfig, label: str
    ) -> None:
        """Start the first worker; UnsupportedFormat if the model does not load there."""
        self.platform = platform
        self.label = label
        self._payload = payload
        self._load = dict(load)
        self._config = config
        self._state = threading.Condition()
        self._crashes: list[float] = []
        self._waiters: collections.deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[tuple[_Worker, int]]]] = (
            collections.deque()
        )
        self._failed = ""
        self._closed = False
        worker = _Worker(payload, load, config, label)
        self.inputs = worker.inputs
        self.outputs = worker.outputs
        self._input_specs = {spec.name: spec for spec in self.inputs}  # per-model layouts, built once
        self._input_layout = tuple((i, spec.name, wire.CODES[spec.datatype]) for i, spec in enumerate(self.inputs))
        self._output_names = tuple(spec.name for spec in self.outputs)
        self._output_index = {name: i for i, name in enumerate(self._output_names)}
        self.parallel_calls = config.worker_slots  # a dynamic batcher runs this many batches at once
        self._spin = spin_budget_ns(config.worker_spin_us) > 0
        self._contended = 0.0  # when a call last overlapped another (monotonic): no worker spin soon after
        self._linger = 0  # extra spin in wire.LINGER_UNIT_NS units: a batcher's queue delay (see `linger`)
        self.landlock = worker.landlock
        self._worker: _Worker | None = worker
        self._watch(worker)
        _LIVE.add(self)
        events.emit(events.WorkerEvent(events.STARTED, label, worker.pid, f"landlock ABI {worker.landlock}"))

    @property
    def pid(self) -> int:
        """The running worker's process id (0 while none runs)."""
        worker = self._worker
        return worker.pid if worker is not None else 0

    @property
    def failed(self) -> str:
        """Why the model was marked failed ('' while it serves)."""
        return self._failed

    def _watch(self, worker: _Worker) -> None:
        """A thread that notices the worker's death even while no call is running."""

        def wait() -> None:
            code = worker.proc.wait()
            self._lost(worker, events.CRASHED, _exit_text(code))

        threading.Thread(target=wait, name=f"sealgate-worker-watch-{worker.pid}", daemon=True).start()

    def _lost(self, worker: _Worker, kind: str, detail: str) -> None:
        """Forget a worker that died or was killed (once), and schedule its replacement."""
        with self._state:
            if self._worker is not worker:
                return
            self._worker = None
            closing = self._closed
            failed_calls = len(worker.slots) - len(worker.free)  # the calls it was running die with it
        worker.kill()  # dead already (reaped at once), overdue, or answering badly: gone either way
        if closing:
            return
        events.emit(events.WorkerEvent(kind, self.label, worker.pid, detail, failed_calls))
        now = time.monotonic()
        with self._state:
            window = self._config.worker_crash_window_s
            self._crashes = [t for t in self._crashes if now - t < window] + [now]
            if len(self._crashes) >= self._config.worker_max_crashes:
                self._failed = f"{len(self._crashes)} worker crashes within {window:g} s"
                self._fail_waiters()
                self._state.notify_all()
                failed = True
            else:
                failed = False
        if failed:
            events.emit(events.WorkerEvent(events.FAILED, self.label, worker.pid, self._failed))
            return
        threading.Thread(target=self._restart, name="sealgate-worker-restart", daemon=True).start()

    def _restart(self) -> None:
        """Start a new worker after the backoff (none for the first crash in the window, then doubling)."""
        while True:
            with self._state:
                crashes = len(self._crashes)
                if self._closed or self._failed:
                    self._state.notify_all()
                    return
            base = self._config.worker_restart_backoff_s
            time.sleep(0.0 if crashes <= 1 else min(base * 2 ** (crashes - 2), _MAX_BACKOFF_S))
            try:
                worker = _Worker(self._payload, self._load, self._config, self.label)
            except Exception as exc:
                with self._state:
                    self._crashes.append(time.monotonic())
                    if len(self._crashes) >= self._config.worker_max_crashes:
                        self._failed = f"the worker could not be restarted: {clip(exc)}"
                        self._fail_waiters()
                events.emit(events.WorkerEvent(events.CRASHED, self.label, 0, f"restart failed: {clip(exc)}"))
                if self._failed:
                    events.emit(events.WorkerEvent(events.FAILED, self.label, 0, self._failed))
                continue
            with self._state:
                if self._closed:
                    worker.kill()
                    return
                self._worker = worker
                self._hand_out(worker)
                self._state.notify_all()
            self._watch(worker)
            events.emit(events.WorkerEvent(events.RESTARTED, self.label, worker.pid, f"landlock ABI {worker.landlock}"))
            return

    def _acquire(self, until: float) -> tuple[_Worker, int]:
        """A free slot of the running worker, waiting for one (or a restart) until `until`; else Unavailable."""
        with self._state:
            while True:
                if self._closed:
                    raise Unavailable("model is closed")
                if self._failed:
                    raise Unavailable(f"the model's worker failed: {self._failed}")
                worker = self._worker
                if worker is not None and worker.free:
                    return worker, worker.free.pop()
                left = until - time.monotonic()
                if left <= 0:
                    raise Unavailable("the model's worker is restarting" if worker is None else "the model is busy")
                self._state.wait(left)

    def _give_back(self, worker: _Worker, index: int) -> None:
        """Return a slot after a call (a replaced worker's slots are dropped with it); an awaiting caller
        gets it first, then a waiting thread."""
        with self._state:
            if self._worker is worker:
                worker.free.append(index)
                self._hand_out(worker)
                self._state.notify()
                return
        worker.slots[index].sock.close()  # a lost worker's slot: its call is done with the socket

    def _hand_out(self, worker: _Worker) -> None:
        """Under the state lock: pass free slots of `worker` to callers awaiting one on an event loop."""
        while worker.free and self._waiters:
            loop, future = self._waiters.popleft()
            if future.done():
                continue
            index = worker.free.pop()
            try:  # on the waiter's own loop (the usual case): handed over now, no self-pipe write to wake it
                if asyncio_events._get_running_loop() is loop:
                    future.set_result((worker, index))
                else:
                    loop.call_soon_threadsafe(self._deliver, future, worker, index)
            except RuntimeError:  # that loop is closed: the slot stays here
                worker.free.append(index)

    def _deliver(self, future: asyncio.Future[tuple[_Worker, int]], worker: _Worker, index: int) -> None:
        """On the waiter's loop: give it the slot, or give the slot back if it stopped waiting."""
        if future.done():
            self._give_back(worker, index)
        else:
            future.set_result((worker, index))

    def _fail_waiters(self) -> None:
        """Under the state lock: wake every awaiting caller (closed or failed); they raise Unavailable."""
        while self._waiters:
            loop, future = self._waiters.popleft()
            try:
                loop.call_soon_threadsafe(_settle, future)
            except RuntimeError:
                pass

    async def _await_slot(self, until: float) -> tuple[_Worker, int]:
        """A free slot, awaited on the running loop (no thread held) until `until`; else Unavailable."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[_Worker, int]] = loop.create_future()
        with self._state:
            if self._closed or self._failed:
                raise Unavailable("model is closed" if self._closed else f"the model's worker failed: {self._failed}")
            self._waiters.append((loop, future))
            if self._worker is not None:
                self._hand_out(self._worker)
        timer = loop.call_later(max(until - time.monotonic(), 0.0), _expire, future)  # a timer, not a task
        try:
            return await future  # a slot delivered after the deadline or a cancel goes straight back (_deliver)
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                self._give_back(*future.result())  # the caller went away holding a slot: return it
            else:
                future.cancel()
            raise
        finally:
            timer.cancel()

    def _prepare(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None) -> _Call:
        """Check a request against the model's specs (InvalidInput) and lay it out by index, as sent."""
        validate_inputs(self.inputs, inputs, self._input_specs)
        tensors = [(index, code, inputs[name]) for index, name, code in self._input_layout]
        if not outputs:
            return tensors, []
        index = self._output_index
        return tensors, [index[name] for name in validate_outputs(self.outputs, outputs)]

    def loaded(self) -> None:
        """A caller in front (a dynamic batcher) saw concurrent requests: no worker spin for a while."""
        self._contended = time.monotonic()

    def linger(self, delay_us: int) -> None:
        """Let a lone call's worker poll longer for the next one: a dynamic batcher holds each call `delay_us`,
        and the caller's round trip comes on top, so a worker asleep by then wakes late (on a 2-core VM a
        sleeping worker took 1.5-2 ms to answer after a gap; at concurrency 1 with a 500 µs queue delay, p50 was
        2.9-3.2 ms with the plain 1 ms spin or 1.5 ms of it, 1.5 ms with 2.5 ms)."""
        units = -(-(max(delay_us, 0) + _LINGER_SLACK_US) * 1000 // wire.LINGER_UNIT_NS)
        self._linger = min(units, wire.MAX_LINGER) if delay_us > 0 else 0

    def _flags(self, worker: _Worker) -> int:
        """SPIN when calls have come one at a time (no other slot busy, nobody waiting) for `_CALM_S`: the
        worker may then poll for the next call on a core nothing else needs. Under concurrent load the
        gateway needs every core, so one overlap stops the spin for a while (a heuristic, read unlocked)."""
        if not self._spin:
            return 0
        now = time.monotonic()
        if self._waiters or len(worker.free) + 1 < len(worker.slots):
            self._contended = now
            return 0
        return wire.SPIN | self._linger << 1 if now - self._contended > _CALM_S else 0

    def _send(self, call: _Call, until: float, wait: bool) -> tuple[_Worker, int] | None:
        """Take a slot (None if `wait` is False and none is free) and send the request on it."""
        for _ in range(3):  # a worker found dead before the request reached it is replaced, not blamed
            if wait:
                worker, index = self._acquire(until)
            else:
                with self._state:
                    worker_now = self._worker
                    if worker_now is None or not worker_now.free or self._failed or self._closed:
                        return None
                    worker, index = worker_now, worker_now.free.pop()
            try:
                worker.slots[index].send(call, self._flags(worker))
                return worker, index
            except (OSError, ValueError) as exc:
                self._lost(worker, events.CRASHED, f"{self._ended(worker)} (found at send: {clip(exc)})")
                self._give_back(worker, index)
            except BaseException:
                self._give_back(worker, index)
                raise
        raise Unavailable("the model's worker keeps failing; it is being restarted")

    def _failed_call(self, worker: _Worker, index: int, exc: BaseException) -> Unavailable:
        """Account for a call whose worker overran the deadline or died while running it."""
        if isinstance(exc, TimeoutError):
            self._lost(worker, events.DEADLINE, f"a call ran past {self._config.worker_deadline_s:g} s")
            error = Unavailable("the model's worker ran past the deadline and was restarted")
        else:
            self._lost(worker, events.CRASHED, f"{self._ended(worker)} during a call ({clip(exc)})")
            error = Unavailable("the model's worker died during the call; it is being restarted")
        self._give_back(worker, index)
        return error

    def _answer(self, worker: _Worker, index: int, data: memoryview) -> tuple[dict[str, np.ndarray], int]:
        """The outputs of a reply and the model's run as the worker timed it (ns), or the reply's error as the
        gateway's own type; the slot is given back."""
        try:
            try:
                outputs, kind, text, run_ns = worker.slots[index].outputs_of(data, self._output_names)
            except wire.WireError as exc:
                self._lost(worker, events.CRASHED, f"malformed reply: {clip(exc)}")
                raise Unavailable("the model's worker answered badly; it is being restarted") from None
            if kind == "Internal":  # the runtime raised: INTERNAL like in-process, its text only in the log
                log.warning("model %s failed while running: %s", self.label, clip(text, 300))
                raise ModelFailed("the model failed while running")
            if kind:
                raise _ERRORS.get(kind, Unavailable)(clip(text or "the model's worker failed", 300))
            return outputs, run_ns
        finally:
            self._give_back(worker, index)

    def infer(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model in its worker; Unavailable if the worker dies or overruns the deadline meanwhile."""
        call = self._prepare(inputs, outputs)
        until = time.monotonic() + self._config.worker_deadline_s
        sent = self._send(call, until, wait=True)
        assert sent is not None
        worker, index = sent
        try:
            reply = worker.slots[index].receive(until - time.monotonic())
        except (TimeoutError, EOFError, OSError, ValueError) as exc:
            raise self._failed_call(worker, index, exc) from None
        return self._answer(worker, index, reply)[0]

    async def infer_async(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> tuple[dict[str, np.ndarray], int, int]:
        """`infer` awaited on the event loop, with no thread held while the worker runs; returns (outputs,
        start ns, run ns) as the data plane times phases: the run is the model's own, timed in the worker
        (bounded by the round trip seen here), and the start is when that run began as seen from here, so the
        hand-over to and from the worker counts as queueing, not as the model's time (a canary judge compares
        models, not process wake-ups). The reply wakes the loop through a reader on the slot's socket (no task,
        no thread per call); the loop never spins: it has other calls to run."""
        began = time.perf_counter_ns()
        call = self._prepare(inputs, outputs)
        until = time.monotonic() + self._config.worker_deadline_s
        sent = self._send(call, until, wait=False)
        while sent is None:  # every slot busy (or restarting): await one, no thread held
            worker, index = await self._await_slot(until)
            try:
                worker.slots[index].send(call, self._flags(worker))
                sent = worker, index
            except (OSError, ValueError) as exc:
                self._lost(worker, events.CRASHED, f"{self._ended(worker)} (found at send: {clip(exc)})")
                self._give_back(worker, index)
            except BaseException:
                self._give_back(worker, index)
                raise
        worker, index = sent
        slot = worker.slots[index]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[dict[str, np.ndarray], int]] = loop.create_future()
        fd = slot.sock.fileno()
        timer = loop.call_later(max(until - time.monotonic(), 0.0), self._overdue, loop, fd, worker, index, future)
        loop.add_reader(fd, self._readable, loop, fd, worker, index, future, timer)
        # a cancelled caller cancels only `future`: the reader stays, drains the slot's reply and gives it back
        answer, run_ns = await future
        ended = time.perf_counter_ns()
        run_ns = min(run_ns, ended - began)
        return answer, ended - run_ns, run_ns

    def _readable(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        worker: _Worker,
        index: int,
        future: asyncio.Future[tuple[dict[str, np.ndarray], int]],
        timer: asyncio.TimerHandle,
    ) -> None:
        """On the loop, when the slot's socket is readable: take the reply (or the worker's death) and settle."""
        failure: BaseException | None = None
        try:
            data = worker.slots[index].poll()
        except (EOFError, OSError) as exc:
            data, failure = None, exc
        else:
            if data is None:
                return  # woken without a message: keep waiting
        loop.remove_reader(fd)
        timer.cancel()
        try:
            if failure is not None or data is None:
                raise self._failed_call(worker, index, failure or EOFError("no reply"))
            result = self._answer(worker, index, data)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(result)

    def _overdue(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        worker: _Worker,
        index: int,
        future: asyncio.Future[tuple[dict[str, np.ndarray], int]],
    ) -> None:
        """On the loop, at the deadline with no reply: the worker is killed and replaced, the call fails."""
        loop.remove_reader(fd)
        error = self._failed_call(worker, index, TimeoutError())
        if not future.done():
            future.set_exception(error)

    @staticmethod
    def _ended(worker: _Worker) -> str:
        """How the worker ended, killing it first if it still runs (it broke its socket)."""
        code = worker.proc.poll()
        if code is None:
            worker.proc.kill()
            code = worker.proc.wait()
        return _exit_text(code)

    def close(self) -> None:
        """Stop the worker; a call running now gets Unavailable, later calls too."""
        with self._state:
            self._closed = True
            worker, self._worker = self._worker, None
            self._fail_waiters()
            self._state.notify_all()
        if worker is not None:
            worker.kill()


def spin_budget_ns(spin_us: float) -> int:
    """The bounded spin before blocking, in ns: `spin_us`, or 0 when this process has at most one core (a spin
    would only steal the core the worker needs)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except OSError:
        cores = os.cpu_count() or 1
    return int(spin_us * 1000) if spin_us > 0 and cores > 1 else 0


def _expire(future: asyncio.Future[Any]) -> None:
    """The wait for a slot ran past the deadline: the awaiting call raises Unavailable."""
    if not future.done():
        future.set_exception(Unavailable("the model is busy past the deadline"))


def _settle(future: asyncio.Future[Any]) -> None:
    """End the wait for a slot that will never come: the awaiting call raises Unavailable."""
    if not future.done():
        future.set_exception(Unavailable("the model is closed or its worker failed"))


def _exit_text(code: int) -> str:
    """How a process ended, in words: 'killed by SIGKILL' or 'exited with 3'."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with {code}"
