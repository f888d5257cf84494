"""`sealgate`: one command line for keys, tokens, signing, sealing, serving, release and federated runs.

Heavy modules (TensorFlow, torch, Flower) are imported inside the commands that need them, so that
`sealgate inspect` answers in a fraction of a second. Every deliberate error prints one line and exits
non-zero; no traceback reaches the user.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from gateway.errors import SealgateError

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
        console.print(f"[red]error:[/red] {exc}", highlight=False)
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


# --- demo ------------------------------------------------------------------------------------------
@app.command()
def demo() -> None:
    """The whole story in one command (not yet: lands with the demo issue)."""
    out.print("sealgate demo: not yet — lands with the demo issue")
