"""REST framing and slow clients (issue 10, findings 2, 8, 9, 11, 17): raw mTLS sockets against the real gateway.

Each refused request gets its status code and `Connection: close`, the connection is closed (nothing after
the refused head is read as a request: no smuggling), the refusal is audited and counted, nothing is served
for it, and a valid predict still works afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.server.app import GatewayThread
from tests import harness
from tests.security._rest import (
    IN,
    exchange,
    header,
    predict_ok,
    read_all,
    requests_counted,
    rest_env,
    statuses,
    tls_socket,
    wait_serving,
)

DEADLINE_S = 1.5


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> harness.Env:
    return rest_env(tmp_path_factory.mktemp("framing"), rest_request_timeout_s=DEADLINE_S)


@pytest.fixture(scope="module")
def gw(env: harness.Env) -> Iterator[Any]:
    with GatewayThread(env.config) as gateway:
        wait_serving(gateway)
        yield gateway


@pytest.fixture(scope="module")
def token(env: harness.Env) -> str:
    return harness.token(env)


def _head(token: str, *lines: str, method: str = "POST", target: str = "/v1/models/m:predict") -> bytes:
    """A request head with the given extra header lines (CRLF everywhere unless a line says otherwise)."""
    fields = [f"{method} {target} HTTP/1.1", "Host: localhost", f"Authorization: Bearer {token}", *lines]
    return ("\r\n".join(fields) + "\r\n\r\n").encode()


def _refusals(env: harness.Env, gw: Any, method: str) -> list[dict[str, Any]]:
    return [r for r in env.audit_lines(gw) if r["method"] == method and r["status"] != "OK"]


def _served(env: harness.Env, gw: Any) -> int:
    return sum(1 for r in env.audit_lines(gw) if r["status"] == "OK" and r["method"] != "metrics:Scrape")


BODY = b'{"instances": [[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]]}'
SMUGGLED = b"GET /v1/models/m HTTP/1.1\r\nHost: localhost\r\n\r\n"


@pytest.mark.parametrize(
    ("case", "lines", "body", "status"),
    [
        # finding 2: read(-1) read to EOF and skipped the body limit
        ("content-length -1", ["Content-Length: -1"], BODY + b" " * (2 << 20), 400),
        # finding 9: Python's int() reads "1_0" as 10, "+5" as 5; two values, first wins
        ("content-length 1_0", ["Content-Length: 1_0"], b"0123456789", 400),
        ("content-length +5", ["Content-Length: +5"], b"01234", 400),
        ("two content-lengths", [f"Content-Length: {len(BODY)}", "Content-Length: 5"], BODY, 400),
        ("content-length hex", ["Content-Length: 0x10"], BODY, 400),
        # finding 9: chunked was ignored, its data parsed as the next request (smuggling)
        (
            "chunked",
            ["Transfer-Encoding: chunked"],
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED),
            501,
        ),
        (
            "chunked beside content-length",
            [f"Content-Length: {len(BODY)}", "Transfer-Encoding: chunked"],
            BODY + SMUGGLED,
            501,
        ),
        ("transfer-encoding gzip", ["Transfer-Encoding: gzip"], BODY, 501),
        ("obs-fold", ["X-Folded: a", " b", f"Content-Length: {len(BODY)}"], BODY, 400),
        ("space before colon", [f"Content-Length : {len(BODY)}"], BODY, 400),
    ],
)
def test_malformed_framing_is_refused_and_closes(
    env: harness.Env, gw: Any, token: str, case: str, lines: list[str], body: bytes, status: int
) -> None:
    served = _served(env, gw)
    before = len(_refusals(env, gw, "rest:http-parse"))
    raw, closed = exchange(env, gw.rest_port, _head(token, *lines) + body + SMUGGLED)
    assert statuses(raw) == [status], (case, raw[:300])  # one answer: nothing after the head became a request
    assert header(raw, "connection") == "close" and closed, case
    assert b"predictions" not in raw and b"model_version_status" not in raw
    refused = _refusals(env, gw, "rest:http-parse")
    assert len(refused) == before + 1
    assert refused[-1]["status"] == ("UNIMPLEMENTED" if status == 501 else "INVALID_ARGUMENT")
    assert _served(env, gw) == served
    predict_ok(env, gw, token)


def test_bare_lf_head_is_refused(env: harness.Env, gw: Any, token: str) -> None:
    head = f"POST /v1/models/m:predict HTTP/1.1\nHost: localhost\nAuthorization: Bearer {token}\n"
    raw, closed = exchange(env, gw.rest_port, (head + f"Content-Length: {len(BODY)}\n\n").encode() + BODY)
    assert statuses(raw) == [400] and closed and b"CRLF" in raw
    predict_ok(env, gw, token)


def test_a_head_request_gets_its_answer_without_a_body(env: harness.Env, gw: Any, token: str) -> None:
    """HEAD is refused (405) with headers only: h11 will not frame a body for it, and the answer was dropped."""
    raw, closed = exchange(env, gw.rest_port, _head(token, method="HEAD", target="/v2/health/live"))
    assert statuses(raw) == [405] and closed, raw[:300]
    assert int(header(raw, "content-length") or 0) > 0 and raw.endswith(b"\r\n\r\n")  # the length, no body
    predict_ok(env, gw, token)


def test_http_version_other_than_1x_is_refused(env: harness.Env, gw: Any, token: str) -> None:
    raw, closed = exchange(env, gw.rest_port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert statuses(raw) == [505] and closed


def test_head_and_target_sizes_are_bounded(env: harness.Env, gw: Any, token: str) -> None:
    limits = env.config.server
    counted = requests_counted(gw, "rest", "http-parse", "RESOURCE_EXHAUSTED")
    long_target = "/v1/models/" + "m" * (limits.rest_max_target_bytes + 10) + ":predict"
    raw, closed = exchange(env, gw.rest_port, _head(token, "Content-Length: 2", target=long_target) + b"{}")
    assert statuses(raw) == [414] and closed
    big = [f"X-Pad-{i}: {'a' * 1000}" for i in range(limits.rest_max_header_bytes // 1000 + 2)]
    raw, closed = exchange(env, gw.rest_port, _head(token, *big, "Content-Length: 2") + b"{}")
    assert statuses(raw) == [431] and closed
    # a head that never ends is cut at the limit, not buffered: the refusal comes before the client stops
    with tls_socket(env, gw.rest_port) as sock:
        sock.sendall(_head(token)[:-2])
        try:
            for _ in range(64):
                sock.sendall(b"X-More: " + b"b" * 1000 + b"\r\n")
        except (ConnectionError, OSError):
            pass
        raw, closed = read_all(sock)
    assert statuses(raw) == [431] and closed
    codes = [r["status"] for r in _refusals(env, gw, "rest:http-parse")[-3:]]
    assert codes == ["RESOURCE_EXHAUSTED"] * 3
    assert requests_counted(gw, "rest", "http-parse", "RESOURCE_EXHAUSTED") == counted + 3
    predict_ok(env, gw, token)


def test_declared_length_over_the_limit_is_413_before_reading(env: harness.Env, gw: Any, token: str) -> None:
    limit = env.config.server.max_message_bytes
    raw, closed = exchange(env, gw.rest_port, _head(token, f"Content-Length: {limit + 1}") + BODY)
    assert statuses(raw) == [413] and closed
    assert _refusals(env, gw, "rest:Predict")[-1]["status"] == "RESOURCE_EXHAUSTED"
    predict_ok(env, gw, token)


def test_body_shorter_than_its_length_is_408_at_the_deadline(env: harness.Env, gw: Any, token: str) -> None:
    """Finding 8: a Content-Length larger than the body gave 500 after 30 s, holding a slot."""
    started = time.monotonic()
    with tls_socket(env, gw.rest_port) as sock:
        sock.sendall(_head(token, "Content-Length: 100") + BODY[:10])
        raw, closed = read_all(sock, timeout=DEADLINE_S + 5)
    elapsed = time.monotonic() - started
    assert statuses(raw) == [408] and closed and header(raw, "connection") == "close"
    assert DEADLINE_S - 0.2 <= elapsed <= DEADLINE_S + 2
    assert _refusals(env, gw, "rest:Predict")[-1]["status"] == "DEADLINE_EXCEEDED"
    predict_ok(env, gw, token)


def test_the_deadline_covers_a_dripped_head(env: harness.Env, gw: Any, token: str) -> None:
    """Finding 17: the old timeout was per read; one byte at a time kept a request alive forever."""
    head = _head(token, f"Content-Length: {len(BODY)}")
    started = time.monotonic()
    with tls_socket(env, gw.rest_port) as sock:
        try:
            for byte in head:
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
                if time.monotonic() - started > DEADLINE_S + 3:
                    break
        except (ConnectionError, OSError):
            pass
        raw, closed = read_all(sock, timeout=3)
    assert statuses(raw) == [408] and closed
    assert time.monotonic() - started < DEADLINE_S + 4
    assert _refusals(env, gw, "rest:http-parse")[-1]["status"] == "DEADLINE_EXCEEDED"


def test_keep_alive_serves_several_requests_in_order(env: harness.Env, gw: Any, token: str) -> None:
    one = _head(token, f"Content-Length: {len(BODY)}") + BODY
    status = _head(token, method="GET", target="/v1/models/m")
    raw, closed = exchange(
        env, gw.rest_port, one + status + one + _head(token, "Connection: close", "Content-Length: 0")
    )
    assert statuses(raw) == [200, 200, 200, 400] and closed
    assert raw.count(b"predictions") == 2 and b"model_version_status" in raw


@pytest.fixture()
def tight(tmp_path: Path) -> Iterator[tuple[harness.Env, Any]]:
    """A gateway whose slots and connections are few, with a short deadline."""
    env = rest_env(
        tmp_path,
        rest_request_timeout_s=DEADLINE_S,
        max_concurrent_requests=2,
        max_concurrent_per_peer=2,
        rest_max_connections=24,
        rest_max_connections_per_peer=8,
    )
    with GatewayThread(env.config) as gateway:
        wait_serving(gateway)
        yield env, gateway


def test_slow_bodies_hold_slots_no_longer_than_the_deadline(tight: tuple[harness.Env, Any]) -> None:
    """Finding 17: dripping bodies held every slot (429 for everyone for 40 s+)."""
    env, gw = tight
    token = harness.token(env)
    drippers = [tls_socket(env, gw.rest_port, "client-other") for _ in range(16)]
    stop = threading.Event()

    def drip() -> None:
        for sock in drippers:
            try:
                sock.sendall(_head(token, "Content-Length: 1000"))
            except (ConnectionError, OSError):
                pass
        while not stop.wait(0.2):
            for sock in drippers:
                try:
                    sock.sendall(b" ")
                except (ConnectionError, OSError):
                    pass

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        url = f"https://127.0.0.1:{gw.rest_port}/v1/models/m:predict"
        tls: dict[str, Any] = {
            "verify": str(env.certs / "ca.pem"),
            "cert": (str(env.certs / "client.pem"), str(env.certs / "client.key")),
            "headers": {"authorization": f"Bearer {token}"},
            "timeout": 30,
        }
        started = time.monotonic()
        codes = []
        while True:
            r = requests.post(url, json={"instances": [[0.5] * IN]}, **tls)
            codes.append(r.status_code)
            if r.status_code == 200:
                break
            assert r.status_code == 429, r.text
            assert time.monotonic() - started < DEADLINE_S + 2, "the slots were held past the request deadline"
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(5)
    answers = []
    for sock in drippers:
        raw, _ = read_all(sock, timeout=DEADLINE_S + 2)
        answers += statuses(raw)
        sock.close()
    # 8 connections per peer: 8 refused at once; of the 8 kept, 2 took the slots (2 per peer) and were cut at
    # the deadline, 6 found no slot (429) before their bodies were read
    assert answers.count(408) == 2 and answers.count(429) == 14, answers
    lines = env.audit_lines(gw)
    assert sum(1 for r in lines if r["method"] == "rest:connection" and r["status"] == "RESOURCE_EXHAUSTED") == 8
    assert sum(1 for r in lines if r["method"] == "rest:Predict" and r["status"] == "DEADLINE_EXCEEDED") == 2
    predict_ok(env, gw, token)


def test_connections_beyond_the_cap_are_closed_before_tls(tmp_path: Path) -> None:
    env = rest_env(tmp_path, rest_max_connections=12, rest_max_connections_per_peer=6, rest_request_timeout_s=20)
    token = harness.token(env)
    with GatewayThread(env.config) as gw:
        wait_serving(gw)
        held = [tls_socket(env, gw.rest_port, client) for client in ("client", "client-other") for _ in range(6)]
        with pytest.raises(OSError):  # the TCP connection is dropped before any TLS work
            with tls_socket(env, gw.rest_port) as extra:
                extra.sendall(_head(token, f"Content-Length: {len(BODY)}") + BODY)
                raw, _ = read_all(extra, timeout=3)
                assert raw == b""
                raise ConnectionResetError("closed without an answer")
        refused = [r for r in env.audit_lines(gw) if r["method"] == "rest:connection"]
        assert refused and all(r["status"] == "RESOURCE_EXHAUSTED" for r in refused)
        for sock in held:
            sock.close()
        deadline = time.time() + 10
        while True:  # the server notices the closed connections within moments
            try:
                predict_ok(env, gw, token)
                break
            except (OSError, requests.exceptions.ConnectionError):
                assert time.time() < deadline
                time.sleep(0.1)
