"""Several front-end processes (`[server] workers = N`): a supervisor runs N gateways sharing the ports.

The supervisor loads no key: it reads the configuration, picks concrete ports for any `:0` address, and
starts each worker as a fresh interpreter (`python -m gateway.server.supervisor`, fork + exec: a worker
never inherits another process's memory) that receives the configuration on its standard input. Every
worker opens the keys itself and binds the gRPC and REST ports with SO_REUSEPORT, so the kernel spreads
connections across them; each runs its own model manager over the shared repository (polling every
`poll_interval_s`, so a push to any worker serves on all within about a second) and the fcntl-locked
ledger serializes their pushes. The metrics listener cannot be shared meaningfully (each worker counts its
own calls), so worker i listens on the metrics port + i (each its own random port if the port is 0): scrape
them all. A worker that dies is restarted with exponential backoff; one that dies before it ever served
stops the whole server (a bad port or key would only crash again). SIGTERM / SIGINT stop every worker
(each drains its calls) and the supervisor returns 0.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.config import Config

log = logging.getLogger("sealgate.supervisor")

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 10.0
STABLE_S = 30.0  # a worker up this long gets its backoff reset
READY_BYTE = b"R"
PR_SET_PDEATHSIG = 1


def _port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _free_port(host: str) -> int:
    """A port free on `host` now (bound and released): the shared port for every worker."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host.strip("[]"), 0))
        return int(probe.getsockname()[1])


def fixed_ports(config: Config) -> Config:
    """`config` with a concrete port for a `:0` gRPC or REST address, so that all workers share it."""
    server = config.server
    changes: dict[str, Any] = {}
    for key in ("grpc_address", "rest_address"):
        host, port = _port(getattr(server, key))
        if port == 0 and (key == "grpc_address" or server.rest):
            changes[key] = f"{host}:{_free_port(host)}"
    return dataclasses.replace(config, server=dataclasses.replace(server, **changes)) if changes else config


def worker_config(config: Config, index: int) -> Config:
    """Worker `index`'s configuration: its own metrics port (the configured one + index; 0 stays 0)."""
    server = config.server
    if not server.metrics_address:
        return config
    host, port = _port(server.metrics_address)
    metrics = f"{host}:{port + index if port else 0}"
    return dataclasses.replace(config, server=dataclasses.replace(server, metrics_address=metrics))


@dataclass
class Worker:
    """One front-end process and its restart state."""

    index: int
    config: Config
    proc: subprocess.Popen[bytes] | None = None
    ready_fd: int = -1
    ready: bool = False  # has served at least once
    started_at: float = 0.0
    backoff: float = BACKOFF_START_S
    restart_at: float | None = None
    restarts: int = 0
    pids: list[int] = field(default_factory=list)

    def start(self) -> None:
        """Spawn a fresh interpreter for this worker and hand it its configuration."""
        read_fd, write_fd = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.server.supervisor", str(self.index), str(write_fd)],
            stdin=subprocess.PIPE,
            pass_fds=(write_fd,),
            close_fds=True,
        )
        os.close(write_fd)
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(pickle.dumps(worker_config(self.config, self.index)))
            self.proc.stdin.close()
        self.ready_fd = read_fd
        self.started_at = time.monotonic()
        self.restart_at = None
        self.pids.append(self.proc.pid)
        log.info("worker %d started (pid %d)", self.index, self.proc.pid)

    def poll_ready(self) -> None:
        """Note the worker's "serving" byte once it arrives."""
        if self.ready_fd < 0:
            return
        readable, _, _ = select.select([self.ready_fd], [], [], 0)
        if readable:
            if os.read(self.ready_fd, 1) == READY_BYTE:
                self.ready = True
            os.close(self.ready_fd)
            self.ready_fd = -1

    def reap(self) -> int | None:
        """The exit status if the worker died (its pipe closed), else None."""
        if self.proc is None or self.proc.poll() is None:
            return None
        if self.ready_fd >= 0:
            self.poll_ready()
            if self.ready_fd >= 0:
                os.close(self.ready_fd)
                self.ready_fd = -1
        status = self.proc.returncode
        self.proc = None
        return status


