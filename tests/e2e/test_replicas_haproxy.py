"""Three `sealgate serve` replicas behind a real HAProxy (issue 15): one shared repository folder, separate
processes, ports and audit logs; HAProxy in TCP mode passes mutual TLS through and health-checks each replica
over mTLS (`GET /v2/health/ready` on its REST port with the dev client certificate). Clients (tritonclient and
the release client of `sealgate push`) only know the balancer's address.

Proves: a push through the balancer reaches exactly one replica and every replica serves the new version within
2 s; concurrent pushes through different replicas keep anti-rollback and the fcntl-locked ledger intact; a
replica killed with SIGKILL under load (8 concurrent clients, bounded) costs at most the calls it had in flight,
the balancer drops it, and it takes traffic again after a restart. Figures are printed (run with -s) and written
to $SEALGATE_REPLICA_FIGURES when set. Needs the `haproxy` binary (Debian package; `.ci/run` installs it).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from gateway.ops.health import check
from gateway.protos.sealgate.v1 import release_pb2 as pb
from gateway.release.client import ReleaseClient, RemoteError
from gateway.serving.ledger import LedgerFile
from tests import harness
from tests.models import make_onnx_mlp

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (apt-get install haproxy)"),
]

SEALGATE = Path(sys.executable).with_name("sealgate")
REPLICAS = 3
CLIENTS = 8  # concurrent inference clients, each on its own connection through the balancer
MAX_CALLS = 4000  # per client: the load is bounded whatever happens
IN_DIM = 8


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Replica:
    """One `sealgate serve` process: its config, ports, audit log and process."""

    index: int
    folder: Path
    grpc_port: int
    rest_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"r{self.index}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def audit(self) -> Path:
        return self.folder / "audit.log"

    def audit_lines(self) -> list[dict[str, Any]]:
        """The replica's audit records so far (its recorder flushes within a fraction of a second)."""
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line.strip()]


@dataclass
class Cluster:
    """The shared world: certs, the shared repository, the replicas and the balancer."""

    env: harness.Env
    replicas: list[Replica]
    lb_port: int
    stats_socket: Path
    haproxy: subprocess.Popen[bytes] | None = None
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def lb(self) -> str:
        return f"127.0.0.1:{self.lb_port}"

    def release_client(self, address: str, scopes: str = "release:mlp fetch:mlp") -> ReleaseClient:
        """The release client `sealgate push` uses, pointed at `address`."""
        return harness.release_client(self.env, address, scopes)

    def server_states(self, backend: str = "be") -> dict[str, str]:
        """HAProxy's view of each replica in `backend`: UP, DOWN, ... (`show stat` on its admin socket)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.stats_socket))
            s.sendall(b"show stat\n")
            raw = b""
            while chunk := s.recv(65536):
                raw += chunk
        text = raw.decode().lstrip("# ")
        return {row["svname"]: row["status"] for row in csv.DictReader(io.StringIO(text)) if row["pxname"] == backend}


def write_replica_config(env: harness.Env, replica: Replica) -> Path:
    """A replica's TOML: its own ports and audit log, the shared repository and PKI (absolute paths)."""
    certs = env.certs
    config = replica.folder / "sealgate.toml"
    config.write_text(
        f"""
[server]
grpc_address = "127.0.0.1:{replica.grpc_port}"
rest_address = "127.0.0.1:{replica.rest_port}"
metrics_address = ""
drain_seconds = 1.0

[repository]
path = "{env.models}"
poll_interval_s = 0.2

[tls]
ca = "{certs / "ca.pem"}"
cert = "{certs / "server.pem"}"
key = "{certs / "server.key"}"

[auth]
jwks = "{certs / "jwks.json"}"

[keys]
identities = ["{certs / "gateway.key"}"]
trusted_signers = ["{certs / "signing.pub"}"]

[audit]
path = "audit.log"
"""
    )
    return config


