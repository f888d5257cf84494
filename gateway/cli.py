"""`sealgate`: one command line for keys, tokens, signing, sealing, serving, release and federated runs.

Heavy modules (TensorFlow, torch, Flower) are imported inside the commands that need them, so that
`sealgate inspect` answers in a fraction of a second. Every deliberate error prints one line and exits
non-zero; no traceback reaches the user.
"""

from __future__ import annotations

import json
import os
import sys

# Native libraries log INFO lines from C++ (gRPC's fork handlers, TensorFlow's oneDNN notice) unless told
# otherwise before they load; the CLI speaks for itself. Explicit user settings win.
for _var, _value in (("GRPC_VERBOSITY", "ERROR"), ("GLOG_minloglevel", "2"), ("TF_CPP_MIN_LOG_LEVEL", "2")):
    os.environ.setdefault(_var, _value)
from pathlib import Path  # noqa: E402 (after the environment above)
from typing import TYPE_CHECKING, Annotated  # noqa: E402 (after the environment above)

import typer  # noqa: E402 (after the environment above)
from rich.console import Console  # noqa: E402 (after the environment above)

from gateway.errors import SealgateError  # noqa: E402 (after the environment above)

if TYPE_CHECKING:
    from rich.progress import Progress

    from gateway.release.client import Progress as ProgressFn
    from gateway.release.client import ReleaseClient

