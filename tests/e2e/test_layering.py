"""Layering: the offline paths import no transport, and errors map to status codes only in server/.

`sealgate unseal`, the artifact layer and fl/ run on machines with no gateway: pulling in gRPC there
costs start-up time and ties a file format to a transport. Each check runs in a fresh interpreter, so
modules other tests imported cannot hide an import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from gateway import errors
from gateway.server import status_map

ROOT = Path(__file__).resolve().parents[2]
OFFLINE_MODULES = (
    "gateway.errors",
    "gateway.artifact.sealed",
    "gateway.artifact.keys",
    "gateway.artifact.render",
    "gateway.cli",
    "fl.settings",
)


def _loaded_after_import(modules: tuple[str, ...]) -> list[str]:
    """The names in sys.modules of a fresh interpreter after importing `modules`."""
    script = "import importlib, json, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    script += "print(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", OFFLINE_MODULES)
def test_offline_module_imports_no_grpc(module: str) -> None:
    """Importing an offline-path module (errors, artifact, the CLI's unseal path, fl settings) loads no grpc."""
    loaded = _loaded_after_import((module,))
    assert module in loaded
    assert not [name for name in loaded if name == "grpc" or name.startswith("grpc.")]


def test_errors_module_names_no_transport() -> None:
    """gateway/errors.py neither imports nor mentions a transport: status codes live in server/status_map.py."""
    source = Path(errors.__file__).read_text()
    assert "import grpc" not in source and "grpc_code" not in source and "http_status" not in source
    assert not [cls for cls in vars(errors).values() if isinstance(cls, type) and hasattr(cls, "grpc_code")]


def test_every_error_class_has_codes_through_its_mro() -> None:
    """Every SealgateError subclass resolves to a table entry: only the base, ConfigError and ModelFailed (the
    model raised inside its runtime) are 500."""
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.SealgateError)]
    assert len(classes) > 15
    for cls in classes:
        code, status = status_map.codes(cls("x"))
        if cls in (errors.SealgateError, errors.ConfigError, errors.ModelFailed):
            assert status == 500
        else:
            assert code != grpc.StatusCode.INTERNAL and status != 500, cls.__name__


def test_subclass_inherits_its_nearest_listed_base() -> None:
    """A new error subclass gets its parent's codes without a new row; NotServable overrides NotARecipient."""

    class LateInput(errors.InvalidInput):
        """A subclass defined after the table was built."""

    assert status_map.grpc_status(LateInput("bad")) == (grpc.StatusCode.INVALID_ARGUMENT, "bad")
    assert status_map.http_status(LateInput("bad")) == (400, "bad")
    assert status_map.codes(errors.NotARecipient("n")) == (grpc.StatusCode.INVALID_ARGUMENT, 400)
    assert status_map.codes(errors.NotServable("n")) == (grpc.StatusCode.FAILED_PRECONDITION, 412)


def test_unexpected_errors_reveal_nothing_and_messages_are_bounded() -> None:
    """A bug is INTERNAL / 500 "internal error"; a sealgate message is cut at the 512-character backstop."""
    assert status_map.grpc_status(ValueError("secret path /etc/x")) == (grpc.StatusCode.INTERNAL, "internal error")
    assert status_map.http_status(KeyError("k")) == (500, "internal error")
    code, message = status_map.grpc_status(errors.NotFound("m" * 10_000))
    assert code == grpc.StatusCode.NOT_FOUND and len(message) == errors.MAX_MESSAGE_CHARS + 1
    assert status_map.codes(status_map.HttpRefusal(431, "head too large")) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        431,
    )


def test_auth_defaults_have_one_definition() -> None:
    """The dev issuer, audience and algorithm list are written once (gateway/config.py); the rest import them."""
    from gateway import config
    from gateway.auth import defaults, jwt_verify

    assert defaults.ISSUER is config.DEV_ISSUER and defaults.AUDIENCE is config.DEV_AUDIENCE
    assert defaults.ALGORITHMS is config.DEFAULT_ALGORITHMS is jwt_verify.DEFAULT_ALGORITHMS
    assert config.AuthConfig().algorithms is config.DEFAULT_ALGORITHMS
    for literal in (config.DEV_ISSUER, '"ES256", "ES384", "RS256"'):
        holders = [p.name for p in sorted((ROOT / "gateway").rglob("*.py")) if literal in p.read_text()]
        assert holders == ["config.py"], literal
