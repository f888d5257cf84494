"""Flower's Deployment Engine on loopback: a real `flower-superlink` with TLS (the dev PKI of `sealgate init`)
and SuperNode authentication, three `flower-supernode` with registered EC P-384 keys, `flwr run` for two rounds.
An unregistered SuperNode is refused; one SuperNode killed mid-run does not stop the run, and the summary says so.
With secure aggregation, the SuperLink is reached by an address only `--san` puts in its certificate, two nodes
on their own loopback addresses train on their own data files, and a node killed mid-round is reconstructed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fl.data import client_data
from fl.local_data import write_csv, write_npz
from fl.settings import FlSettings
from gateway.auth.pki import write_dev_pki
from gateway.server.ports import free_loopback_port

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _write_node_key(path: Path) -> None:
    """EC P-384 key pair in OpenSSH format: private (0600 from creation) and PATH.pub."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    path.with_suffix(".pub").write_bytes(public)


def _toml_value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else json.dumps(value)


def write_app(app_dir: Path, settings: FlSettings) -> None:
    """A Flower App folder: sealgate's components and a full [tool.flwr.app.config] (the code is installed)."""
    app_dir.mkdir()
    values = settings.to_run_config()
    config = "\n".join(f"{k} = {_toml_value(v)}" for k, v in values.items())
    app_dir.joinpath("pyproject.toml").write_text(
        '[project]\nname = "sealgate-fl"\nversion = "0.1.0"\ndescription = "sealgate federated fine-tuning"\n'
        'license = "Apache-2.0"\ndependencies = []\n\n[tool.flwr.app]\npublisher = "sealgate"\n\n'
        '[tool.flwr.app.components]\nserverapp = "fl.server_app:app"\nclientapp = "fl.client_app:app"\n\n'
        f"[tool.flwr.app.config]\n{config}\n"
    )


