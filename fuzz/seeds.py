"""Write the seed corpus: valid inputs for each harness and every reproduction of issue 10 that reaches a parser.

`python -m fuzz.seeds [target ...]` (re)writes fuzz/corpus/<target>/seed-*; files the fuzzer added under
other names are left alone. Seeds are named after what they reproduce, so a failing replay says which
finding came back. The keys used for signed seeds are the fixed fuzzing keys of fuzz/keys.py.
"""

from __future__ import annotations

import argparse
import base64
import json
import struct
from collections.abc import Callable
from pathlib import Path

from fuzz.common import CORPUS_ROOT

Seeds = dict[str, bytes]


# --- tensors: mode byte 0 + a serialized ModelInferRequest --------------------------------------------


def _bogus_token(header: dict[str, object], payload: dict[str, object], signature: bytes) -> bytes:
    """A JWT-shaped input with no valid signature, built here rather than kept as a literal token."""
    parts = [json.dumps(header, separators=(",", ":")).encode(), json.dumps(payload, separators=(",", ":")).encode()]
    return b".".join(base64.urlsafe_b64encode(part).rstrip(b"=") for part in [*parts, signature])


def _request(inputs: list[tuple[str, str, list[int]]], raw: list[bytes] | None = None, typed: object = None) -> bytes:
    from gateway.protos.inference import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name="mlp")
    for name, datatype, shape in inputs:
        tensor = request.inputs.add(name=name, datatype=datatype)
        tensor.shape.extend(shape)
        if callable(typed):
            typed(tensor)
    if raw is not None:
        request.raw_input_contents.extend(raw)
    return b"\x00" + request.SerializeToString()


