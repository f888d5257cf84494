"""`sealgate.example.toml`: every configuration key with its default and a one-line comment, made from the code.

The file is generated from the frozen dataclasses of gateway/config.py: sections and keys in declaration order,
defaults from the dataclasses themselves, comments from the comment on (or just above) each field's line in
config.py, else from `FALLBACK` below for the keys that predate that rule. A test regenerates it and compares,
so a key added to config.py without regenerating (or without a comment) fails the suite instead of rotting:
`python -m gateway.ops.example_config --write` brings it up to date.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import sys
import tokenize
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway import config as config_module

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "sealgate.example.toml"
UNDOCUMENTED = "UNDOCUMENTED: add a one-line comment to this field in gateway/config.py"
HEADER = """\
# sealgate.example.toml: every key `sealgate serve --config FILE` reads, set to its default.
# Generated from gateway/config.py by `python -m gateway.ops.example_config --write`; a test checks it is current.
# Unknown keys are refused; relative paths are taken from this file's folder; omit any key to keep its default.
"""

# comments for keys whose field in config.py carries none (older keys); a comment there takes precedence
FALLBACK = {
    "server.grpc_address": "gRPC listener (OIP, TF Serving, Release, Health, reflection): host:port",
    "server.rest_address": "REST listener (OIP REST, TF Serving REST): host:port",
    "server.max_message_bytes": "largest gRPC message / REST body accepted (RESOURCE_EXHAUSTED / 413 beyond)",
    "server.max_push_bytes": "largest sealed file a Push may stream",
    "server.stream_deadline_s": "longest a Push or Fetch stream may take",
    "server.drain_seconds": "on SIGTERM: how long calls in flight may finish before the listeners close",
    "server.rest": "serve REST at all (false: gRPC only)",
    "repository.path": "folder of sealed models, <name>/<version>.sealed (replicas may share it)",
    "repository.poll_interval_s": "how often the folder is scanned for new, changed or removed files",
    "repository.version_policy": "'latest' (the newest `latest` versions) or 'specific' (those in `versions`)",
    "repository.latest": "with policy 'latest': how many of the newest versions are loaded",
    "repository.versions": "with policy 'specific': the versions to load",
    "tls.cert": "the server's certificate chain (PEM), re-read when it changes",
    "tls.key": "the server's private key (PEM, 0600)",
    "tls.require_client_auth": "mutual TLS: refuse peers without a client certificate from `ca`",
    "auth.jwks": "JSON Web Key Set file of the token issuer",
    "auth.issuer": "the `iss` every token must carry",
    "auth.audience": "the `aud` every token must carry",
    "auth.leeway_s": "clock skew tolerated on exp / nbf / iat, seconds",
    "auth.algorithms": "JWT algorithms accepted (asymmetric only; 'none' and HS* are refused)",
    "keys.identities": "the gateway's recipient private keys (X25519 or hybrid), to open sealed models",
    "keys.trusted_signers": "public keys whose signatures the gateway accepts",
    "audit.path": "JSON-lines audit log: a file, '-' for standard error",
    "backend.providers": "ONNX Runtime execution providers, in order of preference",
    "backend.intra_op_threads": "ONNX Runtime threads per inference (0: its default)",
    "backend.worker_crash_window_s": "isolation: the window, seconds, in which worker_max_crashes are counted",
    "batching.enabled": "turn dynamic batching on (for `models`, or every batchable model)",
}


def sections() -> list[tuple[str, type]]:
    """(section name, dataclass) for every section of `Config`, in declaration order."""
    defaults = config_module.Config()
    return [(f.name, type(getattr(defaults, f.name))) for f in dataclasses.fields(defaults)]


def field_comments(source: str | None = None) -> dict[tuple[str, str], str]:
    """(class name, field) -> the comment on the field's line, or on the comment lines right above it."""
    import ast

    text = source if source is not None else Path(config_module.__file__).read_text()
    by_line: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            by_line[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = text.splitlines()
    found: dict[tuple[str, str], str] = {}
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            comment = by_line.get(stmt.end_lineno or stmt.lineno, "")
            above = stmt.lineno - 1
            block: list[str] = []
            while not comment and above >= 1 and lines[above - 1].strip().startswith("#"):
                block.insert(0, by_line.get(above, ""))
                above -= 1
            found[(node.name, stmt.target.id)] = comment or " ".join(block)
    return found


def render() -> str:
    """The whole example file, as it should be committed."""
    comments = field_comments()
    out = io.StringIO()
    out.write(HEADER)
    for name, cls in sections():
        out.write(f"\n[{name}]\n")
        doc = (cls.__doc__ or "").strip().splitlines()
        if doc:
            out.write(f"# {doc[0]}\n")
        defaults = cls()
        for f in dataclasses.fields(cls):
            comment = comments.get((cls.__name__, f.name)) or FALLBACK.get(f"{name}.{f.name}") or UNDOCUMENTED
            value = getattr(defaults, f.name)
            if value is None:  # TOML has no null: the key is shown, commented out, unset
                out.write(f"# {f.name} =  # unset by default; {comment}\n")
            else:
                out.write(f"{f.name} = {toml_value(value)}  # {comment}\n")
    return out.getvalue()


def toml_value(value: Any) -> str:
    """`value` as a TOML literal: strings and paths quoted, lists, inline tables, booleans, numbers."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, tuple | list | frozenset | set):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):  # a dict, or a frozen MappingProxyType ([rollout] models)
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return toml_value({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    raise TypeError(f"no TOML form for {type(value).__name__}")


def main(argv: list[str] | None = None) -> int:
    """Print the example, write it (--write), or check the committed file is current (--check)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {EXAMPLE.name} at the repository root")
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file is not current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = EXAMPLE.read_text() if EXAMPLE.exists() else ""
        if current != text:
            print(f"{EXAMPLE.name} is stale: run python -m gateway.ops.example_config --write", file=sys.stderr)
            return 1
        return 0
    if args.write:
        EXAMPLE.write_text(text)
        print(f"wrote {EXAMPLE}")
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
