"""Machine-readable CLI output: one JSON document per command on stdout, and the versions `--version` reports.

Protobuf answers are turned into plain JSON by walking their descriptors (field names as in the .proto, enums by
name, 64-bit integers as numbers, every field present), so scripts read the same keys the protocol documents.
"""

from __future__ import annotations

import json
import sys
from importlib import metadata
from typing import Any

# the distributions whose versions `sealgate --version` reports beside sealgate's own
COMPONENTS = ("grpcio", "onnxruntime", "protobuf", "cryptography")
PROTOCOLS = {"inference": "Open Inference Protocol v2 (KServe v2)", "release": "sealgate.v1"}


def emit(doc: Any) -> None:
    """Print `doc` as exactly one line of JSON on stdout (ASCII only, so no terminal escape survives)."""
    sys.stdout.write(json.dumps(doc, ensure_ascii=True, sort_keys=False, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def proto_to_dict(message: Any) -> dict[str, Any]:
    """Every field of a protobuf message as JSON values: nested messages as objects, enums by name, maps as objects.

    A field with explicit presence (`optional`) that is unset is null, so "not recorded" differs from zero.
    """
    doc: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            doc[field.name] = {str(k): _scalar(value_field, v) for k, v in value.items()}
        elif field.is_repeated:
            doc[field.name] = [_scalar(field, v) for v in value]
        elif field.has_presence and field.message_type is None and not message.HasField(field.name):
            doc[field.name] = None
        else:
            doc[field.name] = _scalar(field, value)
    return doc


def _scalar(field: Any, value: Any) -> Any:
    """One value of `field`: a nested message as a dict, an enum as its name, bytes as hex, the rest as is."""
    if field.message_type is not None:
        return proto_to_dict(value)
    if field.enum_type is not None:
        named = field.enum_type.values_by_number.get(value)
        return named.name if named is not None else value
    if isinstance(value, bytes):
        return value.hex()
    return value


def installed(name: str) -> str | None:
    """The installed version of distribution `name`, or None (read from its metadata: nothing is imported)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def version_info() -> dict[str, Any]:
    """sealgate's version, the versions of the runtimes it serves with, and the protocols it speaks."""
    return {
        "sealgate": installed("sealgate") or "unknown",
        "python": ".".join(map(str, sys.version_info[:3])),
        "components": {name: installed(name) for name in COMPONENTS},
        "protocols": dict(PROTOCOLS),
    }


def version_line(info: dict[str, Any]) -> str:
    """`version_info` as the one line `sealgate --version` prints."""
    parts = [f"{name} {ver}" for name, ver in info["components"].items() if ver]
    return f"sealgate {info['sealgate']} (python {info['python']}; {', '.join(parts)})"


def token_claims(token: str) -> dict[str, Any]:
    """The claims `sealgate token --json` shows beside the token: subject, scopes, issue and expiry times.

    Read from the token just minted (its signature is ours), so nothing is verified here.
    """
    import jwt

    claims = jwt.decode(token, options={"verify_signature": False})
    return {
        "sub": claims.get("sub"),
        "scope": str(claims.get("scope", "")).split(),
        "iat": claims.get("iat"),
        "exp": claims.get("exp"),
        "bound": "cnf" in claims,
    }
