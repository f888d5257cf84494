"""A user's folder for CLI tests, and the installed `sealgate` console script run in it (shared by the CLI
error tests of the first and second reviews)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from gateway.auth import pki
from tests.models import make_onnx_mlp

SEALGATE = Path(sys.executable).with_name("sealgate")


@dataclass(frozen=True)
class Folder:
    """A user's working folder as `sealgate init` leaves it, with a model file and that model sealed."""

    root: Path
    certs: Path
    model: Path
    sealed: Path


def sealgate(folder: Path, *args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed `sealgate` console script in `folder` (no token, no traceback switch inherited)."""
    run_env = {**os.environ, "COLUMNS": "80", **(env or {})}
    run_env.pop("SEALGATE_TOKEN", None)
    run_env.pop("SEALGATE_TRACEBACK", None)
    return subprocess.run(
        [str(SEALGATE), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=folder, env=run_env
    )


def user_folder(root: Path, in_dim: int, hidden: tuple[int, ...], out_dim: int) -> Folder:
    """Keys as `sealgate init` writes them (0600), an MLP model file, and that model sealed as mlp v1."""
    certs = root / "certs"
    pki.write_dev_pki(certs)
    pki.write_signing_keys(certs)
    pki.write_recipient_keys(certs)
    pki.write_jwt_issuer(certs)
    model = root / "model.onnx"
    model.write_bytes(make_onnx_mlp(in_dim=in_dim, hidden=hidden, out_dim=out_dim)["model.onnx"])
    sealed = root / "mlp-1.sealed"
    result = sealgate(
        root, "seal", model, "--name", "mlp", "--version", "1", "--key", certs / "signing.key",
        "--recipient", certs / "gateway.pub", "--out", sealed,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return Folder(root, certs, model, sealed)