class Supervisor:
    """Runs `config.server.workers` front-end processes until stopped; restarts the ones that die."""

    def __init__(self, config: Config) -> None:
        self.config = fixed_ports(config)
        self.workers = [Worker(i, self.config) for i in range(config.server.workers)]
        # a plain flag: set from the signal handler, which runs in this (the main) thread between any two
        # bytecodes; a threading.Event's set() takes the lock its wait() may hold at that moment (a deadlock)
        self.stopping = False
        self.failed = ""

    def run(self) -> int:
        """Start every worker and watch them until `stopping`; 0, or 1 if a worker never came up."""
        for worker in self.workers:
            worker.start()
        while not self.stopping:
            now = time.monotonic()
            for worker in self.workers:
                worker.poll_ready()
                status = worker.reap()
                if status is not None:
                    self._died(worker, status, now)
                if worker.proc is None and worker.restart_at is not None and now >= worker.restart_at:
                    worker.restarts += 1
                    worker.start()
            if self.failed:
                break
            time.sleep(0.05)
        self.stop_all()
        if self.failed:
            print(f"error: {self.failed}", file=sys.stderr, flush=True)
            return 1
        return 0

    def _died(self, worker: Worker, status: int, now: float) -> None:
        """Schedule a restart with backoff, or give up on a worker that never served."""
        if not worker.ready:
            self.failed = f"front-end worker {worker.index} exited ({status}) before it served"
            return
        if now - worker.started_at >= STABLE_S:
            worker.backoff = BACKOFF_START_S
        log.warning("worker %d exited (%d); restarting in %.1f s", worker.index, status, worker.backoff)
        worker.restart_at = now + worker.backoff
        worker.backoff = min(worker.backoff * 2, BACKOFF_MAX_S)

    def stop_all(self) -> None:
        """SIGTERM every worker (each drains), then SIGKILL what is still there after the drain time."""
        live = [w.proc for w in self.workers if w.proc is not None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.server.drain_seconds + 5.0
        for proc in live:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for worker in self.workers:
            if worker.ready_fd >= 0:
                os.close(worker.ready_fd)
                worker.ready_fd = -1


def supervise(config: Config) -> int:
    """Run the configured number of front-end workers in the foreground until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    supervisor = Supervisor(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: setattr(supervisor, "stopping", True))
    server = supervisor.config.server
    print(
        f"sealgate supervisor: {server.workers} workers sharing gRPC {server.grpc_address}"
        f"{', REST ' + server.rest_address if server.rest else ''}; metrics per worker from "
        f"{server.metrics_address or 'off'}",
        file=sys.stderr,
        flush=True,
    )
    return supervisor.run()


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM this worker when its supervisor dies (Linux), so no worker is orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def worker_main(index: int, ready_fd: int) -> int:
    """One front-end worker: read the configuration from stdin, serve, say "ready" once bound, drain on SIGTERM."""
    import asyncio

    from gateway.fsutil import enter_private_cwd
    from gateway.server import logs, loops
    from gateway.server.app import Gateway

    _die_with_parent()
    config = pickle.loads(sys.stdin.buffer.read())  # noqa: S301 - from the supervisor that spawned us
    if not isinstance(config, Config):
        raise SystemExit("worker: no configuration on standard input")
    logs.configure(config.log, worker=index)  # [log] format and level, with the worker index on each line
    enter_private_cwd()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        gateway = Gateway(config)
        await gateway.start()
        os.write(ready_fd, READY_BYTE)
        os.close(ready_fd)
        # one write(2) of the whole line: print() writes the text and its newline apart, and two workers
        # sharing the supervisor's stderr once ran their lines together ("...(pid 18612)sealgate worker 0 ...")
        os.write(sys.stderr.fileno(), f"sealgate worker {index} serving (pid {os.getpid()})\n".encode())
        await stop.wait()
        await gateway.stop()

    loops.run(main(), config.server.event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(int(sys.argv[1]), int(sys.argv[2])))
