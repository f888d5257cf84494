"""`sealgate`: one command line for keys, tokens, signing, sealing, serving, release and federated runs.

Heavy modules (TensorFlow, torch, Flower) are imported inside the commands that need them, so that
`sealgate inspect` answers in a fraction of a second. Every deliberate error prints one line and exits
non-zero; no traceback reaches the user.
"""

from __future__ import annotations

import errno
import inspect as pyinspect
import json
import os
import re
import socket
import sys

# Native libraries log INFO lines from C++ (gRPC's fork handlers, TensorFlow's oneDNN notice) unless told
# otherwise before they load; the CLI speaks for itself. Explicit user settings win.
for _var, _value in (("GRPC_VERBOSITY", "ERROR"), ("GLOG_minloglevel", "2"), ("TF_CPP_MIN_LOG_LEVEL", "2")):
    os.environ.setdefault(_var, _value)
from pathlib import Path  # noqa: E402 (after the environment above)
from typing import TYPE_CHECKING, Annotated, Any  # noqa: E402 (after the environment above)

import click  # noqa: E402 (after the environment above)
import typer  # noqa: E402 (after the environment above)
import typer.core  # noqa: E402 (after the environment above)
import typer.models  # noqa: E402 (after the environment above)
import typer.utils  # noqa: E402 (after the environment above)
from rich.console import Console  # noqa: E402 (after the environment above)
from rich.markup import escape  # noqa: E402 (after the environment above)

from gateway.errors import ConfigError, SealgateError  # noqa: E402 (after the environment above)

if TYPE_CHECKING:
    import numpy as np
    from rich.progress import Progress

    from gateway.config import Config
    from gateway.protos.sealgate.v1 import release_pb2
    from gateway.release.client import Progress as ProgressFn
    from gateway.release.client import ReleaseClient


class SealgateGroup(typer.core.TyperGroup):
    """The root command group: before any help is shown, every help text of every command is made literal."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Make the help texts literal once, then run click's main."""
        _literal_help(self)
        return super().main(*args, **kwargs)


def _literal_help(command: click.Command) -> None:
    """Escape rich markup in the help of `command`, its parameters and its subcommands, recursively.

    typer renders help through rich markup, which swallowed `[tls]`; help here is plain text. Arguments get
    their help back too: click 8.5 resets the `help` that typer 0.20 stores on a TyperArgument.
    """
    if getattr(command, "_sealgate_literal", False):
        return
    command._sealgate_literal = True  # type: ignore[attr-defined]
    declared = _declared_argument_help(command)
    for attr in ("help", "short_help", "epilog"):
        text = getattr(command, attr, None)
        if text:
            setattr(command, attr, escape(text))
    for param in command.params:
        if isinstance(param, click.Argument) and not getattr(param, "help", None) and param.name in declared:
            param.help = declared[param.name]
        help_text = getattr(param, "help", None)
        if help_text:
            param.help = escape(help_text)
    for sub in getattr(command, "commands", {}).values():
        _literal_help(sub)


def _declared_argument_help(command: click.Command) -> dict[str, str]:
    """The help each `typer.Argument(help=...)` of the command's function declares, by parameter name."""
    if command.callback is None:
        return {}
    try:
        params = typer.utils.get_params_from_function(pyinspect.unwrap(command.callback))
    except Exception:  # a callback typer did not build: nothing declared to restore
        return {}
    return {
        name: info.default.help
        for name, info in params.items()
        if isinstance(info.default, typer.models.ArgumentInfo) and info.default.help
    }


app = typer.Typer(
    name="sealgate",
    help="Deploy machine-learning models privately: seal, serve, improve under DP, release.",
    cls=SealgateGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
out = Console()

CertsDir = Annotated[Path, typer.Option("--dir", help="Folder of the dev PKI and keys.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of text.")]


def _show_version(value: bool) -> None:
    """`sealgate --version`: sealgate's version and its runtimes', then exit (eager: before any command)."""
    if value:
        from gateway.ops.jsonout import version_info, version_line

        typer.echo(version_line(version_info()))
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_show_version, help="Show the versions and exit."),
    ] = False,
) -> None:
    """Deploy machine-learning models privately: seal, serve, improve under DP, release."""