def _framed(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def tensor_seeds() -> Seeds:
    """Valid raw and typed requests of each kind, and the decoder's findings (3, 12) and near misses."""
    f32 = struct.pack("<64f", *([0.5] * 64))
    return {
        "seed-valid-fp32-raw": _request([("input", "FP32", [1, 64])], [f32]),
        "seed-valid-fp32-typed": _request(
            [("input", "FP32", [1, 4])], typed=lambda t: t.contents.fp32_contents.extend([1, 2, 3, 4])
        ),
        "seed-valid-int64-typed": _request(
            [("index", "INT64", [3])], typed=lambda t: t.contents.int64_contents.extend([0, -1, 2])
        ),
        "seed-valid-bool-raw": _request([("flag", "BOOL", [2])], [b"\x01\x00"]),
        "seed-valid-fp16-raw": _request([("h", "FP16", [2, 2])], [b"\x00\x3c" * 4]),
        "seed-valid-bytes-raw": _request([("text", "BYTES", [2])], [_framed(b"hello", b"")]),
        "seed-valid-bytes-typed": _request(
            [("text", "BYTES", [2])], typed=lambda t: t.contents.bytes_contents.extend([b"a", b"bc"])
        ),
        "seed-valid-two-inputs": _request([("a", "FP32", [1, 2]), ("b", "INT32", [2])], [b"\0" * 8, b"\1" * 8]),
        "seed-valid-empty": _request([("input", "FP32", [0, 64])], [b""]),
        # finding 3: allocation before validation, BYTES [268435456] with 4 bytes of data
        "seed-finding03-bytes-268435456-4-bytes": _request([("text", "BYTES", [268435456])], [b"\0\0\0\0"]),
        "seed-finding03-bytes-268435456-typed": _request(
            [("text", "BYTES", [268435456])], typed=lambda t: t.contents.bytes_contents.append(b"x")
        ),
        "seed-finding03-fp32-max-elements": _request([("input", "FP32", [1 << 14, 1 << 14])], [b"\0" * 4]),
        "seed-huge-shape-overflow": _request([("input", "FP32", [1 << 62, 1 << 62, 1 << 62])], [b""]),
        # found by this fuzzer: a zero dimension beside huge ones passes the element count, numpy's reshape raises
        "seed-fuzz-zero-dim-beside-huge-dims": _request([("input", "FP32", [1 << 62, 0, 1 << 62])], [b""]),
        # found by this fuzzer: typed int_contents outside INT8/INT16/UINT8/UINT16 -> numpy OverflowError
        "seed-fuzz-typed-int8-out-of-range": _request(
            [("input", "INT8", [2])], typed=lambda t: t.contents.int_contents.extend([300, -1711076864])
        ),
        "seed-fuzz-typed-uint8-above-255": _request(
            [("input", "UINT8", [1])], typed=lambda t: t.contents.uint_contents.append(256)
        ),
        "seed-negative-dimension": _request([("input", "FP32", [-1, 64])], [f32]),
        "seed-bytes-length-past-end": _request([("text", "BYTES", [1])], [struct.pack("<I", 0xFFFFFFFF) + b"ab"]),
        "seed-bytes-trailing": _request([("text", "BYTES", [1])], [_framed(b"a") + b"zz"]),
        "seed-raw-count-mismatch": _request([("input", "FP32", [1])], [b"\0" * 4, b"\0" * 4]),
        "seed-duplicate-input": _request([("a", "FP32", [1]), ("a", "FP32", [1])], [b"\0" * 4, b"\0" * 4]),
        "seed-unknown-datatype": _request([("input", "FP8", [1])], [b"\0"]),
        "seed-typed-fp16": _request([("input", "FP16", [1])], typed=lambda t: t.contents.fp32_contents.append(1)),
        # finding 12: a 100 KB input name must not come back in full in the error
        "seed-finding12-100kb-input-name": _request([("n" * 100_000, "FP32", [1])], [b"\0"]),
        "seed-finding12-long-shape": _request([("input", "FP32", [-1] * 20_000)], [b""]),
    }


# --- JSON tensors: mode byte (which model spec) + a REST request body -------------------------------------
def json_seeds() -> Seeds:
    """Valid TF Serving bodies for each spec, and the JSON findings (8, 10, 12)."""
    deep = b'{"instances": ' + b"[" * 1000 + b"1" + b"]" * 1000 + b"}"
    return {
        "seed-valid-instances-fp32": b"\x00" + json.dumps({"instances": [[0.1, 0.2, 0.3, 0.4]]}).encode(),
        "seed-valid-inputs-fp32": b"\x00" + json.dumps({"inputs": [[1, 2, 3, 4], [5, 6, 7, 8]]}).encode(),
        "seed-valid-inputs-named": b"\x00" + json.dumps({"inputs": {"input": [[1, 2, 3, 4]]}}).encode(),
        "seed-valid-instances-int64": b"\x01" + json.dumps({"instances": [0, 1, 2, -1]}).encode(),
        "seed-valid-instances-bytes": b"\x02" + json.dumps({"instances": ["a", "bc", ""]}).encode(),
        "seed-valid-two-inputs": b"\x03" + json.dumps({"instances": [{"a": [1, 2], "b": 3}]}).encode(),
        "seed-valid-two-inputs-columnar": b"\x03" + json.dumps({"inputs": {"a": [[1, 2]], "b": [3]}}).encode(),
        # finding 8: JSON nested ~1000 deep (RecursionError), 10**400
        "seed-finding08-nested-1000-deep": b"\x00" + deep,
        "seed-finding08-nested-1000-objects": b"\x00" + b'{"a":' * 1000 + b"1" + b"}" * 1000,
        "seed-finding08-int-10e400": b"\x01" + b'{"instances": [' + b"1" + b"0" * 400 + b"]}",
        "seed-finding08-int-10e400-fp32": b"\x00" + b'{"instances": [[' + b"1" + b"0" * 400 + b", 1, 2, 3]]}",
        # finding 10: NaN, Infinity, 1e400, null as inputs
        "seed-finding10-nan": b'\x00{"instances": [[NaN, 1, 2, 3]]}',
        "seed-finding10-infinity": b'\x00{"instances": [[Infinity, -Infinity, 1, 2]]}',
        "seed-finding10-1e400": b'\x00{"instances": [[1e400, 1, 2, 3]]}',
        "seed-finding10-null": b'\x00{"instances": [[null, 1, 2, 3]]}',
        "seed-output-overflows-to-infinity": b'\x00{"instances": [[1e10, -1e10, 1, 2]]}',
        "seed-duplicate-key": b'\x00{"instances": [[1, 2, 3, 4]], "instances": [[5, 6, 7, 8]]}',
        "seed-ragged": b'\x00{"instances": [[1, 2, 3, 4], [1]]}',
        "seed-not-object": b"\x00[1, 2, 3]",
        "seed-invalid-utf8": b'\x02{"instances": ["\xff\xfe"]}',
        "seed-lone-surrogate": b'\x02{"instances": ["\\ud800"]}',
        # finding 12: 100 KB names echoed in errors
        "seed-finding12-100kb-input-name": b"\x03" + json.dumps({"inputs": {"n" * 100_000: [1]}}).encode(),
    }


# --- artifact: mode byte + bytes --------------------------------------------------------------------------
def artifact_seeds() -> Seeds:
    """Sealed files made with the fuzzing keys (header, container and full-open modes) and known tampering."""
    from fuzz import keys

    sealed = keys.sealed_sample()
    container = keys.container_sample()
    header_len = struct.unpack(">I", sealed[10:14])[0]
    out: Seeds = {}
    for mode, name in ((0, "inspect"), (2, "open")):
        out[f"seed-valid-{name}"] = bytes([mode]) + sealed
        out[f"seed-{name}-truncated"] = bytes([mode]) + sealed[: len(sealed) // 2]
        out[f"seed-{name}-trailing-bytes"] = bytes([mode]) + sealed + b"\0"
        out[f"seed-{name}-flipped-chunk"] = bytes([mode]) + sealed[:-120] + bytes([sealed[-120] ^ 1]) + sealed[-119:]
    out["seed-valid-container"] = b"\x01" + container
    out["seed-container-manifest-huge"] = b"\x01" + struct.pack(">I", 0xFFFFFFFF) + b"{}"
    out["seed-container-dotdot"] = b"\x01" + keys.container_of({"../x": b"1"}, check=False)
    out["seed-container-absolute"] = b"\x01" + keys.container_of({"/etc/passwd": b"1"}, check=False)
    out["seed-container-nested-1000"] = b"\x01" + struct.pack(">I", 2001) + b"[" * 1000 + b"1" + b"]" * 1000
    header = sealed[14 : 14 + header_len]
    doc = json.loads(header)
    # finding 16: header claims with bidi/ANSI characters and unknown nested fields, read without a key
    for label, change in (
        ("bidi-name", lambda d: d.__setitem__("name", "mlp\u202egpj.exe")),
        ("ansi-name", lambda d: d.__setitem__("name", "\x1b[31mmlp\x1b[0m")),
        ("unknown-nested-field", lambda d: d["signer"].__setitem__("extra", 1)),
        ("version-superscript", lambda d: d.__setitem__("version", "\u00b2")),
        ("version-19-digits", lambda d: d.__setitem__("version", 10**18)),
        ("name-100kb", lambda d: d.__setitem__("name", "n" * 100_000)),
    ):
        changed = json.loads(header)
        change(changed)
        body = json.dumps(changed, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        out[f"seed-finding16-inspect-{label}"] = b"\x00" + sealed[:10] + struct.pack(">I", len(body)) + body
    assert doc["name"] == keys.SAMPLE_NAME
    return out


# --- JWT: mode byte 0 + a raw token, or 1 + header JSON + \n + payload JSON, signed by the fuzz issuer ------
def jwt_seeds() -> Seeds:
    """Good tokens of both modes and the JWT findings (13: duplicate scope), plus header tricks."""
    from fuzz import keys

    kid = keys.jwt_kid()
    header = {"alg": "ES256", "typ": "JWT", "kid": kid}
    claims = f'"iss":"{keys.JWT_ISSUER}","aud":"{keys.JWT_AUDIENCE}","sub":"fuzz","iat":__NOW__,"exp":__EXP__'

    def signed(head: str, payload: str) -> bytes:
        return b"\x01" + head.encode() + b"\n" + payload.encode()

    good_head = json.dumps(header, separators=(",", ":"))
    return {
        "seed-valid-signed": signed(good_head, "{" + claims + ',"scope":"infer:mlp"}'),
        "seed-valid-raw": b"\x00" + keys.jwt_token({"scope": "infer:mlp"}, ttl=10**8).encode(),
        "seed-valid-cnf": signed(good_head, "{" + claims + ',"cnf":{"x5t#S256":"abc"}}'),
        # finding 13: a payload repeating "scope" must not be granted the last value
        "seed-finding13-duplicate-scope": signed(good_head, '{"scope":"infer:mlp",' + claims + ',"scope":"admin"}'),
        "seed-finding13-duplicate-header-alg": signed(
            '{"alg":"none","alg":"ES256","typ":"JWT","kid":"' + kid + '"}', "{" + claims + "}"
        ),
        "seed-duplicate-sub": signed(good_head, '{"sub":"admin",' + claims + "}"),
        "seed-header-crit": signed(json.dumps({**header, "crit": ["exp"]}, separators=(",", ":")), "{" + claims + "}"),
        "seed-header-alg-none": b"\x00" + _bogus_token({"alg": "none"}, {"sub": "x"}, b""),
        "seed-header-not-object": signed("[1,2]", "{" + claims + "}"),
        "seed-payload-not-object": signed(good_head, "[1,2]"),
        "seed-payload-nested-1000": signed(good_head, '{"a":' * 1000 + "1" + "}" * 1000),
        "seed-exp-10e400": signed(good_head, "{" + claims.replace("__EXP__", "1" + "0" * 400) + "}"),
        "seed-exp-nan": signed(good_head, "{" + claims.replace("__EXP__", "NaN") + "}"),
        "seed-kid-100kb": signed(json.dumps({**header, "kid": "k" * 100_000}), "{" + claims + "}"),
        "seed-token-too-long": b"\x00" + b"a" * 9000,
        "seed-token-non-ascii": b"\x00\xc3\xa9.\xc3\xa9.\xc3\xa9",
    }


AUTH = b"Authorization: Bearer __TOKEN__\r\n"  # fuzz_rest puts a valid token in its place


# --- REST: raw HTTP/1.1 request bytes ----------------------------------------------------------------------
def rest_seeds() -> Seeds:
    """Valid requests and the REST framing findings (2, 8, 9, 12)."""
    body = json.dumps({"instances": [[0.1, 0.2, 0.3, 0.4]]}).encode()

    def post(headers: str, data: bytes = body, path: str = "/v1/models/fuzz:predict") -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer __TOKEN__\r\n{headers}\r\n".encode()
            + data
        )

    cl = f"Content-Length: {len(body)}\r\n"
    huge = json.dumps({"instances": [[1e10, 1, 2, 3]]}).encode()
    return {
        "seed-valid-predict": post(cl),
        "seed-valid-status": b"GET /v1/models/fuzz HTTP/1.1\r\nHost: localhost\r\n" + AUTH + b"\r\n",
        "seed-valid-keepalive-two": post(cl) + post(cl),
        "seed-valid-metrics": b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n",
        # finding 2: Content-Length -1 skips the body limit
        "seed-finding02-content-length-minus-1": post("Content-Length: -1\r\n"),
        # finding 8: Content-Length larger than the body; version ² and ①
        "seed-finding08-content-length-past-body": post("Content-Length: 100000\r\n"),
        "seed-finding08-version-superscript": post(cl, path="/v1/models/fuzz/versions/\u00b2:predict"),
        "seed-finding08-version-circled": post(cl, path="/v1/models/fuzz/versions/\u2460:predict"),
        "seed-finding08-nested-1000": post(
            "Content-Length: 2015\r\n", b'{"instances": ' + b"[" * 1000 + b"1" + b"]" * 1000 + b"}"
        ),
        # finding 9: chunked, two Content-Lengths, 1_0
        "seed-finding09-chunked": post("Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
        "seed-finding09-chunked-and-cl": post(cl + "Transfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
        "seed-finding09-two-content-lengths": post(cl + "Content-Length: 5\r\n"),
        "seed-finding09-content-length-underscore": post("Content-Length: 1_0\r\n", b"0123456789"),
        "seed-finding09-content-length-plus": post(f"Content-Length: +{len(body)}\r\n"),
        # finding 12: 100 KB model name
        "seed-finding12-100kb-model-name": post(cl, path="/v1/models/" + "n" * 100_000 + ":predict"),
        "seed-bad-token": post(cl).replace(
            b"__TOKEN__", _bogus_token({"typ": "JWT", "alg": "ES256"}, {}, b"\x00\x00\x00")
        ),
        "seed-no-token": post(cl).replace(b"Authorization: Bearer __TOKEN__\r\n", b""),
        "seed-unknown-model": post(cl, path="/v1/models/nope:predict"),
        "seed-output-infinity": post(f"Content-Length: {len(huge)}\r\n", huge),
        # found by this fuzzer: a body-less POST, then bytes after it, then end of stream -> 500 (h11 RuntimeError)
        "seed-fuzz-data-after-close": post("", b"x\r\n\r\ny"),
        "seed-bare-lf": post(cl).replace(b"\r\n", b"\n"),
        "seed-header-no-colon": post("Bogus\r\n" + cl),
        "seed-http10": b"POST /v1/models/fuzz:predict HTTP/1.0\r\n" + cl.encode() + b"\r\n" + body,
    }


GENERATORS: dict[str, Callable[[], Seeds]] = {
    "tensors": tensor_seeds,
    "json": json_seeds,
    "artifact": artifact_seeds,
    "jwt": jwt_seeds,
    "rest": rest_seeds,
    "xfcc": lambda: __import__("fuzz.fuzz_xfcc", fromlist=["seeds"]).seeds(),  # issue 15: its seeds live with it
    **{  # this wave's parsers: their seeds live with their harnesses too
        t: (lambda t=t: __import__(f"fuzz.fuzz_{t}", fromlist=["seeds"]).seeds())
        for t in ("reference", "drift_reference", "worker_reply", "traceparent")
    },
}


def write(target: str) -> list[Path]:
    """(Re)write one target's seed files."""
    folder = CORPUS_ROOT / target
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in GENERATORS[target]().items():
        path = folder / name
        path.write_bytes(data)
        written.append(path)
    return written


def main() -> None:
    """Command line: write the seeds of the named targets (all by default)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help=f"any of {', '.join(GENERATORS)} (default: all)")
    args = parser.parse_args()
    unknown = sorted(set(args.targets) - set(GENERATORS))
    if unknown:
        parser.error(f"unknown targets {unknown}")
    for target in args.targets or GENERATORS:
        print(f"{target}: {len(write(target))} seeds")


if __name__ == "__main__":
    main()
