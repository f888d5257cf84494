"""Reading a sealed artifact without a key (issue 10, finding 16): `inspect` marks every claim UNVERIFIED and
defuses hostile text; the header parser refuses fields it does not know at any level and, on any input,
raises only ArtifactError subclasses (the contract the fuzz harness of `parse_header` checks).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.artifact import envelope
from gateway.artifact.keys import generate_identity
from gateway.artifact.render import UNVERIFIED, render_header, safe_text
from gateway.artifact.sealed import TrustStore, inspect, open_artifact, seal_to_file
from gateway.errors import ArtifactError, UnsupportedFormat
from tests.models import make_onnx_mlp

SEALGATE = Path(sys.executable).parent / "sealgate"
HOSTILE_NAME = "\x1b[2J\x1b[31mmlp\u202egpj.exe\u2066hidden\u2069\u200f\x07\r\nforged: line"
HOSTILE_CHARS = "\x1b\u202e\u2066\u2069\u200f\x07\r"


@pytest.fixture(scope="module")
def keys() -> tuple[ec.EllipticCurvePrivateKey, object]:
    """A signer and a recipient identity."""
    return ec.generate_private_key(ec.SECP256R1()), generate_identity()


def _seal(keys: tuple, out: Path, name: str = "mlp") -> Path:
    signer, identity = keys
    seal_to_file(
        make_onnx_mlp(4, (4,), 1, seed=1), out, name=name, version=1, signer=signer, recipients=[identity.public]
    )
    return out


def _with_header(blob: bytes, edit: Callable[[dict], None]) -> bytes:
    """`blob` with its header JSON edited and re-encoded canonically (the signature no longer matches)."""
    _, _, hlen = envelope.PREFIX.unpack(blob[: envelope.PREFIX.size])
    doc = json.loads(blob[envelope.PREFIX.size : envelope.PREFIX.size + hlen])
    edit(doc)
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return (
        envelope.PREFIX.pack(envelope.MAGIC, envelope.FORMAT_VERSION, len(raw))
        + raw
        + blob[envelope.PREFIX.size + hlen :]
    )


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80", "FORCE_COLOR": "1", "TERM": "xterm-256color"}
    return subprocess.run([str(SEALGATE), *map(str, args)], capture_output=True, text=True, timeout=120, env=env)


def test_hostile_header_text_is_escaped_and_marked_unverified(keys: tuple, tmp_path: Path) -> None:
    """A signed artifact whose name carries ANSI, bidi and newline characters: printed escaped, under UNVERIFIED."""
    path = _seal(keys, tmp_path / "a.sealed", HOSTILE_NAME)
    header = inspect(path)
    assert header.name == HOSTILE_NAME, "the parser keeps the claim as it is; the rendering defuses it"
    text = render_header(header)
    assert not any(ch in text for ch in HOSTILE_CHARS), text
    doc = json.loads(text)
    assert doc["verified"] is False and doc["status"] == UNVERIFIED
    assert not any(ch in doc["name"] for ch in HOSTILE_CHARS + "\n"), "defused after JSON decoding too"
    assert "\\x1b[31m" in doc["name"] and "\\u202e" in doc["name"] and "\\u2066" in doc["name"]
    assert safe_text("a\\u202e") == "a\\\\u202e", "a literal backslash is escaped: escapes stay unambiguous"
    result = _cli("inspect", path)
    assert result.returncode == 0, result.stderr
    assert UNVERIFIED in result.stdout
    assert not any(ch in result.stdout for ch in HOSTILE_CHARS), repr(result.stdout[:400])
    assert json.loads(result.stdout)["name"] == doc["name"]


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(comment="hi"),
        lambda d: d["signer"].update(url="https://evil.example/"),
        lambda d: d["recipients"][0].update(note="\x1b[2J"),
    ],
    ids=["top level", "signer", "recipient"],
)
def test_unknown_header_fields_are_refused_at_any_level(
    keys: tuple, tmp_path: Path, edit: Callable[[dict], None]
) -> None:
    """A field this build does not read is a claim nothing checks: UnsupportedFormat for inspect, open and the CLI."""
    blob = _with_header(_seal(keys, tmp_path / "a.sealed").read_bytes(), edit)
    with pytest.raises(UnsupportedFormat, match="does not read"):
        envelope.parse_header(blob)
    with pytest.raises(UnsupportedFormat):
        open_artifact(blob, [keys[1]], TrustStore.of([keys[0].public_key()]))
    (tmp_path / "b.sealed").write_bytes(blob)
    result = _cli("inspect", tmp_path / "b.sealed")
    assert result.returncode != 0 and result.stderr.startswith("error: ") and "does not read" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout and "\x1b[2J" not in result.stderr


def test_parse_header_raises_only_artifact_errors(keys: tuple, tmp_path: Path) -> None:
    """The fuzz contract of `envelope.parse_header`: a Header or an ArtifactError, whatever the bytes."""
    good = _seal(keys, tmp_path / "a.sealed").read_bytes()
    assert envelope.parse_header(good) == inspect(good)
    rng = random.Random(10)
    prefix = envelope.PREFIX.pack(envelope.MAGIC, envelope.FORMAT_VERSION, 0)[:-4]

    def framed(body: bytes) -> bytes:
        return prefix + len(body).to_bytes(4, "big") + body

    cases = [
        b"",
        envelope.MAGIC,
        good[:20],
        framed(b"[" * 50_000 + b"]" * 50_000),
        framed(b'{"version":' + b"9" * 5000 + b"}"),
        framed(b"\xff\xfe\x00"),
        framed(b"NaN"),
        framed(b'{"recipients":[1]}'),
        framed(b'{"signer":[]}'),
        framed(b'{"format":"sealgate-sealed/1","signer":"x","recipients":{}}'),
        prefix + (envelope.MAX_HEADER + 1).to_bytes(4, "big"),
        prefix + (50).to_bytes(4, "big") + b"{}",
    ]
    hlen = int.from_bytes(good[10:14], "big")
    for _ in range(300):
        blob = bytearray(good[: envelope.PREFIX.size + hlen])
        for _ in range(rng.randint(1, 4)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        cases.append(bytes(blob))
    for blob in cases:
        try:
            envelope.parse_header(blob)
        except ArtifactError:
            pass
