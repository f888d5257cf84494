"""Regenerate the Python modules and .pyi stubs in gateway/protos/ from protos/, byte-for-byte reproducibly.

Run `python -m gateway.protos.generate` after editing a .proto (`--check` only lists stale files).
protoc (from grpc_tools) compiles with protos/ as the include root, so descriptors keep their source
names (`inference/grpc_service.proto`); a fixed set of rewrites then makes the output importable as
`gateway.protos.<dir>...` and registers it in the private pool of `gateway.protos.pool` (the two well-known
types TF Serving's contract imports, Any and Int64Value, are mirrored into that pool first). Each rewrite
must match exactly as often as expected, so a protoc whose output changes shape fails loudly here.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from gateway.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "protos"
OUT_ROOT = REPO_ROOT / "gateway" / "protos"
PACKAGE = "gateway.protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
POOL_IMPORT = f"from {PACKAGE} import pool as _sealgate_pool\n"
INIT_TEXT = '"""Generated package for protos/{path}; regenerate with `python -m gateway.protos.generate`."""\n'

_DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = "_sealgate_pool.POOL.AddSerializedFile("
_DESCRIPTOR = "DESCRIPTOR = "
_INSERTION_POINT = "# @@protoc_insertion_point(imports)\n"
_BUILD_MESSAGES = re.compile(r"(_builder\.BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')([\w.]+)(')")
_FOREIGN_IMPORT = re.compile(r"^from google\.protobuf import (\w+_pb2) as (\w+)$", re.MULTILINE)
# well-known types an official contract we mirror needs (TF Serving: Int64Value, Any); their files are copied
# into the private pool before the importing file, so their classes there are the pool's own (set fields, never
# assign a google.protobuf instance). Any other well-known type is refused.
MIRRORED_WELL_KNOWN = frozenset({"any_pb2", "wrappers_pb2"})


def proto_files(proto_root: Path = PROTO_ROOT) -> list[str]:
    """Every .proto under proto_root, as sorted POSIX paths relative to it."""
    return sorted(path.relative_to(proto_root).as_posix() for path in proto_root.rglob("*.proto"))


def render(proto_root: Path = PROTO_ROOT) -> dict[str, bytes]:
    """Compile every proto and return {path relative to gateway/protos: file bytes}, nothing written."""
    protos = proto_files(proto_root)
    if not protos:
        raise ConfigError(f"no .proto files under {proto_root}")
    well_known = Path(str(resources.files("grpc_tools") / "_proto"))
    with tempfile.TemporaryDirectory(prefix="sealgate-protoc-") as tmp:
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "--proto_path=.",
            f"--proto_path={well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *protos,
        ]
        result = subprocess.run(command, cwd=proto_root, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ConfigError(f"protoc failed: {result.stderr.strip() or result.stdout.strip()}")
        roots = {proto.split("/", 1)[0] for proto in protos}
        out = Path(tmp)
        files = {
            path.relative_to(out).as_posix(): _rewrite(
                path.relative_to(out).as_posix(), path.read_bytes().decode("utf-8"), roots
            )
            for path in sorted(out.rglob("*"))
            if path.is_file() and not _serviceless_grpc(path)
        }
    rendered = {name: text.encode("utf-8") for name, text in files.items()}
    for name in list(rendered):
        for parent in Path(name).parents:
            if parent != Path("."):
                rendered.setdefault(f"{parent.as_posix()}/__init__.py", INIT_TEXT.format(path=parent).encode())
    return dict(sorted(rendered.items()))


def _serviceless_grpc(path: Path) -> bool:
    """A `_pb2_grpc.py` that protoc wrote for a proto declaring no service: nothing in it, so not kept."""
    return path.name.endswith("_pb2_grpc.py") and "Servicer" not in path.read_text(encoding="utf-8")


def _rewrite(name: str, text: str, roots: set[str]) -> str:
    """Apply the package and private-pool rewrites to one generated file."""
    root_pattern = "|".join(re.escape(root) for root in sorted(roots))
    text = re.sub(rf"^(from|import) ({root_pattern})(?=[. ])", rf"\1 {PACKAGE}.\2", text, flags=re.MULTILINE)
    if not name.endswith("_pb2.py"):
        return text
    foreign = _FOREIGN_IMPORT.findall(text)
    refused = [module for module, _ in foreign if module not in MIRRORED_WELL_KNOWN]
    if refused:
        raise ConfigError(
            f"{name} imports {', '.join(refused)}: sealgate protos live in a private descriptor pool "
            "(gateway/protos/pool.py) and may import only files under protos/ and the well-known types "
            f"{', '.join(sorted(MIRRORED_WELL_KNOWN))}"
        )
    text, count = _BUILD_MESSAGES.subn(rf"\g<1>{PACKAGE}.\g<2>\g<3>", text)
    _expect(name, "BuildTopDescriptorsAndMessages", count)
    _expect(name, _DEFAULT_POOL, text.count(_DEFAULT_POOL))
    _expect(name, _INSERTION_POINT.strip(), text.count(_INSERTION_POINT))
    mirrors = "".join(f"_sealgate_pool.mirror({alias}.DESCRIPTOR)\n" for _, alias in foreign)
    _expect(name, _DESCRIPTOR + _DEFAULT_POOL, text.count(_DESCRIPTOR + _DEFAULT_POOL))
    text = text.replace(_DESCRIPTOR + _DEFAULT_POOL, mirrors + _DESCRIPTOR + _PRIVATE_POOL)
    text = text.replace(_INSERTION_POINT, POOL_IMPORT + _INSERTION_POINT)
    return text


def _expect(name: str, what: str, count: int) -> None:
    """Fail unless a rewrite target occurred exactly once in a generated module."""
    if count != 1:
        raise ConfigError(f"{name}: expected exactly one `{what}` in protoc output, found {count}")


def _orphans(out_root: Path, rendered: dict[str, bytes]) -> list[str]:
    """Generated-looking files under out_root's subpackages that no current proto produces."""
    found = (path.relative_to(out_root).as_posix() for path in out_root.glob("*/**/*") if path.is_file())
    return sorted(name for name in found if name.endswith(GENERATED_SUFFIXES) and name not in rendered)


def generate(out_root: Path = OUT_ROOT, proto_root: Path = PROTO_ROOT) -> list[str]:
    """Write the rendered files under out_root, delete orphaned generated files; return what changed."""
    rendered = render(proto_root)
    changed = []
    for name, data in rendered.items():
        target = out_root / name
        if target.is_file() and target.read_bytes() == data:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        changed.append(name)
    for name in _orphans(out_root, rendered):
        (out_root / name).unlink()
        changed.append(name)
    return sorted(changed)


def check(out_root: Path = OUT_ROOT, proto_root: Path = PROTO_ROOT) -> list[str]:
    """Files under out_root that are missing, differ from a fresh render, or are orphaned; [] when current."""
    rendered = render(proto_root)
    stale = [
        name
        for name, data in rendered.items()
        if not (out_root / name).is_file() or (out_root / name).read_bytes() != data
    ]
    return sorted(stale + _orphans(out_root, rendered))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: regenerate (default) or, with --check, report stale files and exit 1 if any."""
    parser = argparse.ArgumentParser(prog="python -m gateway.protos.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="list stale files instead of writing")
    args = parser.parse_args(argv)
    if args.check:
        stale = check()
        for name in stale:
            print(f"stale: gateway/protos/{name}")
        return 1 if stale else 0
    for name in generate():
        print(f"wrote: gateway/protos/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