def start_replica(cluster: Cluster, replica: Replica) -> None:
    """Start `sealgate serve` for `replica` (its log beside its config); returns at once."""
    log = open(replica.folder / "serve.log", "ab")  # the process owns it until it exits
    env = {**os.environ, "SEALGATE_TRACEBACK": "1"}
    replica.proc = subprocess.Popen(
        [str(SEALGATE), "serve", "--config", str(replica.folder / "sealgate.toml")],
        cwd=replica.folder, stdout=log, stderr=log, env=env,
    )  # fmt: skip
    log.close()


def healthy(cluster: Cluster, address: str, model: str = "") -> bool:
    """What `sealgate health` answers for `address` (in-process, same code)."""
    certs = cluster.env.certs
    token = harness.token(cluster.env, "infer:mlp") if model else ""
    result = check(address, certs / "ca.pem", certs / "client.pem", certs / "client.key", timeout_s=1.0,
                   model=model, token=token)  # fmt: skip
    return result.ok


def wait_for(what: str, condition: Callable[[], bool], timeout: float, every: float = 0.05) -> float:
    """Poll `condition` until true; return the seconds it took; fail naming `what` after `timeout`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - start


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    """Stop one process this test started (and any children it left), by pid."""
    if proc is None or proc.poll() is not None:
        return
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.send_signal(sig)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


HAPROXY_CFG = """
global
    maxconn 512
    nbthread 1
    stats socket {stats} mode 600 level admin
    external-check
    insecure-fork-wanted
    log stdout format raw local0 info

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout check 1s
    retries 3
    option redispatch 1

frontend fe
    bind 127.0.0.1:{lb_port}
    default_backend be

backend be
    balance roundrobin
    option httpchk
    http-check send meth GET uri /v2/health/ready ver HTTP/1.1 hdr Host 127.0.0.1
    http-check expect status 200
    default-server inter 300ms fall 2 rise 2 check-ssl verify required ca-file {ca} crt {crt}
{servers}