def main() -> None:
    """Console-script entry: every expected failure becomes one line on stderr and a non-zero exit.

    sealgate's typed errors, file-system errors (a missing, unreadable or misplaced file), a port in use,
    and command-line usage errors; anything else is a bug, shown as one line too (with its traceback only
    when SEALGATE_TRACEBACK=1).
    """
    try:
        code = app(prog_name="sealgate", standalone_mode=False)
    except SealgateError as exc:
        _fail(str(exc))
    except click.exceptions.NoArgsIsHelpError as exc:  # the help itself, already shown by rich (or in the message)
        if exc.format_message().strip():
            print(exc.format_message(), file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        _fail(_usage_message(exc), exc.exit_code)
    except click.Abort:
        _fail("aborted")
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except OSError as exc:
        _fail(_os_message(exc))
    except Exception as exc:
        if os.environ.get("SEALGATE_TRACEBACK") == "1":
            raise
        if _is_bind_failure(exc):
            _fail(_bind_message(exc))
        _fail(f"unexpected {type(exc).__name__}: {exc} (a bug; SEALGATE_TRACEBACK=1 shows where)")
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int = 1) -> None:
    """Print `error: message` as one plain line on stderr (it may hold paths with brackets) and exit."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    sys.exit(code)


def _usage_message(exc: click.ClickException) -> str:
    """A usage error in one line, naming the command whose --help explains it."""
    ctx = getattr(exc, "ctx", None)
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return f"{exc.format_message()}{where}"


def _os_message(exc: OSError) -> str:
    """`path: reason` for a file-system error; the port for a bind failure."""
    if exc.errno == errno.EADDRINUSE:
        return _bind_message(exc)
    reason = exc.strerror or str(exc)
    if exc.filename is not None and exc.filename2 is not None:
        return f"{exc.filename} -> {exc.filename2}: {reason}"
    if exc.filename is not None:
        return f"{exc.filename}: {reason}"
    return reason


def _bind_message(exc: BaseException) -> str:
    """The one-line `port HOST:PORT is in use` from gRPC's or asyncio's bind failure (both name the address)."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    match = re.search(r"address \('([^']*)', (\d+)", text) or re.search(r"address (\S+?)[;:,]?(?:\s|$)", text)
    if match is None:
        return f"a port is in use: {text}"
    address = f"{match.group(1)}:{match.group(2)}" if match.lastindex == 2 else match.group(1)
    return f"port {address} is in use"


def _is_bind_failure(exc: BaseException) -> bool:
    """Whether `exc` is gRPC's refusal to bind (a RuntimeError) or a socket's EADDRINUSE."""
    if isinstance(exc, OSError):
        return exc.errno == errno.EADDRINUSE
    return isinstance(exc, RuntimeError) and "Failed to bind" in str(exc)


