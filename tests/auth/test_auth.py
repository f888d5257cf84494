"""Auth end to end: minting and verifying tokens (and each way a token is refused, with its reason),
scope policy, certificate-bound tokens, the token cache and JWKS reload, the audit log, and real
gRPC / TLS servers on 127.0.0.1 with mutual TLS and certificate rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import os
import shutil
import socket
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import jwt
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth import (
    ANONYMOUS,
    AuditLog,
    Authorizer,
    Claims,
    TokenVerifier,
    authorize,
    bearer_token,
    cert_thumbprint,
    channel_credentials,
    check_binding,
    is_allowed,
    mint_token,
    peer_from_auth_context,
    peer_from_cert,
    peer_from_grpc_context,
    pki,
    server_credentials,
    ssl_context_for_rest,
)
from gateway.auth.audit import FIELDS, audit_line
from gateway.auth.jwt_verify import REASONS
from gateway.errors import ConfigError, PermissionDenied, SealgateError, Unauthenticated
from gateway.server.status_map import grpc_status

METHOD = "/test.Echo/Call"


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture()
def verifier(certs: Path) -> TokenVerifier:
    return TokenVerifier(certs / "jwks.json", issuer=pki.ISSUER, audience=pki.AUDIENCE)


def _mint(certs: Path, scopes: list[str] | str = "infer:ctr", **kw: Any) -> str:
    return mint_token(certs / "jwt-issuer.key", certs / "jwks.json", kw.pop("sub", "alice"), scopes, **kw)


def _kid(certs: Path) -> str:
    return json.loads((certs / "jwks.json").read_text())["keys"][0]["kid"]


def _issuer_key(certs: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key((certs / "jwt-issuer.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _claims(**override: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": pki.ISSUER, "aud": pki.AUDIENCE, "sub": "alice", "iat": now, "nbf": now, "exp": now + 600}
    base["scope"] = "infer:ctr"
    base.update(override)
    return {k: v for k, v in base.items() if v is not None}


def _signed(certs: Path, claims: dict[str, Any], **headers: Any) -> str:
    """An ES256 token signed by the real issuer key, with arbitrary claims and headers."""
    hdr = {"kid": _kid(certs), "typ": "JWT", **headers}
    return jwt.encode(claims, _issuer_key(certs), algorithm="ES256", headers=hdr)


def _b64(obj: Any) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _reason(verifier: TokenVerifier, token: str | None) -> str:
    with pytest.raises(Unauthenticated) as info:
        verifier.verify(token)
    assert info.value.reason in REASONS
    if token:
        assert token not in str(info.value)
    return info.value.reason


# --- minting and verifying ------------------------------------------------------------------------
def test_mint_verify_round_trip(certs: Path, verifier: TokenVerifier) -> None:
    token = _mint(certs, ["infer:ctr", "fetch:ctr"], ttl=120)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "typ": "JWT", "kid": _kid(certs)}
    claims = verifier.verify(token)
    assert isinstance(claims, Claims)
    assert claims.sub == "alice"
    assert claims.scopes == frozenset({"infer:ctr", "fetch:ctr"})
    assert claims.cnf_thumbprint is None
    assert set(claims.raw) == {"iss", "aud", "sub", "iat", "nbf", "exp", "jti", "scope"}
    assert claims.exp == claims.raw["iat"] + 120
    assert claims.raw["scope"] == "infer:ctr fetch:ctr"
    assert _mint(certs) != _mint(certs), "jti must make every token unique"


def test_mint_kid_options_agree(certs: Path) -> None:
    by_jwks = jwt.get_unverified_header(_mint(certs))["kid"]
    by_thumbprint = jwt.get_unverified_header(mint_token(certs / "jwt-issuer.key", None, "a", ["admin"]))["kid"]
    literal = jwt.get_unverified_header(mint_token(certs / "jwt-issuer.key", "my-kid", "a", ["admin"]))["kid"]
    assert by_jwks == by_thumbprint == _kid(certs)
    assert literal == "my-kid"


def test_mint_refuses_a_jwks_without_the_issuer_key(certs: Path, other_ca: Path) -> None:
    with pytest.raises(ConfigError, match="not in"):
        mint_token(certs / "jwt-issuer.key", other_ca / "jwks.json", "a", ["admin"])
    with pytest.raises(ConfigError):
        mint_token(certs / "jwt-issuer.key", None, "a", ["bad scope\x00"])
    with pytest.raises(ConfigError):
        mint_token(certs / "jwt-issuer.key", None, "a", ["admin"], ttl=0)


def test_no_token_is_missing(verifier: TokenVerifier) -> None:
    assert _reason(verifier, None) == "missing"
    assert _reason(verifier, "") == "missing"


@pytest.mark.parametrize("token", ["abc", "a.b.c", "eyJhbGciOiJFUzI1NiJ9.!!!.xx", "x" * 9000, "é.é.é"])
def test_malformed(verifier: TokenVerifier, token: str) -> None:
    assert _reason(verifier, token) == "malformed"


def test_expired_beyond_leeway_is_refused_within_leeway_accepted(certs: Path, verifier: TokenVerifier) -> None:
    now = int(time.time())
    late = _signed(certs, _claims(iat=now - 600, nbf=now - 600, exp=now - 60))
    assert _reason(verifier, late) == "expired"
    just = _signed(certs, _claims(iat=now - 600, nbf=now - 600, exp=now - 10))
    assert verifier.verify(just).sub == "alice"


def test_wrong_audience_and_issuer(certs: Path, verifier: TokenVerifier) -> None:
    assert _reason(verifier, _mint(certs, audience="someone-else")) == "audience"
    assert _reason(verifier, _mint(certs, issuer="https://evil.example")) == "issuer"


def test_alg_none_is_refused(certs: Path, verifier: TokenVerifier) -> None:
    token = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': _kid(certs)})}.{_b64(_claims())}."
    assert _reason(verifier, token) == "algorithm"


def test_hs256_with_the_public_key_as_secret_is_refused(certs: Path, verifier: TokenVerifier) -> None:
    secret = (certs / "jwt-issuer.pub").read_bytes()
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT', 'kid': _kid(certs)})}.{_b64(_claims(scope='admin'))}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    assert _reason(verifier, f"{signing_input}.{_b64(mac)}") == "algorithm"


def test_hs_algorithms_and_oct_keys_can_never_be_enabled(certs: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        TokenVerifier(certs / "jwks.json", pki.ISSUER, pki.AUDIENCE, algorithms=("ES256", "HS256"))
    with pytest.raises(ConfigError):
        TokenVerifier(certs / "jwks.json", pki.ISSUER, pki.AUDIENCE, algorithms=("none",))
    secret = b"0123456789abcdef0123456789abcdef"
    jwks = json.loads((certs / "jwks.json").read_text())
    jwks["keys"].append({"kty": "oct", "kid": "hs", "k": _b64(secret), "alg": "HS256"})
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    v = TokenVerifier(tmp_path / "jwks.json", pki.ISSUER, pki.AUDIENCE)
    assert v.key_ids == frozenset({_kid(certs)})
    token = jwt.encode(_claims(), secret, algorithm="HS256", headers={"kid": "hs"})
    assert _reason(v, token) == "algorithm"


def test_unknown_kid_and_wrong_key(certs: Path, other_ca: Path, verifier: TokenVerifier) -> None:
    foreign = mint_token(other_ca / "jwt-issuer.key", None, "alice", ["admin"])
    assert _reason(verifier, foreign) == "unknown_kid"
    no_kid = jwt.encode(_claims(), _issuer_key(certs), algorithm="ES256")
    assert _reason(verifier, no_kid) == "unknown_kid"
    other_key = serialization.load_pem_private_key((other_ca / "jwt-issuer.key").read_bytes(), password=None)
    impostor = jwt.encode(_claims(), other_key, algorithm="ES256", headers={"kid": _kid(certs)})
    assert _reason(verifier, impostor) == "signature"


def test_altered_payload_keeps_signature_but_fails(certs: Path, verifier: TokenVerifier) -> None:
    header, _, signature = _mint(certs, "infer:ctr").split(".")
    forged = f"{header}.{_b64(_claims(sub='mallory', scope='admin'))}.{signature}"
    assert _reason(verifier, forged) == "signature"


@pytest.mark.parametrize("missing", ["exp", "iat", "iss", "aud", "sub"])
def test_missing_required_claim(certs: Path, verifier: TokenVerifier, missing: str) -> None:
    assert _reason(verifier, _signed(certs, _claims(**{missing: None}))) == "claims"


def test_bad_headers_and_claim_types(certs: Path, verifier: TokenVerifier) -> None:
    assert _reason(verifier, _signed(certs, _claims(), typ="JWE")) == "malformed"
    assert _reason(verifier, _signed(certs, _claims(), crit=["exp"], exp=1)) == "malformed"
    assert _reason(verifier, _signed(certs, _claims(scope=["admin"]))) == "claims"
    assert _reason(verifier, _signed(certs, _claims(cnf={"jkt": "x"}))) == "claims"
    assert _reason(verifier, _signed(certs, _claims(nbf=int(time.time()) + 3600))) == "claims"
    assert verifier.verify(_signed(certs, _claims(), typ="at+jwt")).sub == "alice"


# --- policy ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scopes", "action", "model", "allowed"),
    [
        ({"infer:ctr"}, "infer", "ctr", True),
        ({"infer:ctr"}, "infer", "other", False),
        ({"infer:ctr"}, "fetch", "ctr", False),
        ({"infer:*"}, "infer", "anything", True),
        ({"infer:*"}, "fetch", "anything", False),
        ({"fetch:ctr", "release:ctr"}, "release", "ctr", True),
        ({"admin"}, "release", "ctr", True),
        ({"admin"}, "admin", "", True),
        ({"infer:*", "release:*"}, "admin", "", False),
        ({"*"}, "infer", "ctr", False),
        ({"infer:ct"}, "infer", "ctr", False),
    ],
)
def test_scope_policy(scopes: set[str], action: str, model: str, allowed: bool) -> None:
    claims = Claims(sub="a", scopes=frozenset(scopes), exp=0, cnf_thumbprint=None, raw={})
    assert is_allowed(claims.scopes, action, model) is allowed
    if allowed:
        authorize(claims, action, model)
    else:
        with pytest.raises(PermissionDenied, match="token lacks scope"):
            authorize(claims, action, model)


def test_policy_message_and_unknown_action() -> None:
    claims = Claims(sub="a", scopes=frozenset({"fetch:ctr"}), exp=0, cnf_thumbprint=None, raw={})
    with pytest.raises(PermissionDenied) as info:
        authorize(claims, "infer", "ctr")
    assert str(info.value) == "token lacks scope infer:ctr"
    assert grpc_status(info.value)[0] == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(ValueError):
        authorize(claims, "delete", "ctr")


# --- certificate binding and the authorizer -------------------------------------------------------
def test_cert_thumbprint_pem_and_der_agree(certs: Path) -> None:
    pem = (certs / "client.pem").read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    expected = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    assert cert_thumbprint(pem) == cert_thumbprint(der) == expected
    assert "=" not in expected and len(expected) == 43


def test_cnf_binding(certs: Path, verifier: TokenVerifier) -> None:
    client, edge = (certs / "client.pem").read_bytes(), (certs / "client-edge.pem").read_bytes()
    claims = verifier.verify(_mint(certs, bind_cert=client))
    assert claims.cnf_thumbprint == cert_thumbprint(client)
    check_binding(claims, peer_from_cert(client))
    with pytest.raises(PermissionDenied, match="another client certificate"):
        check_binding(claims, peer_from_cert(edge))
    with pytest.raises(PermissionDenied, match="none was presented"):
        check_binding(claims, ANONYMOUS)
    unbound = verifier.verify(_mint(certs))
    check_binding(unbound, peer_from_cert(edge))
    check_binding(unbound, ANONYMOUS)


def test_peer_identity_from_auth_context(certs: Path) -> None:
    pem = (certs / "client-edge.pem").read_bytes()
    ctx = {
        "transport_security_type": [b"ssl"],
        "x509_pem_cert": [pem],
        "x509_subject_alternative_name": [b"spiffe://sealgate.local/client/edge"],
        "peer_spiffe_id": [b"spiffe://sealgate.local/client/edge"],
    }
    peer = peer_from_auth_context(ctx)
    assert peer.spiffe_id == "spiffe://sealgate.local/client/edge"
    assert peer.subject == "CN=edge,O=sealgate"
    assert peer.thumbprint == cert_thumbprint(pem)
    assert peer_from_auth_context({"transport_security_type": [b"ssl"]}) == ANONYMOUS
    server = peer_from_cert((certs / "server.pem").read_bytes())
    assert server.spiffe_id is None and server.name == "CN=localhost,O=sealgate"


def test_bearer_token_parsing() -> None:
    assert bearer_token({"authorization": "Bearer abc.def.ghi"}) == "abc.def.ghi"
    assert bearer_token([("x", "1"), ("Authorization", b"bearer  tok ")]) == "tok"
    for bad, reason in [
        ({}, "missing"),
        ([("x-other", "Bearer t")], "missing"),
        ({"authorization": "Basic dXNlcjpwYXNz"}, "malformed"),
        ({"authorization": "Bearer"}, "malformed"),
        ({"authorization": "Bearer a b"}, "malformed"),
        ([("authorization", "Bearer a"), ("authorization", "Bearer b")], "malformed"),
    ]:
        with pytest.raises(Unauthenticated) as info:
            bearer_token(bad)  # type: ignore[arg-type]
        assert info.value.reason == reason, bad


def test_authorizer(certs: Path, verifier: TokenVerifier) -> None:
    auth = Authorizer(verifier)
    client_pem = (certs / "client.pem").read_bytes()
    peer = peer_from_cert(client_pem)
    token = _mint(certs, ["infer:ctr", "fetch:*"], bind_cert=client_pem)
    principal = auth.authorize([("authorization", f"Bearer {token}")], peer, "infer", "ctr")
    assert (principal.subject, principal.identity) == ("alice", "spiffe://sealgate.local/client/dev")
    assert principal.can("fetch", "any") and not principal.can("release", "ctr")
    with pytest.raises(PermissionDenied):
        auth.authorize({"authorization": f"Bearer {token}"}, peer, "infer", "other")
    with pytest.raises(PermissionDenied):
        auth.authorize({"authorization": f"Bearer {token}"}, ANONYMOUS, "infer", "ctr")
    with pytest.raises(Unauthenticated) as info:
        auth.authorize({}, peer, "infer", "ctr")
    assert info.value.reason == "missing"


def test_authorizer_memo_is_keyed_on_certificate_model_and_keys(certs: Path, other_ca: Path, tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    shutil.copy(certs / "jwks.json", jwks)
    v = TokenVerifier(jwks, pki.ISSUER, pki.AUDIENCE, reload_interval=0)
    auth = Authorizer(v)
    client_pem = (certs / "client.pem").read_bytes()
    peer, edge = peer_from_cert(client_pem), peer_from_cert((certs / "client-edge.pem").read_bytes())
    md = [("authorization", f"Bearer {_mint(certs, ['infer:ctr'], bind_cert=client_pem)}")]
    first = auth.authorize(md, peer, "infer", "ctr")
    for _ in range(3):
        assert auth.authorize(md, peer, "infer", "ctr") is first
    assert (v.stats.verifications, v.stats.hits) == (1, 0), "repeat grants come from the memo"
    with pytest.raises(PermissionDenied) as denied:
        auth.authorize(md, edge, "infer", "ctr")
    assert denied.value.reason == "binding", "a grant over one certificate is not one over another"
    with pytest.raises(PermissionDenied) as denied:
        auth.authorize(md, peer, "infer", "other")
    assert denied.value.reason == "scope"
    staged = tmp_path / "jwks.new"
    shutil.copy(other_ca / "jwks.json", staged)
    os.replace(staged, jwks)
    with pytest.raises(Unauthenticated) as info:
        auth.authorize(md, peer, "infer", "ctr")
    assert info.value.reason == "unknown_kid", "a key removed from the JWKS ends its memoized grants"


def test_authorizer_memo_ends_at_expiry(certs: Path) -> None:
    auth = Authorizer(TokenVerifier(certs / "jwks.json", pki.ISSUER, pki.AUDIENCE, leeway=0))
    peer = peer_from_cert((certs / "client.pem").read_bytes())
    token = _mint(certs, ttl=2)
    md = {"authorization": f"Bearer {token}"}
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert auth.authorize(md, peer, "infer", "ctr").subject == "alice"
    time.sleep(max(0.0, exp - time.time()) + 0.2)
    with pytest.raises(Unauthenticated) as info:
        auth.authorize(md, peer, "infer", "ctr")
    assert info.value.reason == "expired"


# --- cache and JWKS reload ------------------------------------------------------------------------
def test_cache_hit_does_not_reverify(certs: Path, verifier: TokenVerifier) -> None:
    token = _mint(certs)
    first = verifier.verify(token)
    for _ in range(50):
        assert verifier.verify(token) is first
    assert verifier.stats.verifications == 1
    assert verifier.stats.hits == 50
    verifier.verify(_mint(certs))
    assert verifier.stats.verifications == 2


def test_refusals_are_not_cached(certs: Path, verifier: TokenVerifier) -> None:
    bad = _mint(certs, audience="x")
    for _ in range(3):
        _reason(verifier, bad)
    assert verifier.stats.verifications == 3 and verifier.stats.hits == 0


def test_cache_expiry_evicts(certs: Path) -> None:
    v = TokenVerifier(certs / "jwks.json", pki.ISSUER, pki.AUDIENCE, leeway=0)
    token = _mint(certs, ttl=2)
    exp = v.verify(token).exp
    assert v.verify(token).exp == exp and v.stats.hits == 1
    time.sleep(max(0.0, exp - time.time()) + 0.2)
    assert _reason(v, token) == "expired"
    assert v.stats.verifications == 2 and v.stats.hits == 1


def test_cache_is_bounded(certs: Path) -> None:
    v = TokenVerifier(certs / "jwks.json", pki.ISSUER, pki.AUDIENCE, cache_size=10)
    tokens = [_mint(certs, sub=f"u{i}") for i in range(30)]
    for t in tokens:
        v.verify(t)
    assert v.cache_entries <= 10
    assert v.verify(tokens[-1]).sub == "u29" and v.stats.hits == 1


def test_jwks_reload_on_file_change(certs: Path, other_ca: Path, tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    shutil.copy(certs / "jwks.json", jwks)
    v = TokenVerifier(jwks, pki.ISSUER, pki.AUDIENCE, reload_interval=0)
    old, new = _mint(certs), mint_token(other_ca / "jwt-issuer.key", None, "bob", ["admin"])
    assert v.verify(old).sub == "alice"
    assert _reason(v, new) == "unknown_kid"
    staged = tmp_path / "jwks.new"
    shutil.copy(other_ca / "jwks.json", staged)
    os.replace(staged, jwks)
    assert v.verify(new).sub == "bob"
    assert _reason(v, old) == "unknown_kid", "the cached token of a removed key must be forgotten"
    assert v.stats.reloads == 1
    jwks.write_text("{ not json")
    assert v.verify(new).sub == "bob", "a broken JWKS keeps the last good keys"
    assert v.stats.reloads == 1


def test_jwks_checked_at_most_once_per_interval(certs: Path, other_ca: Path, tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    shutil.copy(certs / "jwks.json", jwks)
    v = TokenVerifier(jwks, pki.ISSUER, pki.AUDIENCE, reload_interval=30)
    shutil.copy(other_ca / "jwks.json", jwks)
    new = mint_token(other_ca / "jwt-issuer.key", None, "bob", ["admin"])
    assert _reason(v, new) == "unknown_kid"
    assert v.reload() is True
    assert v.verify(new).sub == "bob"


def test_hot_path_is_cheap(certs: Path, verifier: TokenVerifier) -> None:
    token = _mint(certs)
    verifier.verify(token)
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        verifier.verify(token)
    per_call_us = (time.perf_counter() - start) / n * 1e6
    print(f"cached verify: {per_call_us:.2f} µs/call")
    assert per_call_us < 50


# --- audit ----------------------------------------------------------------------------------------
def test_audit_lines_are_json_with_allowed_fields_and_no_token(certs: Path, tmp_path: Path) -> None:
    token = _mint(certs)
    path = tmp_path / "audit.log"
    with AuditLog(path) as log:
        log.record(
            subject="alice",
            identity="spiffe://sealgate.local/client/dev",
            method="/inference.GRPCInferenceService/ModelInfer",
            model="ctr",
            version=3,
            status=grpc.StatusCode.OK,
            latency_ms=1.23456,
        )
        log.record(
            subject=token,
            identity=None,
            method="ModelInfer",
            model=np.zeros((4, 4), dtype=np.float32),  # type: ignore[arg-type]
            version=None,
            status="unauthenticated",
            latency_ms=float("nan"),
            reason=f"bad token Bearer {token} " + "A" * 200,
        )
        log.record(
            subject="x",
            identity="y",
            method="m",
            model=[1.0, 2.0],
            version=b"raw",
            status="bogus",  # type: ignore[arg-type]
            latency_ms=0,
            reason="x" * 1000,
        )
    text = path.read_text()
    assert token not in text and token.split(".")[1] not in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 3
    for entry in lines:
        assert set(entry) <= set(FIELDS)
        assert entry["time"].endswith("Z") and "T" in entry["time"]
    first, second, third = lines
    assert first["status"] == "OK" and first["version"] == "3" and first["latency_ms"] == 1.235
    assert first["identity"] == "spiffe://sealgate.local/client/dev"
    assert "reason" not in first
    assert second["subject"] == "[redacted]" and second["model"] == "[redacted]"
    assert second["status"] == "UNAUTHENTICATED" and second["latency_ms"] is None
    assert "[redacted]" in second["reason"] and "AAAA" * 30 not in second["reason"]
    assert third["model"] == "[redacted]" and third["version"] == "[redacted]" and third["status"] == "UNKNOWN"
    assert len(third["reason"]) <= 260


_texts = st.one_of(st.none(), st.text(max_size=300), st.integers(), st.booleans())


@settings(max_examples=300, deadline=None)
@given(subject=_texts, identity=_texts, model=_texts, version=_texts, reason=st.one_of(st.none(), st.text()))
def test_audit_line_is_canonical_json_whatever_the_values(
    subject: Any, identity: Any, model: Any, version: Any, reason: Any
) -> None:
    fields = {"subject": subject, "identity": identity, "method": "grpc:ModelInfer", "model": model}
    first = audit_line(**fields, version=version, status="OK", latency_ms=1.5, reason=reason, at=0.0)
    again = audit_line(**fields, version=version, status="OK", latency_ms=1.5, reason=reason, at=0.0)
    assert first == again, "the cached part gives the same line"
    entry = json.loads(first)
    assert first == json.dumps(entry, ensure_ascii=True, separators=(",", ":")) + "\n"
    assert list(entry) == [f for f in FIELDS if f != "reason" or reason is not None]
    assert entry["time"] == "1970-01-01T00:00:00.000Z" and entry["latency_ms"] == 1.5
    for name, value in (("subject", subject), ("identity", identity), ("model", model), ("version", version)):
        if value is None:
            assert entry[name] is None
        elif isinstance(value, bool):
            assert entry[name] == "[redacted]", "a bool is not a name (and must not share a cache entry with 1)"
        else:
            assert len(entry[name]) <= 259


def test_audit_keeps_ordinary_text(tmp_path: Path) -> None:
    stream = io.StringIO()
    AuditLog(stream=stream).record(
        subject="svc-a",
        identity="CN=edge,O=sealgate",
        method="/sealgate.v1.Release/Fetch",
        model="resnet50-int8.v2",
        version="7",
        status=grpc.StatusCode.UNAUTHENTICATED,
        latency_ms=12,
        reason="missing bearer token",
    )
    entry = json.loads(stream.getvalue())
    assert entry["reason"] == "missing bearer token" and entry["model"] == "resnet50-int8.v2"
    assert entry["identity"] == "CN=edge,O=sealgate" and entry["latency_ms"] == 12.0


def test_audit_rejects_unknown_fields(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "a.log") as log, pytest.raises(TypeError):
        log.record(  # type: ignore[call-arg]
            subject="a", identity=None, method="m", model="x", version=1, status="OK", latency_ms=1, jwt="t"
        )
    assert (tmp_path / "a.log").read_text() == ""


def test_audit_is_thread_safe_and_cheap(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    per_thread = 1000

    def work(i: int) -> None:
        for j in range(per_thread):
            log.record(subject=f"s{i}", identity="id", method="/m", model="ctr", version=j, status="OK", latency_ms=0.5)

    start = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    per_line_us = (time.perf_counter() - start) / (4 * per_thread) * 1e6
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 4 * per_thread
    assert all(json.loads(line)["model"] == "ctr" for line in lines)
    print(f"audit: {per_line_us:.1f} µs/line")
    assert per_line_us < 200


# --- real gRPC server with mTLS -------------------------------------------------------------------
class _Server:
    """A gRPC server on 127.0.0.1 whose one method runs the Authorizer inside the handler."""

    def __init__(self, tls_dir: Path, verifier: TokenVerifier) -> None:
        self.authorizer = Authorizer(verifier)
        handler = grpc.method_handlers_generic_handler(
            "test.Echo", {"Call": grpc.unary_unary_rpc_method_handler(self._call)}
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((handler,))
        creds = server_credentials(tls_dir / "ca.pem", tls_dir / "server.pem", tls_dir / "server.key")
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.server.start()

    def _call(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            peer = peer_from_grpc_context(context)
            principal = self.authorizer.authorize(context.invocation_metadata(), peer, "infer", "ctr")
        except SealgateError as exc:
            context.abort(*grpc_status(exc))
        return json.dumps({"sub": principal.subject, "identity": principal.identity}).encode()


@pytest.fixture()
def tls_dir(certs: Path, tmp_path: Path) -> Path:
    """The server's own copy of ca.pem/server.pem/server.key, which a test may rotate."""
    d = tmp_path / "tls"
    d.mkdir()
    for name in ("ca.pem", "server.pem", "server.key"):
        shutil.copy(certs / name, d / name)
    return d