app = typer.Typer(
    name="sealgate",
    help="Deploy machine-learning models privately: seal, serve, improve under DP, release.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
out = Console()

CertsDir = Annotated[Path, typer.Option("--dir", help="Folder of the dev PKI and keys.")]


def main() -> None:
    """Console-script entry: run the app, turning sealgate's typed errors into one line and exit 1."""
    try:
        app()
    except SealgateError as exc:
        # plain text on one line: the message may hold paths with brackets and must never wrap
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


# --- keys and tokens ------------------------------------------------------------------------------
@app.command()
def init(
    dir: CertsDir = Path("certs"),
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
    client: Annotated[str | None, typer.Option(help="Only add a client certificate with this name.")] = None,
    hybrid: Annotated[bool, typer.Option(help="Also make a post-quantum hybrid recipient key.")] = False,
) -> None:
    """Write a development PKI and every key the other commands need (private keys 0600)."""
    from gateway.artifact.keys import KEM_HYBRID, generate_identity_files
    from gateway.auth import pki

    if client is not None:
        written = pki.add_client(dir, client)
    else:
        _refuse_existing(dir, force)
        written = pki.write_dev_pki(dir, force=force)
        written += pki.write_signing_keys(dir, force=force)
        written += pki.write_recipient_keys(dir, force=force)
        written += pki.write_jwt_issuer(dir, force=force)
        if hybrid:
            generate_identity_files(dir / "gateway-pq.key", dir / "gateway-pq.pub", KEM_HYBRID, force=force)
            written += [dir / "gateway-pq.key", dir / "gateway-pq.pub"]
    for path in written:
        mode = oct(path.stat().st_mode & 0o777)
        out.print(f"wrote {path} ({mode})", highlight=False)


def _refuse_existing(dir: Path, force: bool) -> None:
    if force or not dir.exists():
        return
    existing = [p.name for p in dir.iterdir() if p.suffix in (".key", ".pem", ".pub") or p.name == "jwks.json"]
    if existing:
        raise SealgateError(f"{dir} already holds {', '.join(sorted(existing)[:4])}...; use --force to overwrite")


@app.command()
def revoke(
    cert: Annotated[Path, typer.Argument(help="The client certificate (PEM) to revoke.")],
    dir: CertsDir = Path("certs"),
) -> None:
    """Revoke a client certificate of the dev CA: add it to DIR/crl.pem, which `[tls] crl` enforces."""
    from gateway.auth import pki

    path = pki.revoke(dir, cert)
    out.print(f"revoked {cert}: wrote {path}", highlight=False)


@app.command()
def token(
    sub: Annotated[str, typer.Option(help="Subject (who the token is for).")],
    scope: Annotated[str, typer.Option(help='Space-separated scopes, e.g. "infer:ctr fetch:ctr".')],
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds.")] = 3600,
    bind_cert: Annotated[Path | None, typer.Option(help="Bind to this client certificate (RFC 8705).")] = None,
    dir: CertsDir = Path("certs"),
) -> None:
    """Mint a development JWT signed by the dev issuer key."""
    from gateway.auth.tokens import mint_token

    cert = bind_cert.read_bytes() if bind_cert else None
    jwt = mint_token(dir / "jwt-issuer.key", dir / "jwks.json", sub, scope.split(), ttl=ttl, bind_cert=cert)
    out.print(jwt, highlight=False, soft_wrap=True)


# --- signing ---------------------------------------------------------------------------------------
@app.command()
def sign(
    path: Path,
    key: Annotated[Path, typer.Option(help="ECDSA P-256 private key (PEM).")],
    signature: Annotated[
        Path | None, typer.Option(help="Where to write the signature (default PATH/model.sig).")
    ] = None,
) -> None:
    """Sign a model folder with OpenSSF Model Signing (key method)."""
    from gateway.artifact.signing import sign_directory

    written = sign_directory(path, key, signature)
    out.print(f"signed {path} -> {written}", highlight=False)


@app.command()
def verify(
    path: Path,
    pub: Annotated[Path, typer.Option(help="Signer's ECDSA P-256 public key (PEM).")],
    signature: Annotated[Path | None, typer.Option(help="Signature file (default PATH/model.sig).")] = None,
) -> None:
    """Verify an OpenSSF Model Signing signature over a model folder."""
    from gateway.artifact.signing import verify_directory

    verify_directory(path, pub, signature)
    out.print(f"verified {path}", highlight=False)


# --- sealing ---------------------------------------------------------------------------------------
@app.command()
def seal(
    src: Path,
    name: Annotated[str, typer.Option(help="Model name.")],
    version: Annotated[int, typer.Option(help="Model version (a positive integer).")],
    key: Annotated[Path, typer.Option(help="Signer's ECDSA P-256 private key.")],
    recipient: Annotated[list[Path], typer.Option(help="Recipient public key (repeatable).")],
    out_file: Annotated[Path, typer.Option("--out", help="Sealed file to write.")],
    provenance: Annotated[Path | None, typer.Option(help="JSON provenance to record.")] = None,
    chunk_size: Annotated[int, typer.Option(help="Plaintext bytes per authenticated chunk.")] = 1 << 20,
) -> None:
    """Sign, pack and encrypt a model (file or folder) to named recipients."""
    from gateway.artifact.keys import load_recipient, load_signer
    from gateway.artifact.sealed import seal_to_file

    if version < 1:
        raise SealgateError("--version must be a positive integer")
    prov = _read_json(provenance) if provenance else None
    header = seal_to_file(
        src,
        out_file,
        name=name,
        version=version,
        signer=load_signer(key),
        recipients=[load_recipient(r) for r in recipient],
        provenance=prov,
        chunk_size=chunk_size,
    )
    out.print(
        f"sealed {src} as {header.name} v{header.version} for {len(header.recipients)} recipient(s) -> {out_file}",
        highlight=False,
    )


@app.command()
def unseal(
    sealed: Path,
    identity: Annotated[list[Path], typer.Option(help="Recipient private key (repeatable).")],
    trust: Annotated[list[Path], typer.Option(help="Trusted signer public key (repeatable).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write the model into.")],
) -> None:
    """Open a sealed artifact offline with a recipient key: verify, then write the model folder."""
    from gateway.artifact.keys import load_identity, load_trusted
    from gateway.artifact.sealed import TrustStore, open_artifact, write_model_dir

    opened = open_artifact(
        sealed, [load_identity(i) for i in identity], TrustStore.of([load_trusted(t) for t in trust])
    )
    written = write_model_dir(opened, out_dir)
    out.print(
        f"verified {opened.header.name} v{opened.header.version} (signer {opened.signer_key_id}); "
        f"wrote {len(written)} files to {out_dir}",
        highlight=False,
    )


@app.command("inspect")
def inspect_cmd(sealed: Path) -> None:
    """Print a sealed artifact's header; needs no key."""
    from gateway.artifact.sealed import inspect

    out.print_json(json.dumps(inspect(sealed).describe()))


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SealgateError(f"cannot read JSON from {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise SealgateError(f"{path} must hold a JSON object")
    return doc


# --- serving and release ---------------------------------------------------------------------------
Address = Annotated[str, typer.Option(help="Gateway gRPC address.")]
Token = Annotated[str | None, typer.Option(help="Bearer token (default: $SEALGATE_TOKEN).")]
Cert = Annotated[Path | None, typer.Option(help="Client certificate (default: DIR/client.pem).")]


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option(help="TOML config (default: ./models with ./certs).")] = None,
) -> None:
    """Serve sealed models over gRPC (8500) and REST (8501) behind mTLS and JWT, until SIGTERM."""
    from gateway.config import load_config
    from gateway.server.app import serve as run

    raise typer.Exit(run(load_config(config)))