# --- keys and tokens ------------------------------------------------------------------------------
@app.command()
def init(
    dir: CertsDir = Path("certs"),
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
    client: Annotated[str | None, typer.Option(help="Only add a client certificate with this name.")] = None,
    hybrid: Annotated[bool, typer.Option(help="Also make a post-quantum hybrid recipient key.")] = False,
    san: Annotated[
        list[str] | None,
        typer.Option(help="Extra host name or IP address the server certificate names (repeatable)."),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(help="Only add a server certificate server-NAME.pem for another machine, named by --san."),
    ] = None,
) -> None:
    """Write a development PKI and every key the other commands need (private keys 0600)."""
    from gateway.artifact.keys import KEM_HYBRID, generate_identity_files
    from gateway.auth import pki

    if client is not None:
        written = pki.add_client(dir, client)
    elif server is not None:
        written = pki.add_server(dir, server, san or [], force=force)
    else:
        _refuse_existing(dir, force)
        written = pki.write_dev_pki(dir, force=force, sans=san or [])
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
    as_json: Json = False,
) -> None:
    """Mint a development JWT signed by the dev issuer key."""
    from gateway.auth.tokens import mint_token

    cert = bind_cert.read_bytes() if bind_cert else None
    jwt = mint_token(dir / "jwt-issuer.key", dir / "jwks.json", sub, scope.split(), ttl=ttl, bind_cert=cert)
    if as_json:
        from gateway.ops.jsonout import emit, token_claims

        emit({"token": jwt, **token_claims(jwt)})
        return
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
    as_json: Json = False,
) -> None:
    """Verify an OpenSSF Model Signing signature over a model folder."""
    from gateway.artifact.signing import verify_directory

    verify_directory(path, pub, signature)
    if as_json:
        from gateway.ops.jsonout import emit

        emit({"verified": True, "path": str(path), "public_key": str(pub)})
        return
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
    from gateway.artifact.envelope import MAX_CHUNK, MIN_CHUNK
    from gateway.artifact.keys import load_recipient, load_signer
    from gateway.artifact.sealed import seal_to_file
    from gateway.versions import check_name

    if version < 1:
        raise SealgateError("--version must be a positive integer")
    check_name(name)  # the gateway's own rule: never seal what a push would refuse
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise SealgateError(f"--chunk-size must be from {MIN_CHUNK} to {MAX_CHUNK} bytes")
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
def inspect_cmd(sealed: Path, as_json: Json = False) -> None:
    """Print a sealed artifact's header; needs no key."""
    from gateway.artifact.render import describe_unverified, render_header
    from gateway.artifact.sealed import inspect

    if as_json:
        from gateway.ops.jsonout import emit

        emit(describe_unverified(inspect(sealed)))
        return
    typer.echo(render_header(inspect(sealed)))