# the same replicas checked by `sealgate health` as an external check (what a balancer without mTLS checks uses)
backend ext
    option external-check
    external-check path "/usr/bin:/bin"
    external-check command {script}
    timeout check 5s
    default-server inter 2s fall 1 rise 1
{ext_servers}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three replicas sharing one repository (mlp v1 in it) behind HAProxy, all up and healthy."""
    root = tmp_path_factory.mktemp("replicas")
    env = harness.make_env(root)
    harness.seal_model(env, "mlp", 1, make_onnx_mlp(in_dim=IN_DIM, hidden=(16,), out_dim=2, seed=1))
    replicas = []
    for i in range(REPLICAS):
        folder = root / f"r{i}"
        folder.mkdir()
        replica = Replica(i, folder, free_port(), free_port())
        write_replica_config(env, replica)
        replicas.append(replica)
    cluster = Cluster(env, replicas, free_port(), root / "haproxy.sock")
    combined = env.certs / "client-combined.pem"  # HAProxy's `crt`: certificate and key in one file, 0600
    combined.write_bytes((env.certs / "client.pem").read_bytes() + (env.certs / "client.key").read_bytes())
    combined.chmod(0o600)
    servers = "\n".join(f"    server {r.name} {r.address} check port {r.rest_port}" for r in replicas)
    ext_servers = "\n".join(f"    server {r.name} {r.address} check" for r in replicas)
    script = root / "sealgate-health-check"  # HAProxy calls it with: proxy addr, port, server addr, port
    script.write_text(f'#!/bin/sh\nexec {SEALGATE} health --address "$3:$4" --dir {env.certs} --timeout 1\n')
    script.chmod(0o755)
    cfg = root / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(stats=cluster.stats_socket, lb_port=cluster.lb_port, ca=env.certs / "ca.pem",
                                      crt=combined, servers=servers, script=script,
                                      ext_servers=ext_servers))  # fmt: skip
    try:
        for replica in replicas:
            start_replica(cluster, replica)
        start = time.monotonic()
        for replica in replicas:
            wait_for(f"{replica.name} to serve mlp", lambda r=replica: healthy(cluster, r.address, "mlp"), 120, 0.2)
        cluster.figures["replica_start_s"] = round(time.monotonic() - start, 1)
        check_cfg = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
        assert check_cfg.returncode == 0, check_cfg.stdout + check_cfg.stderr
        hlog = open(root / "haproxy.log", "ab")
        cluster.haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=hlog, stderr=hlog)
        hlog.close()
        wait_for("haproxy's stats socket", cluster.stats_socket.exists, 20)
        wait_for("every replica UP in HAProxy",
                 lambda: set(cluster.server_states().values()) == {"UP"}, 30, 0.1)  # fmt: skip
        wait_for("every replica UP by the external `sealgate health` check",
                 lambda: set(cluster.server_states("ext").values()) == {"UP"}, 30, 0.1)  # fmt: skip
        yield cluster
    finally:
        stop_process(cluster.haproxy)
        for replica in replicas:
            stop_process(replica.proc)
        if cluster.figures:
            print("\nreplica figures:", json.dumps(cluster.figures, indent=2))
            target = os.environ.get("SEALGATE_REPLICA_FIGURES")
            if target:
                Path(target).write_text(json.dumps(cluster.figures, indent=2) + "\n")


def seal(cluster: Cluster, version: int, seed: int, out: Path) -> Path:
    """mlp `version` (weights from `seed`), sealed for the gateway into `out`, outside the repository."""
    return harness.seal_model(cluster.env, "mlp", version,
                              make_onnx_mlp(in_dim=IN_DIM, hidden=(16,), out_dim=2, seed=seed), out=out)  # fmt: skip


def serving_version(cluster: Cluster, address: str) -> int | None:
    """The version of mlp `address` serves by default now (from its List answer)."""
    with cluster.release_client(address) as client:
        (model,) = client.list("mlp").models
    serving = [v.version for v in model.versions if v.state == pb.VersionStatus.SERVING]
    return max(serving) if serving else None


def test_balancer_is_in_front_of_three_healthy_replicas(cluster: Cluster) -> None:
    """Every replica answers `sealgate health` (the console script) directly and through the balancer."""
    for address in [r.address for r in cluster.replicas] + [cluster.lb]:
        done = subprocess.run([str(SEALGATE), "health", "--address", address, "--dir", str(cluster.env.certs)],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        assert done.returncode == 0 and done.stdout.startswith("SERVING"), done.stderr
    assert cluster.server_states() == {r.name: "UP" for r in cluster.replicas} | {"BACKEND": "UP"}


def test_a_push_through_the_balancer_reaches_one_replica_and_all_serve_it_within_2s(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A push through the balancer (the release client of `sealgate push`): one replica's audit log has it, and
    every replica serves v2 within 2 s of the push's answer."""
    sealed = seal(cluster, 2, seed=2, out=tmp_path / "mlp-2.sealed")
    with cluster.release_client(cluster.lb) as client:
        pushed = client.push(sealed, "mlp", 2)
    answered = time.monotonic()
    assert pb.VersionStatus.State.Name(pushed.state) == "SERVING"
    lag: dict[str, float] = {}
    for replica in cluster.replicas:
        wait_for(f"{replica.name} to serve v2", lambda r=replica: serving_version(cluster, r.address) == 2, 10, 0.02)
        lag[replica.name] = round(time.monotonic() - answered, 2)
    cluster.figures["push_to_all_serving_s"] = max(lag.values())
    assert max(lag.values()) <= 2.0, lag
    time.sleep(0.5)  # audit records are flushed in the background
    receivers = [r.name for r in cluster.replicas if any(
        line["method"] == "grpc:Push" and line["version"] == "2" for line in r.audit_lines())]  # fmt: skip
    assert len(receivers) == 1, receivers