def _client(address: str, dir: Path, token: str | None, cert: Path | None) -> ReleaseClient:
    from gateway.release.client import GatewayTarget, ReleaseClient, token_from_env

    target = GatewayTarget(
        address=address,
        ca=dir / "ca.pem",
        cert=cert or dir / "client.pem",
        key=(cert.with_suffix(".key") if cert else dir / "client.key"),
        token=token_from_env(token),
    )
    return ReleaseClient(target)


def _progress(label: str) -> tuple[Progress, ProgressFn]:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task(label, total=None)
    return bar, lambda done, total: bar.update(task, completed=done, total=total)


@app.command()
def push(
    sealed: Path,
    address: Address = "127.0.0.1:8500",
    dir: CertsDir = Path("certs"),
    token: Token = None,
    cert: Cert = None,
) -> None:
    """Push a sealed artifact to the gateway (scope release:<model>); it serves once verified."""
    from gateway.artifact.sealed import inspect

    header = inspect(sealed)
    client = _client(address, dir, token, cert)
    bar, update = _progress(f"push {header.name} v{header.version}")
    with client, bar:
        resp = client.push(sealed, header.name, header.version, progress=update)
    from gateway.protos.sealgate.v1 import release_pb2 as pb

    out.print(
        f"pushed {resp.name} v{resp.version} ({resp.size} bytes): {pb.VersionStatus.State.Name(resp.state)}",
        highlight=False,
    )


@app.command()
def fetch(
    name: str,
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the sealed file.")],
    version: Annotated[int, typer.Option(help="Version (0: the one serving now).")] = 0,
    address: Address = "127.0.0.1:8500",
    dir: CertsDir = Path("certs"),
    token: Token = None,
    cert: Cert = None,
) -> None:
    """Fetch a sealed artifact (scope fetch:<model>); open it offline with `sealgate unseal`."""
    client = _client(address, dir, token, cert)
    bar, update = _progress(f"fetch {name}")
    with client, bar:
        meta = client.fetch(name, out_file, version, progress=update)
    out.print(
        f"fetched {meta.name} v{meta.version} ({meta.size} bytes, sha256 {meta.sha256[:16]}…) -> {out_file}",
        highlight=False,
    )


@app.command()
def models(
    name: Annotated[str, typer.Argument(help="Only this model.")] = "",
    address: Address = "127.0.0.1:8500",
    dir: CertsDir = Path("certs"),
    token: Token = None,
    cert: Cert = None,
) -> None:
    """List models, versions and their state on the gateway."""
    from rich.table import Table

    from gateway.protos.sealgate.v1 import release_pb2 as pb

    with _client(address, dir, token, cert) as client:
        resp = client.list(name)
    table = Table("model", "version", "state", "pinned", "ε", "accuracy", "reason")
    for m in resp.models:
        for v in m.versions:
            eps = f"{v.provenance.epsilon:.2f}" if v.provenance.HasField("epsilon") else "-"
            acc = v.provenance.metrics.get("accuracy")
            table.add_row(
                m.name,
                str(v.version),
                pb.VersionStatus.State.Name(v.state),
                "yes" if v.pinned else "",
                eps,
                f"{acc:.4f}" if acc is not None else "-",
                v.reason[:60],
            )
    out.print(table)


@app.command()
def rollback(
    name: str,
    version: Annotated[int, typer.Option(help="Earlier version to serve again.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit log).")] = "manual rollback",
    address: Address = "127.0.0.1:8500",
    dir: CertsDir = Path("certs"),
    token: Token = None,
    cert: Cert = None,
) -> None:
    """Serve an earlier version again (scope release:<model> or admin); audited."""
    with _client(address, dir, token, cert) as client:
        resp = client.rollback(name, version, reason)
    out.print(f"{resp.name}: now serving v{resp.version} (was v{resp.previous_version})", highlight=False)


# --- release path ----------------------------------------------------------------------------------
def _register_release() -> None:
    from gateway.release.commands import register

    register(app)


_register_release()