def _require_folder(folder: Path, option: str) -> None:
    """Refuse, before any work, an output whose folder does not exist."""
    if not folder.is_dir():
        raise ConfigError(f"{option}: folder {folder} does not exist")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SealgateError(f"cannot read JSON from {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise SealgateError(f"{path} must hold a JSON object")
    return doc


# --- serving and release ---------------------------------------------------------------------------
Address = Annotated[str, typer.Option(envvar="SEALGATE_ADDRESS", help="Gateway gRPC address.")]
Token = Annotated[str | None, typer.Option(help="Bearer token (default: $SEALGATE_TOKEN).")]
Cert = Annotated[Path | None, typer.Option(help="Client certificate (default: DIR/client.pem).")]


@app.command()
def serve(
    config: Annotated[
        Path | None,
        typer.Option(envvar="SEALGATE_CONFIG", help="TOML config (default: ./models with ./certs)."),
    ] = None,
) -> None:
    """Serve sealed models over gRPC (8500) and REST (8501) behind mTLS and JWT, until SIGTERM."""
    from gateway.config import load_config
    from gateway.server.app import serve as run

    cfg = load_config(config)
    _refuse_taken_ports(cfg)
    raise typer.Exit(run(cfg))


def _listen_addresses(cfg: Config) -> list[tuple[str, str]]:
    """(config key, address) of every listener `serve` will open."""
    server = cfg.server
    found = [("[server] grpc_address", server.grpc_address)]
    if getattr(server, "rest", True):
        found.append(("[server] rest_address", server.rest_address))
    metrics = getattr(server, "metrics_address", "")
    if metrics:
        found.append(("[server] metrics_address", metrics))
    return found


def _refuse_taken_ports(cfg: Config) -> None:
    """Refuse, before anything starts, an address some other process already listens on.

    A plain bind with SO_REUSEADDR (so a port in TIME_WAIT is free) and without SO_REUSEPORT (so another
    gRPC server's port counts as taken); the servers' own bind failures are the backstop for a race.
    """
    for key, address in _listen_addresses(cfg):
        host, _, port_text = address.rpartition(":")
        host = host.strip("[]")
        if not port_text.isascii() or not port_text.isdigit() or int(port_text) == 0:
            continue
        try:
            infos = socket.getaddrinfo(host or None, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (OSError, UnicodeError):
            continue  # the server reports an address it cannot resolve
        for family, kind, proto, _, sockaddr in infos:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(sockaddr)
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        raise ConfigError(
                            f"port {address} is in use ({key}); stop what holds it or choose another"
                        ) from None
                    raise ConfigError(f"cannot listen on {address} ({key}): {exc.strerror or exc}") from None


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
        disable=not console.is_terminal,  # no bar (and no stray blank line on stderr) for scripts and probes
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
    store_only: Annotated[
        bool,
        typer.Option(
            "--store-only",
            help="Keep an artifact the gateway cannot open (sealed for other recipients) for fetch only; "
            "it is never served.",
        ),
    ] = False,
    canary: Annotated[
        int, typer.Option("--canary", help="Canary: PERCENT (1-100) of traffic to the new version until promoted.")
    ] = 0,
    shadow: Annotated[
        int, typer.Option("--shadow", help="Shadow: mirror PERCENT of traffic to the new version, answers discarded.")
    ] = 0,
    sticky: Annotated[bool, typer.Option("--sticky", help="Canary by caller (token subject), not by request.")] = False,
    as_json: Json = False,
) -> None:
    """Push a sealed artifact to the gateway (scope release:<model>); it serves once verified.

    One sealed for other recipients is refused (FAILED_PRECONDITION, nothing stored) unless --store-only.
    With --canary or --shadow it is judged live beside the serving version, then promoted or rolled back.
    """
    from gateway.artifact.sealed import inspect
    from gateway.release.client import push_summary
    from gateway.release.rollout import rollout_request

    header = inspect(sealed)
    rollout = rollout_request(canary, shadow, sticky)
    client = _client(address, dir, token, cert)
    bar, update = _progress(f"push {header.name} v{header.version}")
    with client, bar:
        resp = client.push(sealed, header.name, header.version, progress=update, store_only=store_only, rollout=rollout)
    if as_json:
        from gateway.ops.jsonout import emit, proto_to_dict

        emit(proto_to_dict(resp))
        return
    out.print(push_summary(resp), highlight=False)


@app.command()
def fetch(
    name: str,
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the sealed file.")],
    version: Annotated[int, typer.Option(help="Version (0: the one serving now).")] = 0,
    address: Address = "127.0.0.1:8500",
    dir: CertsDir = Path("certs"),
    token: Token = None,
    cert: Cert = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out file.")] = False,
    as_json: Json = False,
) -> None:
    """Fetch a sealed artifact (scope fetch:<model>); open it offline with `sealgate unseal`."""
    _require_folder(out_file.parent, "--out")
    if not force and (out_file.exists() or out_file.is_symlink()):
        raise ConfigError(f"--out {out_file} exists; refusing to overwrite it (use --force)")
    client = _client(address, dir, token, cert)
    bar, update = _progress(f"fetch {name}")
    with client, bar:
        meta = client.fetch(name, out_file, version, progress=update)
    if as_json:
        from gateway.ops.jsonout import emit, proto_to_dict

        emit({**proto_to_dict(meta), "out": str(out_file)})
        return
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
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for a gateway that is still starting (UNAVAILABLE).")
    ] = 0.0,
    as_json: Json = False,
) -> None:
    """List models, versions and their state on the gateway."""
    from rich.table import Table

    from gateway.protos.sealgate.v1 import release_pb2 as pb

    if not wait < 86400:  # inf (1e999) or nan would wait for ever
        raise SealgateError("--wait must be a number of seconds below 86400")
    with _client(address, dir, token, cert) as client:
        resp = _list_when_up(client, name, wait)
    if as_json:
        from gateway.ops.jsonout import emit, proto_to_dict

        emit(proto_to_dict(resp))
        return
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
    for m in resp.models:  # a canary/shadow in progress, or its decision
        if m.HasField("rollout"):
            from gateway.release.rollout import rollout_summary

            out.print(f"{m.name}: {rollout_summary(m.rollout)}", highlight=False)


def _list_when_up(client: ReleaseClient, name: str, wait: float) -> release_pb2.ListResponse:
    """`client.list(name)`, retried while the gateway answers UNAVAILABLE, for at most `wait` seconds."""
    import time

    import grpc

    from gateway.release.client import RemoteError

    deadline = time.monotonic() + max(0.0, wait)
    while True:
        try:
            return client.list(name)
        except RemoteError as exc:
            if exc.code != grpc.StatusCode.UNAVAILABLE or time.monotonic() >= deadline:
                raise
        time.sleep(0.25)


