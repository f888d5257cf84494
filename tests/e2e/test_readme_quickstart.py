"""The README's quick start runs as written (issue 16): every fenced bash and python snippet of its "Quick
start" section, in order, in one shell session in a fresh folder holding only a model like the demo's.

Nothing in the snippets is rewritten. The ports come from the environment variables the README documents:
`SEALGATE_CONFIG` (a sealgate.toml with free loopback ports), `SEALGATE_ADDRESS` and `SEALGATE_REST`.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from gateway.config import ServerConfig
from tests.models import make_onnx_mlp

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PY_END = "SEALGATE_README_PYTHON"


def quick_start_snippets(text: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced bash/python block between "## Quick start" and the next "## " heading."""
    match = re.search(r"^## Quick start.*?$(.*?)(?=^## )", text, re.M | re.S)
    assert match, "the README has no Quick start section"
    return re.findall(r"^```(bash|python)\n(.*?)^```", match.group(1), re.M | re.S)


def session_script(snippets: list[tuple[str, str]]) -> str:
    """One bash session running the snippets in order; python ones go to the venv's python on stdin."""
    parts = ["set -eu"]
    for language, code in snippets:
        assert PY_END not in code
        parts.append(code if language == "bash" else f".venv/bin/python - <<'{PY_END}'\n{code}{PY_END}")
    return "\n".join(parts) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_group(pgid: int, timeout: float = 20.0) -> bool:
    """SIGTERM the session's process group (the backgrounded gateway), SIGKILL after `timeout`; True if clean."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    os.killpg(pgid, signal.SIGKILL)
    return False


def test_the_quick_start_section_has_the_three_snippets() -> None:
    """Shell, then Python, then shell with curl: a README edit that drops one must be deliberate."""
    snippets = quick_start_snippets(README.read_text())
    assert [language for language, _ in snippets] == ["bash", "python", "bash"]
    assert "sealgate serve &" in snippets[0][1]
    assert "curl" in snippets[2][1] and "..." not in snippets[2][1]


def test_the_quick_start_runs_in_a_fresh_folder(tmp_path: Path) -> None:
    """init, seal, inspect, serve, token, models; then tritonclient gRPC inference; then curl REST predict."""
    snippets = quick_start_snippets(README.read_text())
    work = tmp_path / "fresh"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    (work / "model.onnx").write_bytes(make_onnx_mlp(in_dim=64, hidden=(32,), out_dim=10, seed=3)["model.onnx"])
    grpc_port, rest_port = free_port(), free_port()
    metrics = '\nmetrics_address = ""' if hasattr(ServerConfig(), "metrics_address") else ""
    (work / "sealgate.toml").write_text(
        f'[server]\ngrpc_address = "127.0.0.1:{grpc_port}"\nrest_address = "127.0.0.1:{rest_port}"\n'
        f"drain_seconds = 1.0{metrics}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEALGATE_")}
    env.update(
        SEALGATE_CONFIG="sealgate.toml",
        SEALGATE_ADDRESS=f"127.0.0.1:{grpc_port}",
        SEALGATE_REST=f"127.0.0.1:{rest_port}",
        COLUMNS="120",
    )
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    with stdout.open("w") as out, stderr.open("w") as err:  # files, not pipes: the gateway outlives bash
        shell = subprocess.Popen(
            ["bash", "-c", session_script(snippets)], cwd=work, env=env, stdout=out, stderr=err, start_new_session=True
        )
        try:
            code = shell.wait(timeout=150)
        finally:
            clean = stop_group(shell.pid)
    said, logged = stdout.read_text(), stderr.read_text()
    assert code == 0, f"a quick-start snippet failed (exit {code}):\n{said}\n{logged[-4000:]}"
    assert clean, "the gateway did not stop on SIGTERM"
    assert "Traceback" not in said + logged, logged[-4000:]
    assert (work / "certs" / "ca.pem").is_file() and (work / "models" / "mlp" / "1.sealed").is_file()
    assert re.search(r"sealed model\.onnx as mlp v1", said), said
    assert re.search(r"mlp\s.*1\s.*SERVING", said), said
    assert re.search(r"^\[\[.*", said, re.M), said  # tritonclient's output array, printed by numpy
    assert re.search(r'\{"predictions":\s*\[\[', said), said  # curl's TF Serving answer