@app.command("release")
def release_cmd(
    candidate: Annotated[Path, typer.Argument(help="Candidate model folder (model.onnx + extras) or .onnx file.")],
    name: Annotated[str, typer.Option(help="Model name.")],
    version: Annotated[int, typer.Option(help="New version (above every version the gateway has seen).")],
    data: Annotated[Path, typer.Option(help="Held-out data (.npz with arrays x and y) for the gates.")],
    key: Annotated[Path, typer.Option(help="Signer's ECDSA P-256 private key.")],
    recipient: Annotated[list[Path], typer.Option(help="Recipient public key (repeatable).")],
    baseline: Annotated[Path | None, typer.Option(help="The current release's ONNX, to compare against.")] = None,
    provenance: Annotated[Path | None, typer.Option(help="JSON provenance (privacy, training) to record.")] = None,
    max_accuracy_drop: Annotated[float, typer.Option(help="Largest allowed accuracy drop, points.")] = 1.0,
    max_latency_ratio: Annotated[float, typer.Option(help="Largest allowed p50 latency ratio.")] = 1.2,
    max_epsilon: Annotated[float, typer.Option(help="Largest allowed ε in provenance.")] = 8.0,
    out_file: Annotated[Path | None, typer.Option("--out", help="Where to keep the sealed file.")] = None,
    address: Address = "127.0.0.1:8500",
    dir: CertsDir = Path("certs"),
    token: Token = None,
    cert: Cert = None,
) -> None:
    """Gates passed → seal → push, in one step; refuses (nothing sealed or pushed) on any failed gate."""
    from gateway.artifact.keys import load_recipient, load_signer
    from gateway.release.commands import load_xy
    from gateway.release.gates import GateConfig, check
    from gateway.release.publish import release

    files = {candidate.name: candidate.read_bytes()} if candidate.is_file() else None
    onnx_bytes = candidate.read_bytes() if candidate.is_file() else (candidate / "model.onnx").read_bytes()
    x, y = load_xy(data)
    prov = _read_json(provenance) if provenance else {}
    gates = GateConfig(
        max_accuracy_drop=max_accuracy_drop, max_latency_ratio=max_latency_ratio, max_epsilon=max_epsilon
    )
    report = check(onnx_bytes, baseline.read_bytes() if baseline else None, x, y, gates, prov)
    out.print(report.table())
    client = _client(address, dir, token, cert)
    bar, update = _progress(f"push {name} v{version}")
    with client, bar:
        resp = release(
            files or candidate,
            name=name,
            version=version,
            report=report,
            provenance=prov,
            signer=load_signer(key),
            recipients=[load_recipient(r) for r in recipient],
            client=client,
            out=out_file or Path(f"{name}-{version}.sealed"),
            progress=update,
        )
    out.print(f"released {resp.name} v{resp.version}: all gates passed, sealed and pushed", highlight=False)


# --- federated -------------------------------------------------------------------------------------
def _register_fl() -> None:
    """Attach `sealgate fl`: the real sub-app (torch, Flower) only when it is invoked, so other commands
    start in a fraction of a second; otherwise a light placeholder that lists it in --help."""
    if len(sys.argv) > 1 and sys.argv[1] == "fl":
        from fl.commands import fl_app

        app.add_typer(fl_app, name="fl")
        return
    placeholder = typer.Typer(help="Federated fine-tuning with differential privacy (Flower + Opacus).")

    @placeholder.command("run")
    def _run() -> None:
        """Run a federated DP fine-tuning (see `sealgate fl run --help`)."""

    app.add_typer(placeholder, name="fl")


_register_fl()


# --- benchmarks ------------------------------------------------------------------------------------
BENCHES = {
    "seal": "seal_bench.py",
    "serve": "serve_bench.py",
    "optimize": "optimize.py",
    "privacy": "fl_privacy_utility.py",
}


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context, name: Annotated[str, typer.Argument(help=f"One of: {', '.join(BENCHES)}.")]) -> None:
    """Run a benchmark from bench/ (extra arguments are passed through); figures are in the README."""
    import subprocess

    script = BENCHES.get(name)
    if script is None:
        raise SealgateError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHES)}")
    root = Path(__file__).resolve().parents[1]
    path = root / "bench" / script
    if not path.is_file():
        raise SealgateError(f"{path} not found: benchmarks run from a source checkout")
    raise typer.Exit(subprocess.call([sys.executable, str(path), *ctx.args], cwd=root))


# --- demo ------------------------------------------------------------------------------------------
@app.command()
def demo(
    dir: Annotated[Path, typer.Option("--dir", help="Folder for everything the demo makes.")] = Path("sealgate-demo"),
    clients: Annotated[int, typer.Option(help="Federated clients.")] = 5,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 3,
    epsilon: Annotated[float, typer.Option(help="Per-client ε target for the whole run.")] = 3.0,
) -> None:
    """The whole story in one command, offline: PKI, train, seal, serve, DP fine-tune, prune, gate, release."""
    from gateway.demo import run_demo

    run_demo(dir, clients=clients, rounds=rounds, epsilon=epsilon)


if __name__ == "__main__":
    main()