@app.command()
def rollback(
    name: str,
    version: Annotated[int, typer.Option(help="Earlier version to serve again.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit log).")] = "manual rollback",
    address: Address = "127.0.0.1:8500",
    dir: CertsDir = Path("certs"),
    token: Token = None,
    cert: Cert = None,
    as_json: Json = False,
) -> None:
    """Serve an earlier version again (scope release:<model> or admin); audited."""
    with _client(address, dir, token, cert) as client:
        resp = client.rollback(name, version, reason)
    if as_json:
        from gateway.ops.jsonout import emit, proto_to_dict

        emit(proto_to_dict(resp))
        return
    out.print(f"{resp.name}: now serving v{resp.version} (was v{resp.previous_version})", highlight=False)


@app.command()
def health(
    address: Address = "127.0.0.1:8500",
    dir: CertsDir = Path("certs"),
    cert: Cert = None,
    model: Annotated[str, typer.Option(help="Also require this model to be ready (needs a token: infer:MODEL).")] = "",
    token: Token = None,
    timeout: Annotated[float, typer.Option(help="Seconds for the whole check.")] = 2.0,
    server_name: Annotated[str, typer.Option(help="Name the server certificate must carry, if not the host.")] = "",
    as_json: Json = False,
) -> None:
    """Exit 0 and print one line if the gateway serves over mTLS (gRPC Health); else one line on stderr and exit 1
    (answers, not ready) or 3 (unreachable, TLS failure, timeout). For Kubernetes exec probes and HAProxy checks."""
    from gateway.ops.health import check

    bearer = ""
    if model:
        from gateway.release.client import token_from_env

        bearer = token_from_env(token)
    result = check(
        address,
        dir / "ca.pem",
        cert or dir / "client.pem",
        cert.with_suffix(".key") if cert else dir / "client.key",
        timeout_s=timeout,
        model=model,
        token=bearer,
        server_name=server_name,
    )
    if not result.ok:
        _fail(result.line(), result.exit_code)
    if as_json:
        from gateway.ops.jsonout import emit

        emit(result.to_json())
        return
    typer.echo(result.line())