@pytest.fixture()
def server(tls_dir: Path, verifier: TokenVerifier) -> Iterator[_Server]:
    s = _Server(tls_dir, verifier)
    yield s
    s.server.stop(grace=None)


def _call(port: int, ca: Path, cert: Path | None, key: Path | None, token: str | None) -> dict[str, Any]:
    creds = channel_credentials(ca, cert, key)
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=options) as channel:
        stub = channel.unary_unary(METHOD)
        md = (("authorization", f"Bearer {token}"),) if token else ()
        return json.loads(stub(b"", metadata=md, timeout=10))


def _code(fn: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code()


def test_grpc_mtls_with_dev_client(certs: Path, server: _Server) -> None:
    token = _mint(certs, bind_cert=(certs / "client.pem").read_bytes())
    reply = _call(server.port, certs / "ca.pem", certs / "client.pem", certs / "client.key", token)
    assert reply == {"sub": "alice", "identity": "spiffe://sealgate.local/client/dev"}
    edge = (certs / "client-edge.pem", certs / "client-edge.key")
    assert _code(lambda: _call(server.port, certs / "ca.pem", *edge, token)) == grpc.StatusCode.PERMISSION_DENIED
    assert _call(server.port, certs / "ca.pem", *edge, _mint(certs))["identity"].endswith("/client/edge")
    client = (certs / "client.pem", certs / "client.key")
    assert _code(lambda: _call(server.port, certs / "ca.pem", *client, None)) == grpc.StatusCode.UNAUTHENTICATED
    no_scope = _mint(certs, "fetch:ctr")
    assert _code(lambda: _call(server.port, certs / "ca.pem", *client, no_scope)) == grpc.StatusCode.PERMISSION_DENIED


def test_grpc_client_without_certificate_fails_handshake(certs: Path, server: _Server) -> None:
    token = _mint(certs)
    assert _code(lambda: _call(server.port, certs / "ca.pem", None, None, token)) == grpc.StatusCode.UNAVAILABLE


def test_grpc_client_certificate_from_another_ca_fails(certs: Path, other_ca: Path, server: _Server) -> None:
    token = _mint(certs)
    foreign = (other_ca / "client.pem", other_ca / "client.key")
    assert _code(lambda: _call(server.port, certs / "ca.pem", *foreign, token)) == grpc.StatusCode.UNAVAILABLE


def _presented_cert(port: int, ca: Path, cert: Path, key: Path) -> bytes:
    """The DER certificate a TLS server presents on a new connection (with a client certificate)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def _der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER)


def _rotate(tls_dir: Path, source: Path) -> None:
    """Replace the server's CA, certificate and key the way a deployment would: rename into place."""
    for name in ("server.key", "server.pem", "ca.pem"):
        staged = tls_dir / f".{name}.new"
        shutil.copy(source / name, staged)
        os.replace(staged, tls_dir / name)


def test_grpc_certificate_reload(certs: Path, other_ca: Path, tls_dir: Path, server: _Server) -> None:
    client = (certs / "client.pem", certs / "client.key")
    assert _presented_cert(server.port, certs / "ca.pem", *client) == _der(certs / "server.pem")
    assert _call(server.port, certs / "ca.pem", *client, _mint(certs))["sub"] == "alice"
    _rotate(tls_dir, other_ca)
    other_client = (other_ca / "client.pem", other_ca / "client.key")
    assert _presented_cert(server.port, other_ca / "ca.pem", *other_client) == _der(other_ca / "server.pem")
    reply = _call(server.port, other_ca / "ca.pem", *other_client, _mint(certs))
    assert reply["identity"] == "spiffe://sealgate.local/client/dev"
    assert _code(lambda: _call(server.port, certs / "ca.pem", *client, _mint(certs))) == grpc.StatusCode.UNAVAILABLE


def test_grpc_keeps_serving_when_the_new_files_do_not_match(
    certs: Path, other_ca: Path, tls_dir: Path, server: _Server, caplog: pytest.LogCaptureFixture
) -> None:
    staged = tls_dir / ".server.key.new"
    shutil.copy(other_ca / "server.key", staged)
    os.replace(staged, tls_dir / "server.key")  # key rotated, certificate not (yet): inconsistent
    client = (certs / "client.pem", certs / "client.key")
    with caplog.at_level(logging.WARNING, logger="gateway.auth.tls"):
        assert _call(server.port, certs / "ca.pem", *client, _mint(certs))["sub"] == "alice"
    assert "unusable" in caplog.text
    assert _presented_cert(server.port, certs / "ca.pem", *client) == _der(certs / "server.pem")


def test_server_credentials_refuse_unusable_files(certs: Path, other_ca: Path) -> None:
    with pytest.raises(ConfigError):
        server_credentials(certs / "ca.pem", certs / "server.pem", other_ca / "server.key")
    with pytest.raises(ConfigError):
        server_credentials(certs / "ca.pem", certs / "missing.pem", certs / "server.key")


# --- REST TLS context -----------------------------------------------------------------------------
class _TlsEcho:
    """A TLS server on 127.0.0.1 using ssl_context_for_rest that answers with the client's SPIFFE ID."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    peer = peer_from_cert(tls.getpeercert(binary_form=True))
                    tls.sendall((peer.spiffe_id or "-").encode())
            except (OSError, ssl.SSLError):
                conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def _rest_get(port: int, ca: Path, cert: Path | None, key: Path | None) -> tuple[bytes, bytes]:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True) or b""
        return tls.recv(1024), der


def test_rest_context_requires_client_cert_and_reloads(certs: Path, other_ca: Path, tls_dir: Path) -> None:
    ctx = ssl_context_for_rest(tls_dir / "ca.pem", tls_dir / "server.pem", tls_dir / "server.key")
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    echo = _TlsEcho(ctx)
    try:
        body, der = _rest_get(echo.port, certs / "ca.pem", certs / "client.pem", certs / "client.key")
        assert body == b"spiffe://sealgate.local/client/dev" and der == _der(certs / "server.pem")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            body, _ = _rest_get(echo.port, certs / "ca.pem", None, None)
            if not body:
                raise ConnectionError("closed without an answer")
        _rotate(tls_dir, other_ca)
        body, der = _rest_get(echo.port, other_ca / "ca.pem", other_ca / "client.pem", other_ca / "client.key")
        assert body == b"spiffe://sealgate.local/client/dev" and der == _der(other_ca / "server.pem")
        with pytest.raises(ssl.SSLError):
            _rest_get(echo.port, certs / "ca.pem", certs / "client.pem", certs / "client.key")
    finally:
        echo.close()