class Cluster:
    """Processes this test started, each in its own session so it can be stopped with all its children."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("wb")
        proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, sig)

    def flwr(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "flwr"), *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def stop_all(self) -> None:
        for name in self.procs:
            self.kill(name, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name, proc in self.procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(name)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = dict(
        os.environ,
        FLWR_HOME=str(home),
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_TELEMETRY_ENABLED="0",
        TF_CPP_MIN_LOG_LEVEL="2",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    c = Cluster(tmp_path, env)
    try:
        yield c
    finally:
        c.stop_all()


def _wait_port(port: int, timeout: float = 30, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), 0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listens on {host}:{port}")


def _online(c: Cluster, want: int, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    nodes: list[dict] = []
    while time.monotonic() < deadline:
        res = c.flwr("supernode", "ls", "sealgate", "--format", "json")
        if res.returncode == 0:
            nodes = json.loads(res.stdout)["nodes"]
            if sum(n["status"] == "online" for n in nodes) >= want:
                return nodes
        time.sleep(1)
    raise AssertionError(f"fewer than {want} SuperNodes online: {nodes}")


def test_deployment_engine_tls_supernode_auth_and_a_node_lost_mid_run(cluster: Cluster, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    write_dev_pki(pki)
    for i in range(4):
        _write_node_key(tmp_path / f"node{i}")
    assert (tmp_path / "node0").stat().st_mode & 0o777 == 0o600
    port = free_loopback_port()
    (tmp_path / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "sealgate"\n\n[superlink.sealgate]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{pki / "ca.pem"}"\n'
    )
    out_dir = tmp_path / "out"
    write_app(
        tmp_path / "app",
        FlSettings(
            num_server_rounds=2,
            epsilon=3.0,
            min_available_nodes=2,
            min_train_nodes=2,
            round_timeout=120.0,
            out_dir=str(out_dir),
        ),
    )

    cluster.start(
        "superlink",
        [
            str(BIN / "flower-superlink"),
            "--ssl-ca-certfile",
            str(pki / "ca.pem"),
            "--ssl-certfile",
            str(pki / "server.pem"),
            "--ssl-keyfile",
            str(pki / "server.key"),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--port",
            str(port),
        ],
    )
    _wait_port(port)
    for i in range(3):  # node3 stays unregistered
        res = cluster.flwr("supernode", "register", str(tmp_path / f"node{i}.pub"), "sealgate")
        assert res.returncode == 0, res.stdout + res.stderr
    for i in range(4):
        cluster.start(
            f"node{i}",
            [
                str(BIN / "flower-supernode"),
                "--root-certificates",
                str(pki / "ca.pem"),
                "--superlink",
                f"127.0.0.1:{port}",
                "--port",
                str(free_loopback_port()),
                "--auth-supernode-private-key",
                str(tmp_path / f"node{i}"),
                "--node-config",
                f"partition-id={min(i, 2)} num-partitions=3",
            ],
        )

    # the unregistered SuperNode is refused and exits
    assert cluster.procs["node3"].wait(60) != 0
    assert "Failed to activate SuperNode" in cluster.log("node3") and "Exit Code: 305" in cluster.log("node3")
    nodes = _online(cluster, 3)
    assert sum(n["status"] == "online" for n in nodes) == 3

    run = subprocess.Popen(
        [str(BIN / "flwr"), "run", str(tmp_path / "app"), "sealgate", "--stream"],
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    streamed: list[str] = []
    killed = False
    assert run.stdout is not None
    for line in run.stdout:
        streamed.append(line)
        if not killed and "round 1: accuracy" in line:
            time.sleep(3)  # round 2's messages are out: the node dies holding one
            cluster.kill("node2")
            killed = True
    assert run.wait(60) == 0, "".join(streamed[-40:])
    assert killed, "".join(streamed[-40:])

    summary = json.loads((out_dir / "summary.json").read_text())
    rows = summary["rows"]
    assert [r["round"] for r in rows] == [1, 2] and not summary["stopped_early"]
    assert rows[0]["clients"] == 3 and rows[0]["failed"] == 0
    assert rows[1]["clients"] == 2 and rows[1]["sampled"] - rows[1]["clients"] == rows[1]["failed"] == 1
    assert len(summary["nodes_lost"]) == 1
    assert rows[1]["accuracy"] > 0.2 and 0 < rows[0]["epsilon"] < rows[1]["epsilon"] <= 3.0
    assert summary["privacy"]["clients"] == 3 and summary["privacy"]["rounds"] == 2
    assert (out_dir / "model.onnx").stat().st_size > 0 and (out_dir / "weights.safetensors").stat().st_size > 0
    assert any("lost: the run goes on" in line for line in streamed)


def test_secure_aggregation_two_nodes_with_their_own_data_on_other_addresses_and_a_node_killed(
    cluster: Cluster, tmp_path: Path
) -> None:
    link_host = "127.0.0.4"  # not in the default certificate: only `--san` makes TLS to it verify
    pki = tmp_path / "pki"
    write_dev_pki(pki, sans=[link_host])
    for i in range(3):
        _write_node_key(tmp_path / f"node{i}")
    port = free_loopback_port()
    (tmp_path / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "sealgate"\n\n[superlink.sealgate]\naddress = "{link_host}:{port}"\n'
        f'root-certificates = "{pki / "ca.pem"}"\n'
    )
    # each data holder's own file, on its own disk: node0 an NPZ, node1 a CSV (rows of two digits shares)
    files = [
        write_npz(tmp_path / "node0-data.npz", *client_data("digits", 0, 0, 3, None)),
        write_csv(tmp_path / "node1-data.csv", *client_data("digits", 0, 1, 3, None)),
    ]
    out_dir = tmp_path / "out"
    settings = FlSettings(
        num_server_rounds=2,
        epsilon=3.0,
        min_available_nodes=3,
        min_train_nodes=3,
        round_timeout=90.0,
        out_dir=str(out_dir),
        secure_aggregation=True,
    )
    write_app(tmp_path / "app", settings)
    cluster.start(
        "superlink",
        [
            str(BIN / "flower-superlink"),
            "--ssl-ca-certfile",
            str(pki / "ca.pem"),
            "--ssl-certfile",
            str(pki / "server.pem"),
            "--ssl-keyfile",
            str(pki / "server.key"),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--host",
            link_host,
            "--port",
            str(port),
        ],
    )
    _wait_port(port, host=link_host)
    for i in range(3):
        res = cluster.flwr("supernode", "register", str(tmp_path / f"node{i}.pub"), "sealgate")
        assert res.returncode == 0, res.stdout + res.stderr
    node_setup = [
        ("127.0.0.2", f'data-file="{files[0]}"'),
        ("127.0.0.3", f'data-file="{files[1]}"'),
        ("127.0.0.1", "partition-id=2 num-partitions=3"),
    ]
    for i, (host, node_config) in enumerate(node_setup):
        cluster.start(
            f"node{i}",
            [
                str(BIN / "flower-supernode"),
                "--root-certificates",
                str(pki / "ca.pem"),
                "--superlink",
                f"{link_host}:{port}",
                "--host",
                host,
                "--port",
                str(free_loopback_port()),
                "--auth-supernode-private-key",
                str(tmp_path / f"node{i}"),
                "--node-config",
                node_config,
            ],
        )
    _online(cluster, 3)

    run = subprocess.Popen(
        [str(BIN / "flwr"), "run", str(tmp_path / "app"), "sealgate", "--stream"],
        env=cluster.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    streamed: list[str] = []
    killed = False
    assert run.stdout is not None
    for line in run.stdout:
        streamed.append(line)
        if not killed and "round 1: accuracy" in line:
            time.sleep(2)  # round 2's SecAgg+ stages are under way: the node dies inside the protocol
            cluster.kill("node2")
            killed = True
    assert run.wait(60) == 0, "".join(streamed[-40:])
    assert killed, "".join(streamed[-40:])

    summary = json.loads((out_dir / "summary.json").read_text())
    rows = summary["rows"]
    assert [r["round"] for r in rows] == [1, 2] and not summary["stopped_early"], summary
    assert (rows[0]["clients"], rows[0]["failed"], rows[0]["sampled"]) == (3, 0, 3)
    assert (rows[1]["clients"], rows[1]["failed"], rows[1]["sampled"]) == (2, 1, 3), rows[1]
    assert len(summary["nodes_lost"]) == 1 and not summary["dropped_updates"]
    assert rows[1]["accuracy"] > 0.2 and 0 < rows[0]["epsilon"] < rows[1]["epsilon"] <= 3.0
    privacy = summary["privacy"]
    assert privacy["server_sees"] == "masked sum only" and privacy["secure_aggregation"]["rounds_unmasked"] == 2
    sizes = sorted(c["num_examples"] for c in privacy["per_client"].values())
    assert sizes == sorted(len(client_data("digits", 0, i, 3, None)[1]) for i in range(3))
    assert sorted(c["partition_id"] for c in privacy["per_client"].values()) == [-1, -1, 2]  # two own files
    assert (out_dir / "model.onnx").stat().st_size > 0
    assert any("secure aggregation" in line for line in streamed)
