"""sealgate's public Python API: seal, open and inspect sealed models, sign and verify model folders, push,
fetch, list and roll back through a gateway, load its configuration and serve it.

Everything named in `__all__` is the supported surface (README "Python API"); the modules below `gateway`
are internals that may change. `import gateway` loads only the standard library: each call imports what it
needs when it runs, and the types below resolve on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gateway._api import (
    Client,
    Fetched,
    ModelInfo,
    Pushed,
    RolledBack,
    VersionInfo,
    connect,
    inspect,
    load_config,
    open,
    seal,
    serve,
    sign,
    verify,
)
from gateway.errors import (
    ArtifactError,
    ConfigError,
    NotARecipient,
    SealgateError,
    SignatureError,
    TamperedArtifact,
    UntrustedSigner,
)

if TYPE_CHECKING:
    from gateway.artifact.envelope import Header
    from gateway.artifact.sealed import OpenedArtifact
    from gateway.config import Config
    from gateway.release.client import RemoteError

# public names whose modules are heavier (cryptography, gRPC): imported on first access
_LAZY = {
    "Config": "gateway.config",
    "Header": "gateway.artifact.envelope",
    "OpenedArtifact": "gateway.artifact.sealed",
    "RemoteError": "gateway.release.client",
}

__all__ = [
    "ArtifactError",
    "Client",
    "Config",
    "ConfigError",
    "Fetched",
    "Header",
    "ModelInfo",
    "NotARecipient",
    "OpenedArtifact",
    "Pushed",
    "RemoteError",
    "RolledBack",
    "SealgateError",
    "SignatureError",
    "TamperedArtifact",
    "UntrustedSigner",
    "VersionInfo",
    "connect",
    "inspect",
    "load_config",
    "open",
    "seal",
    "serve",
    "sign",
    "verify",
]


def __getattr__(name: str) -> Any:
    """Resolve a lazily exported type on first access (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names, the lazy ones included: what completion and `dir(gateway)` show."""
    return sorted(__all__)
