"""Test support for everything that needs a running gateway: a dev PKI, a repository of sealed models,
tokens (good and forged), and clients (tritonclient, requests) configured with real certificates.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from gateway.artifact.keys import load_recipient, load_signer
from gateway.artifact.sealed import seal_to_file
from gateway.auth import pki
from gateway.auth.tokens import mint_token
from gateway.config import Config, load_config
from gateway.release.client import GatewayTarget, ReleaseClient


@dataclass(frozen=True)
class Env:
    """A gateway's world on disk: certs/, models/, and the (frozen) config pointing at them."""

    root: Path
    certs: Path
    models: Path
    config: Config

    def with_config(self, **sections: Mapping[str, Any]) -> Env:
        """A copy whose config has these sections' fields changed and re-validated: `with_config(server={...})`."""
        return dataclasses.replace(self, config=self.config.replaced(**sections))

    @property
    def audit(self) -> Path:
        return self.root / "audit.log"

    def audit_lines(self, gateway: Any = None) -> list[dict[str, Any]]:
        """The audit log's records; with an in-process `gateway`, after writing what its recorder holds."""
        if gateway is not None:
            gateway.recorder.flush()
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines() if line.strip()]


def make_env(root: Path, grpc_port: int = 0, rest_port: int = 0) -> Env:
    """Write a dev PKI (and a second client), an empty repository and a config using loopback ports."""
    certs = root / "certs"
    pki.write_dev_pki(certs)
    pki.write_signing_keys(certs)
    pki.write_recipient_keys(certs)
    pki.write_jwt_issuer(certs)
    pki.add_client(certs, "other")
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    toml = root / "sealgate.toml"
    toml.write_text(
        f"""
[server]
grpc_address = "127.0.0.1:{grpc_port}"
rest_address = "127.0.0.1:{rest_port}"
metrics_address = "127.0.0.1:0"
max_message_bytes = 1048576
drain_seconds = 1.0

[repository]
path = "models"
poll_interval_s = 0.2

[audit]
path = "audit.log"
{_backend_section()}"""
    )
    return Env(root, certs, models, load_config(toml))


def _backend_section() -> str:
    """`[backend] isolation = ...` when SEALGATE_TEST_ISOLATION names one (to run a suite isolated); else nothing."""
    isolation = os.environ.get("SEALGATE_TEST_ISOLATION", "")
    return f'\n[backend]\nisolation = "{isolation}"\n' if isolation else ""


def seal_model(
    env: Env,
    name: str,
    version: int,
    files: dict[str, bytes] | Path,
    provenance: dict[str, Any] | None = None,
    out: Path | None = None,
    signer_key: Path | None = None,
    recipients: list[Path] | None = None,
) -> Path:
    """Seal `files` for the gateway, signed by the dev signing key; by default straight into the repository."""
    target = out or env.models / name / f"{version}.sealed"
    target.parent.mkdir(parents=True, exist_ok=True)
    seal_to_file(
        files,
        target,
        name=name,
        version=version,
        signer=load_signer(signer_key or env.certs / "signing.key"),
        recipients=[load_recipient(p) for p in (recipients or [env.certs / "gateway.pub"])],
        provenance=provenance,
    )
    return target


def token(env: Env, scopes: str = "infer:*", sub: str = "tester", ttl: int = 600, bind: Path | None = None) -> str:
    """A valid dev token."""
    cert = bind.read_bytes() if bind else None
    return mint_token(
        env.certs / "jwt-issuer.key", env.certs / "jwks.json", sub, scopes.split(), ttl=ttl, bind_cert=cert
    )


def release_target(env: Env, address: int | str, scopes: str, ttl: int = 600) -> GatewayTarget:
    """How the release client reaches a gateway (a loopback port, or "host:port") with the default client
    certificate and a token for `scopes`."""
    where = f"127.0.0.1:{address}" if isinstance(address, int) else address
    certs = env.certs
    return GatewayTarget(
        where, certs / "ca.pem", certs / "client.pem", certs / "client.key", token(env, scopes, ttl=ttl)
    )


def release_client(env: Env, address: int | str, scopes: str, timeout_s: float = 60.0) -> ReleaseClient:
    """The release client `sealgate push` uses, on `release_target(env, address, scopes)`."""
    return ReleaseClient(release_target(env, address, scopes), timeout_s=timeout_s)


def kid(env: Env) -> str:
    return json.loads((env.certs / "jwks.json").read_text())["keys"][0]["kid"]


def claims(env: Env, **override: Any) -> dict[str, Any]:
    now = int(time.time())
    doc = {
        "iss": env.config.auth.issuer,
        "aud": env.config.auth.audience,
        "sub": "tester",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "scope": "infer:*",
    }
    doc.update(override)
    return {k: v for k, v in doc.items() if v is not None}


def signed(env: Env, body: dict[str, Any], key: Path | None = None, **headers: Any) -> str:
    """A token signed with the issuer key (or `key`), with the given claims and extra headers."""
    pem = (key or env.certs / "jwt-issuer.key").read_bytes()
    private = serialization.load_pem_private_key(pem, password=None)
    hdr = {"kid": kid(env), "typ": "JWT"}
    hdr.update(headers)
    return jwt.encode(body, private, algorithm="ES256", headers=hdr)  # type: ignore[arg-type]


def b64(obj: Any) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forged_none(env: Env) -> str:
    """alg: none, no signature."""
    return f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': kid(env)})}.{b64(claims(env))}."


def forged_hs256_with_public_key(env: Env) -> str:
    """HS256 'signed' with the issuer's public key PEM as the HMAC secret (the classic confusion attack)."""
    import hashlib
    import hmac

    secret = (env.certs / "jwt-issuer.pub").read_bytes()
    head = b64({"alg": "HS256", "typ": "JWT", "kid": kid(env)})
    body = b64(claims(env))
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def altered_payload(env: Env) -> str:
    """A valid token whose payload was changed (scope widened) keeping the original signature."""
    good = signed(env, claims(env, scope="infer:nothing"))
    head, _, sig = good.split(".")
    return f"{head}.{b64(claims(env, scope='admin'))}.{sig}"


def triton(env: Env, port: int, client: str = "client", ssl_ca: Path | None = None) -> Any:
    """A stock tritonclient.grpc client over mTLS with the named client certificate (None: no cert)."""
    import tritonclient.grpc as grpcclient

    kwargs: dict[str, Any] = {"ssl": True, "root_certificates": str(ssl_ca or env.certs / "ca.pem")}
    if client is not None:
        kwargs["private_key"] = str(env.certs / f"{client}.key")
        kwargs["certificate_chain"] = str(env.certs / f"{client}.pem")
    return grpcclient.InferenceServerClient(f"127.0.0.1:{port}", **kwargs)