def concurrent_pushes(cluster: Cluster, jobs: list[tuple[Replica, Path, int]]) -> dict[Path, Any]:
    """Push each (replica, sealed file, version) at the same instant from its own thread; answers or RemoteErrors."""
    results: dict[Path, Any] = {}
    barrier = threading.Barrier(len(jobs))

    def push(replica: Replica, sealed: Path, version: int) -> None:
        with cluster.release_client(replica.address) as client:
            barrier.wait()
            try:
                results[sealed] = client.push(sealed, "mlp", version)
            except RemoteError as exc:
                results[sealed] = exc

    threads = [threading.Thread(target=push, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(results) == len(jobs)
    refused = [r for r in results.values() if isinstance(r, RemoteError)]
    assert all(r.code.name == "FAILED_PRECONDITION" for r in refused), refused
    return results


def test_concurrent_pushes_through_different_replicas_keep_the_ledger(cluster: Cluster, tmp_path: Path) -> None:
    """Round 1: v3 to r0, another v3 to r1, v4 to r2, at once: v4 is accepted, at most one v3. Round 2: three
    different v5s, one per replica, at once: exactly one is accepted and it is the file stored. Every refusal is
    FAILED_PRECONDITION, the ledger's floor is 5 and reads back, every replica serves the winner, and an older
    version pushed through the balancer is refused."""
    ledger = LedgerFile(cluster.env.models)
    before = ledger.load().record("mlp")
    r0, r1, r2 = cluster.replicas
    first = concurrent_pushes(cluster, [(r0, seal(cluster, 3, 31, tmp_path / "a3.sealed"), 3),
                                        (r1, seal(cluster, 3, 32, tmp_path / "b3.sealed"), 3),
                                        (r2, seal(cluster, 4, 4, tmp_path / "c4.sealed"), 4)])  # fmt: skip
    accepted = [s for s, r in first.items() if not isinstance(r, RemoteError)]
    assert tmp_path / "c4.sealed" in accepted, first
    winners3 = [s for s in accepted if s.name.endswith("3.sealed")]
    assert len(winners3) <= 1
    stored3 = cluster.env.models / "mlp" / "3.sealed"
    assert stored3.exists() == bool(winners3)
    if winners3:  # a v3 that made it in is byte for byte the one accepted
        assert stored3.read_bytes() == winners3[0].read_bytes()
    assert ledger.load().record("mlp").highest_seen == 4
    second = concurrent_pushes(cluster, [(r, seal(cluster, 5, 50 + i, tmp_path / f"{r.name}-5.sealed"), 5)
                                         for i, r in enumerate(cluster.replicas)])  # fmt: skip
    (winner,) = [s for s, r in second.items() if not isinstance(r, RemoteError)]
    assert (cluster.env.models / "mlp" / "5.sealed").read_bytes() == winner.read_bytes()
    after = ledger.load().record("mlp")  # parses strictly: the file was never torn
    assert after.highest_seen == 5 and after.rollbacks == before.rollbacks
    for replica in cluster.replicas:
        wait_for(f"{replica.name} to serve v5", lambda r=replica: serving_version(cluster, r.address) == 5, 10, 0.05)
    late = seal(cluster, 3, seed=33, out=tmp_path / "late3.sealed")
    with cluster.release_client(cluster.lb) as client, pytest.raises(RemoteError) as refused_late:
        client.push(late, "mlp", 3)
    assert refused_late.value.code.name == "FAILED_PRECONDITION"
    assert ledger.load().record("mlp").highest_seen == 5
    cluster.figures["concurrent_pushes"] = {
        s.name: r.code.name if isinstance(r, RemoteError) else "accepted" for s, r in {**first, **second}.items()
    }


@dataclass
class Load:
    """Bounded concurrent inference through the balancer: each client its own connection, one call at a time."""

    cluster: Cluster
    stop: threading.Event = field(default_factory=threading.Event)
    calls: list[tuple[float, bool, str, int]] = field(default_factory=list)  # (time, ok, why, client)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self) -> Any:
        import tritonclient.grpc as grpcclient

        certs = self.cluster.env.certs
        return grpcclient.InferenceServerClient(
            self.cluster.lb, ssl=True, root_certificates=str(certs / "ca.pem"),
            private_key=str(certs / "client.key"), certificate_chain=str(certs / "client.pem"),
            channel_args=[("grpc.use_local_subchannel_pool", 1)],  # a connection of its own, not a shared one
        )  # fmt: skip

    def run(self, token: str, index: int) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        client = self.client()
        inp = grpcclient.InferInput("input", [1, IN_DIM], "FP32")
        inp.set_data_from_numpy(np.ones((1, IN_DIM), np.float32))
        headers = {"authorization": f"Bearer {token}"}
        for _ in range(MAX_CALLS):
            if self.stop.is_set():
                break
            try:
                client.infer("mlp", [inp], headers=headers, client_timeout=10)
                ok, why = True, ""
            except InferenceServerException as exc:
                ok, why = False, str(exc)[:200]
                # a fresh channel, as a client's retry would make: a failed reconnect otherwise leaves this one
                # in gRPC's reconnect backoff (1 s and up), where every call fails at once without being sent,
                # and a single failed reconnect was counted as thousands of failed calls
                client.close()
                client = self.client()
            with self.lock:
                self.calls.append((time.monotonic(), ok, why, index))
        client.close()


def connections_on(cluster: Cluster, replica: Replica) -> int:
    """HAProxy's established connections to the replica's gRPC port now: one per client routed there (probes
    that reach the replica directly are not counted)."""
    assert replica.proc is not None and cluster.haproxy is not None
    balancer = {c.laddr.port for c in psutil.Process(cluster.haproxy.pid).net_connections(kind="tcp") if c.laddr}
    procs = [psutil.Process(replica.proc.pid), *psutil.Process(replica.proc.pid).children(recursive=True)]
    return sum(
        1
        for p in procs
        for c in p.net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED
        and c.laddr
        and c.laddr.port == replica.grpc_port
        and c.raddr
        and c.raddr.port in balancer
    )


# gRPC's words for a call written onto a connection that had just died (sent to the killed replica, never read)
WRITE_ON_DEAD_CONNECTION = re.compile(r"Broken pipe|in-progress write|Connection reset")
RECONNECT = re.compile(r"failed to connect to all addresses")


def infer_lines(replica: Replica) -> int:
    """How many ModelInfer calls the replica's audit log records."""
    return sum(1 for line in replica.audit_lines() if line["method"] == "grpc:ModelInfer")


def test_kill_one_replica_under_load(cluster: Cluster) -> None:
    """SIGKILL one replica while 8 clients infer through the balancer: only the clients whose connection the
    balancer had routed to it see failures, only calls sent on that dead connection fail (the call in flight,
    and at most one more that gRPC wrote onto the connection in the instant before it saw it close: "Broken
    pipe" / "in-progress write"), all within a second of the kill; HAProxy marks it DOWN (its own mTLS check
    and the `sealgate health` external check), and after a restart it is UP again and serves new connections."""
    load = Load(cluster)
    token = harness.token(cluster.env, "infer:mlp")
    workers = [threading.Thread(target=load.run, args=(token, i), daemon=True) for i in range(CLIENTS)]
    for w in workers:
        w.start()
    try:
        wait_for("the load to start", lambda: len(load.calls) >= 200, 60)
        time.sleep(1.0)
        routed = {r.name: connections_on(cluster, r) for r in cluster.replicas}
        victim = max(cluster.replicas, key=lambda r: routed[r.name])
        in_flight_bound = routed[victim.name]
        assert in_flight_bound >= 1, routed
        assert victim.proc is not None
        victim_children = psutil.Process(victim.proc.pid).children(recursive=True)
        killed_at = time.monotonic()
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(10)
        for child in victim_children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        down_s = wait_for(f"HAProxy to mark {victim.name} DOWN",
                          lambda: cluster.server_states()[victim.name].startswith("DOWN"), 10, 0.02)  # fmt: skip
        ext_down_s = wait_for(
            f"the `sealgate health` check to mark {victim.name} DOWN",
            lambda: cluster.server_states("ext")[victim.name].startswith("DOWN"),
            15,
            0.05,
        )
        time.sleep(1.0)  # keep the load on the two survivors for a while
        after_kill = [c for c in load.calls if c[0] >= killed_at]
        failures = [c for c in after_kill if not c[1]]
        restarted_at = time.monotonic()
        start_replica(cluster, victim)
        up_s = wait_for(f"{victim.name} UP again in HAProxy",
                        lambda: cluster.server_states()[victim.name] == "UP", 120, 0.05)  # fmt: skip
    finally:
        load.stop.set()
        for w in workers:
            w.join(30)
    import tritonclient.grpc as grpcclient

    served_before = infer_lines(victim)
    fresh = Load(cluster)
    for _ in range(2 * REPLICAS):  # new connections, round robin: the rejoined replica gets its share
        client = fresh.client()
        inp = grpcclient.InferInput("input", [1, IN_DIM], "FP32")
        inp.set_data_from_numpy(np.ones((1, IN_DIM), np.float32))
        client.infer("mlp", [inp], headers={"authorization": f"Bearer {token}"}, client_timeout=10)
        client.close()
    wait_for(f"{victim.name} to serve new connections", lambda: infer_lines(victim) > served_before, 10)
    total = len(load.calls)
    all_failures = [c for c in load.calls if not c[1]]
    cluster.figures["kill_under_load"] = {
        "clients": CLIENTS,
        "requests": total,
        "requests_after_kill": len(after_kill),
        "failed": len(all_failures),
        "failed_after_kill": len(failures),
        "in_flight_bound": in_flight_bound,
        "connections_per_replica": routed,
        "marked_down_s": round(down_s, 2),
        "marked_down_by_sealgate_health_s": round(down_s + ext_down_s, 2),
        "last_failure_after_kill_s": round(max((c[0] for c in failures), default=killed_at) - killed_at, 2),
        "restart_to_up_s": round(up_s, 2),
        "failures": [(round(c[0] - killed_at, 3), c[3], c[2][:120]) for c in all_failures],
    }
    print("\nkill under load:", json.dumps(cluster.figures["kill_under_load"]))
    figures = cluster.figures["kill_under_load"]
    assert len(all_failures) == len(failures), "calls failed before the kill"
    # a routed client's reconnect that reached the victim before HAProxy marked it DOWN: at most one or two each
    reconnects = [c for c in failures if RECONNECT.search(c[2])]
    assert len(reconnects) <= 2 * in_flight_bound, figures
    in_flight = [c for c in failures if not WRITE_ON_DEAD_CONNECTION.search(c[2]) and not RECONNECT.search(c[2])]
    assert len(in_flight) <= in_flight_bound, figures  # the calls it had in flight
    assert len({c[3] for c in failures}) <= in_flight_bound, figures  # only clients that were routed to it
    # beyond those: calls a client wrote onto its connection to the victim in the milliseconds before gRPC saw it
    # close (sendmsg: Broken pipe / in-progress write), a few per affected client, all within the second below
    on_dead = [c for c in failures if WRITE_ON_DEAD_CONNECTION.search(c[2])]
    assert len(on_dead) <= 2 * in_flight_bound, figures
    assert all(c[0] - killed_at < 1.0 for c in failures), figures
    assert len(after_kill) > len(failures), "the survivors did not keep serving"
    assert cluster.server_states()[victim.name] == "UP" and restarted_at > killed_at
