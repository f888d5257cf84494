"""Keys from a JWKS URL: fetched over HTTPS from a real server on loopback, verified against a CA, rotated
in the background when a token names a new kid, and refused when the URL cannot be trusted."""

from __future__ import annotations

import http.server
import shutil
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from gateway.auth import TokenVerifier, jwt_verify, mint_token, pki
from gateway.errors import ConfigError, Unauthenticated
from gateway.server.app import GatewayThread
from tests import harness
from tests.models import make_onnx_mlp


class JwksServer:
    """An HTTPS server on 127.0.0.1 serving whatever `body` and `status` say, counting requests."""

    def __init__(self, certs: Path) -> None:
        self.body = (certs / "jwks.json").read_bytes()
        self.status = 200
        self.location = ""
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                self.send_response(outer.status)
                if outer.location:
                    self.send_header("Location", outer.location)
                self.send_header("Content-Type", "application/jwk-set+json")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certs / "server.pem", certs / "server.key")
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server(certs: Path) -> Iterator[JwksServer]:
    s = JwksServer(certs)
    yield s
    s.close()


def _verifier(server: JwksServer, certs: Path, **kw: Any) -> TokenVerifier:
    return TokenVerifier(None, pki.ISSUER, pki.AUDIENCE, jwks_url=server.url, jwks_ca=certs / "ca.pem", **kw)


def _mint(issuer_dir: Path, sub: str = "alice") -> str:
    return mint_token(issuer_dir / "jwt-issuer.key", issuer_dir / "jwks.json", sub, ["infer:*"])


def _reason(v: TokenVerifier, token: str) -> str:
    with pytest.raises(Unauthenticated) as info:
        v.verify(token)
    return info.value.reason


def test_keys_from_url_and_rotation_on_unknown_kid(
    certs: Path, other_ca: Path, server: JwksServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    v = _verifier(server, certs)
    old, new = _mint(certs), _mint(other_ca, "bob")
    assert v.verify(old).sub == "alice"
    assert server.requests == 1
    for _ in range(3):
        assert v.verify(old).sub == "alice"
    assert server.requests == 1, "verification never fetches on the request path"

    server.body = (other_ca / "jwks.json").read_bytes()  # the issuer rotates its key
    monkeypatch.setattr(jwt_verify, "MIN_KID_REFRESH_S", 0.0)
    deadline = time.time() + 10
    while True:
        try:
            assert v.verify(new).sub == "bob"
            break
        except Unauthenticated as exc:
            assert exc.reason == "unknown_kid"  # refused at once, while the fetch runs in the background
            assert time.time() < deadline, "the new key was never fetched"
            time.sleep(0.05)
    assert v.stats.reloads == 1 and server.requests >= 2
    assert _reason(v, old) == "unknown_kid", "the removed key's cached tokens are forgotten"


def test_periodic_refresh_keeps_the_last_good_keys(certs: Path, server: JwksServer) -> None:
    v = _verifier(server, certs, reload_interval=0)
    token = _mint(certs)
    assert v.verify(token).sub == "alice"
    server.body = b"{ not json"
    assert v.reload() is False, "a broken key set is not loaded"
    server.status, server.body = 503, b"down"
    assert v.reload() is False
    assert v.verify(token).sub == "alice", "the last good keys stay"


def test_untrusted_or_unsafe_urls_are_refused(certs: Path, other_ca: Path, server: JwksServer) -> None:
    with pytest.raises(ConfigError, match="https"):
        TokenVerifier(None, pki.ISSUER, pki.AUDIENCE, jwks_url=server.url.replace("https", "http"))
    with pytest.raises(ConfigError, match="cannot fetch JWKS"):  # the server's certificate is from another CA
        TokenVerifier(None, pki.ISSUER, pki.AUDIENCE, jwks_url=server.url, jwks_ca=other_ca / "ca.pem")
    server.status, server.location = 302, "http://127.0.0.1:1/jwks.json"
    with pytest.raises(ConfigError, match="redirect"):
        _verifier(server, certs)
    server.status, server.location = 404, ""
    with pytest.raises(ConfigError, match="cannot fetch JWKS"):
        _verifier(server, certs)
    server.status, server.body = 200, b'{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "hs"}]}'
    with pytest.raises(ConfigError, match="no usable signature key"):
        _verifier(server, certs)


def test_gateway_serves_with_keys_from_a_url(tmp_path: Path) -> None:
    env = harness.make_env(tmp_path)
    harness.seal_model(env, "m", 1, make_onnx_mlp(8, (8,), 1, seed=1))
    jwks = JwksServer(env.certs)
    try:
        moved = tmp_path / "jwks-not-used.json"
        shutil.move(env.certs / "jwks.json", moved)  # the file is gone: keys can only come from the URL
        env = env.with_config(auth={"jwks_url": jwks.url, "jwks_ca": str(env.certs / "ca.pem")})
        with GatewayThread(env.config) as gw, harness.triton(env, gw.grpc_port) as client:
            inp = grpcclient.InferInput("input", [1, 8], "FP32")
            inp.set_data_from_numpy(np.ones((1, 8), np.float32))
            token = mint_token(env.certs / "jwt-issuer.key", moved, "tester", ["infer:m"])
            out = client.infer("m", [inp], headers={"authorization": f"Bearer {token}"})
            assert out.as_numpy("output").shape == (1, 1)
        assert jwks.requests >= 1
    finally:
        jwks.close()