@app.command()
def monitor(
    model: Annotated[str, typer.Argument(help="Model name.")],
    metrics_url: Annotated[
        list[str] | None,
        typer.Option(
            help="The gateway's metrics listener ([server] metrics_address; default http://127.0.0.1:8502/metrics); "
            "repeat it for each front-end worker."
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Front-end workers ([server] workers): read metrics port + 0 .. N-1 and merge.")
    ] = 1,
    top: Annotated[int, typer.Option(help="Features shown per version, highest PSI first.")] = 10,
    threshold: Annotated[
        float | None, typer.Option(help="PSI above which inputs drifted (default: the gateway's psi_threshold).")
    ] = None,
    as_json: Json = False,
) -> None:
    """Drift of a model's live inputs against its release reference: PSI per feature, max PSI, DRIFT/OK."""
    from gateway.monitor.report import show

    urls = metrics_url or ["http://127.0.0.1:8502/metrics"]
    show(urls, model, top=top, threshold=threshold, as_json=as_json, console=out, workers=workers)


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
    audit_data: Annotated[
        Path | None, typer.Option(help="Privacy audit sets (.npz), see docs/PRIVACY_AUDIT.md.")
    ] = None,
    max_audit_auc: Annotated[float, typer.Option(help="Privacy audit: largest allowed attack AUC.")] = 0.6,
    allow_no_dp: Annotated[
        bool, typer.Option("--allow-no-dp", help="Let a model trained without DP pass the privacy gates.")
    ] = False,
    out_file: Annotated[Path | None, typer.Option("--out", help="Where to keep the sealed file.")] = None,
    reference: Annotated[
        Path | None, typer.Option(help="PUBLIC rows (.npy or .npz x) sealed as reference.npz (explain); default none.")
    ] = None,
    reference_rows: Annotated[
        int, typer.Option(help="How many --reference rows to seal (a seeded sample); 0: none.")
    ] = 50,
    address: Address = "127.0.0.1:8500",
    dir: CertsDir = Path("certs"),
    token: Token = None,
    cert: Cert = None,
) -> None:
    """Gates passed → seal → push, in one step; refuses (nothing sealed or pushed) on any failed gate."""
    from gateway.artifact.keys import load_recipient, load_signer
    from gateway.release.client import check_token_fresh
    from gateway.release.commands import load_audit, load_xy
    from gateway.release.drift_reference import with_drift_reference
    from gateway.release.gates import GateConfig, check
    from gateway.release.publish import release
    from gateway.versions import check_name, check_version

    check_name(name)  # before the gates run, and before `NAME-VERSION.sealed` names a path outside the folder
    check_version(version)
    files = {candidate.name: candidate.read_bytes()} if candidate.is_file() else None
    onnx_bytes = candidate.read_bytes() if candidate.is_file() else (candidate / "model.onnx").read_bytes()
    x, y = load_xy(data)
    prov = _read_json(provenance) if provenance else {}
    prov = with_drift_reference(prov, x, onnx_bytes, source=f"held-out evaluation data {data.name}")
    gates = GateConfig(
        max_accuracy_drop=max_accuracy_drop,
        max_latency_ratio=max_latency_ratio,
        max_epsilon=max_epsilon,
        max_audit_auc=max_audit_auc,
        allow_no_dp=allow_no_dp,
    )
    audit = load_audit(audit_data) if audit_data else None
    # what would refuse the push after the gates is checked before them: keys, client TLS files, the token
    signer, recipients = load_signer(key), [load_recipient(r) for r in recipient]
    rows = _reference_rows(reference, reference_rows)
    with _client(address, dir, token, cert) as client:
        check_token_fresh(client.target.token)
        report = check(onnx_bytes, baseline.read_bytes() if baseline else None, x, y, gates, prov, audit_data=audit)
        out.print(report.table())
        bar, update = _progress(f"push {name} v{version}")
        with bar:
            resp = release(
                files or candidate,
                name=name,
                version=version,
                report=report,
                provenance=prov,
                signer=signer,
                recipients=recipients,
                client=client,
                out=out_file or Path(f"{name}-{version}.sealed"),
                progress=update,
                reference=rows,
                reference_source=f"public data {reference.name}" if reference else "",
            )
    out.print(f"released {resp.name} v{resp.version}: all gates passed, sealed and pushed", highlight=False)


def _reference_rows(path: Path | None, rows: int) -> np.ndarray | None:
    """The public rows `release` seals as reference.npz (gateway/release/reference.py); None without
    --reference: every recipient can read them, so evaluation data is never packed by default."""
    from gateway.release import reference as reference_data
    from gateway.release.commands import load_x

    if rows < 0:
        raise ConfigError("--reference-rows must be >= 0")
    return reference_data.sample(load_x(path), rows) if path and rows else None


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
    "batch": "batch_bench.py",  # dynamic batching and front-end workers on a heavy MLP
    "explain": "explain_bench.py",  # latency per explanation (KernelSHAP, occlusion) on the digits MLP
    "trace": "trace_bench.py",  # the cost of OpenTelemetry tracing per call
}


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    help=f"Run a benchmark from bench/: NAME is one of {', '.join(BENCHES)}. Arguments after `--` go to the "
    "benchmark (e.g. `sealgate bench seal -- --size-mb 256`); figures are in the README.",
)
def bench(ctx: typer.Context, name: Annotated[str, typer.Argument(help=f"One of: {', '.join(BENCHES)}.")]) -> None:
    """Run one benchmark script of bench/ in a subprocess, passing extra arguments through."""
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
    isolation: Annotated[
        str, typer.Option(help="The demo gateway's [backend] isolation: 'none' or 'process' (default: the config's).")
    ] = "",
) -> None:
    """The whole story in one command, offline: PKI, train, seal, serve, DP fine-tune, prune, gate, release."""
    from gateway.demo import run_demo

    run_demo(dir, clients=clients, rounds=rounds, epsilon=epsilon, isolation=isolation)


if __name__ == "__main__":
    main()
