"""Fuzz the W3C trace-context header checks of the tracing module (gateway/server/tracing.py: `trace_headers`,
then the SDK propagator's `extract` on what it kept, as `Tracing.start_call` does).

Input layout: the first byte picks how the headers arrive (0: h11's (name, bytes) pairs, 1: gRPC metadata
(name, str) pairs, 2: a mapping, 3: pairs with mixed-case names); the rest, split at newlines, is the
`traceparent` value then `tracestate` values (an empty first line: no traceparent). Values a transport cannot
carry (h11: control characters; gRPC: anything outside printable ASCII) are skipped. Allowed: nothing raises.
What is kept must be bounded and W3C-shaped (checked here by an independent grammar), a parent extracted from it
must come from a well-formed traceparent, a well-formed single traceparent must be kept, and the SDK must not
log (its warnings would echo the client's text).
"""

from __future__ import annotations

import logging
import re
import sys

from fuzz.common import Harness, fuzz_main, instrumented

with instrumented():
    from opentelemetry import trace

    from gateway.server import tracing

H11, GRPC, MAPPING, MIXED_CASE = range(4)
_HEX = "[0-9a-f]"
# W3C Trace Context level 1, section 3.2 (traceparent) and 3.3 (tracestate), written out independently
TRACEPARENT_00 = re.compile(rf"00-{_HEX}{{32}}-{_HEX}{{16}}-{_HEX}{{2}}")
TRACEPARENT_FUTURE = re.compile(rf"{_HEX}{{2}}-{_HEX}{{32}}-{_HEX}{{16}}-{_HEX}{{2}}(?:-[\x20-\x7e]*)?")
_KEY = r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
MEMBER = re.compile(rf"({_KEY})=({_VALUE})")


class _Warnings(logging.Handler):
    """Counts what the OpenTelemetry SDK logs at WARNING or above."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


WARNINGS = _Warnings()
logging.getLogger("opentelemetry").addHandler(WARNINGS)


def _metadata(mode: int, parent: bytes | None, states: list[bytes]) -> object | None:
    """The headers as the transport `mode` hands them to the guard, or None if it could not carry them."""
    values = ([parent] if parent is not None else []) + states
    names = ["traceparent"] * (parent is not None) + ["tracestate"] * len(states)
    if mode == H11:
        if any(re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", v) for v in values):
            return None
        return [(n, v.strip(b" \t")) for n, v in zip(names, values, strict=True)]
    if mode == GRPC:
        if any(re.search(rb"[^\x20-\x7e]", v) for v in values):
            return None
        return [(n, v.decode("ascii")) for n, v in zip(names, values, strict=True)]
    if mode == MAPPING:
        return {n: v.decode("latin-1") for n, v in zip(names, values, strict=True)}
    return [(n.upper() if i % 2 else n.title(), v) for i, (n, v) in enumerate(zip(names, values, strict=True))]


def check(data: bytes) -> None:
    """The target: the header checks and the extraction; what is accepted must be bounded and well formed."""
    if not data:
        return
    mode, lines = data[0] % 4, data[1:].split(b"\n")
    parent = lines[0] or None
    metadata = _metadata(mode, parent, lines[1:])
    if metadata is None:
        return
    WARNINGS.records.clear()
    carrier = tracing.trace_headers(metadata)  # type: ignore[arg-type]
    context = trace.get_current_span(tracing._PROPAGATOR.extract(carrier)).get_span_context()
    if WARNINGS.records:
        raise AssertionError(f"the SDK logged: {WARNINGS.records[0].getMessage()[:200]!r}")
    if not set(carrier) <= {"traceparent", "tracestate"} or ("tracestate" in carrier and "traceparent" not in carrier):
        raise AssertionError(f"kept headers {sorted(carrier)}")
    kept = carrier.get("traceparent", "")
    if len(kept) > tracing.MAX_TRACEPARENT:
        raise AssertionError(f"a traceparent of {len(kept)} characters kept")
    state = carrier.get("tracestate")
    if state is not None:
        _check_state(state)
    if context.is_valid:
        _check_parent(kept, context)
    elif parent is not None:
        value = parent.decode("latin-1").strip(" \t")
        if TRACEPARENT_00.fullmatch(value) and value[3:35] != "0" * 32 and value[36:52] != "0" * 16:
            raise AssertionError(f"a well-formed traceparent was dropped: {value!r}")


def _check_parent(kept: str, context: trace.SpanContext) -> None:
    """A parent was extracted: its header must be W3C-shaped and name the same ids."""
    value = kept.strip(" \t")
    strict = TRACEPARENT_00 if value.startswith("00") else TRACEPARENT_FUTURE
    if not strict.fullmatch(value) or value.startswith("ff"):
        raise AssertionError(f"a parent was extracted from a malformed traceparent {value!r}")
    if value[3:35] != f"{context.trace_id:032x}" or value[36:52] != f"{context.span_id:016x}":
        raise AssertionError(f"the extracted ids are not those of {value!r}")
    if context.trace_id == 0 or context.span_id == 0 or len(context.trace_state) > tracing.MAX_TRACESTATE_MEMBERS:
        raise AssertionError("an all-zero id or an unbounded trace state was extracted")


def _check_state(state: str) -> None:
    """A kept tracestate: bounded, every member well formed, no key twice."""
    members = [m.strip(" \t") for m in state.split(",") if m.strip(" \t")]
    if len(state) > tracing.MAX_TRACESTATE or len(members) > tracing.MAX_TRACESTATE_MEMBERS:
        raise AssertionError(f"a tracestate of {len(state)} characters, {len(members)} members kept")
    keys = []
    for member in members:
        match = MEMBER.fullmatch(member)
        if match is None:
            raise AssertionError(f"a malformed tracestate member kept: {member[:100]!r}")
        keys.append(match.group(1))
    if len(set(keys)) != len(keys):
        raise AssertionError("a tracestate with a key twice kept")


def seeds() -> dict[str, bytes]:
    """Valid headers of each transport, and near misses of each grammar rule and bound."""
    good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    state = b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    return {
        "seed-valid-h11": b"\x00" + good + b"\n" + state,
        "seed-valid-grpc": b"\x01" + good + b"\n" + state,
        "seed-valid-mapping": b"\x02" + good,
        "seed-valid-mixed-case-two-states": b"\x03" + good + b"\nrojo=1\ncongo=2",
        "seed-valid-future-version": b"\x00cc" + good[2:] + b"-what-the-future-holds",
        "seed-valid-tenant-key": b"\x01" + good + b"\nfw529a3039@dt=1, 7@x=y ,,",
        "seed-version-ff": b"\x00ff" + good[2:],
        "seed-version-00-with-suffix": b"\x00" + good + b"-01",
        "seed-uppercase-hex": b"\x01" + good.upper(),
        "seed-zero-trace-id": b"\x00" + good[:3] + b"0" * 32 + good[35:],
        "seed-zero-span-id": b"\x00" + good[:36] + b"0" * 16 + good[52:],
        "seed-short-trace-id": b"\x00" + good[:34] + good[35:],
        "seed-padded-ows": b"\x02 \t" + good + b" \t",
        "seed-traceparent-129": b"\x00cc" + good[2:] + b"-" + b"x" * 73,
        "seed-tracestate-33-members": b"\x00" + good + b"\n" + b",".join(b"k%d=v" % i for i in range(33)),
        "seed-tracestate-513": b"\x01" + good + b"\nk=" + b"v" * 255 + b",l=" + b"v" * 253,
        "seed-tracestate-duplicate-key": b"\x00" + good + b"\nrojo=1\nrojo=2",
        "seed-tracestate-upper-key": b"\x01" + good + b"\nRojo=1",
        "seed-tracestate-value-with-equals": b"\x00" + good + b"\nrojo=a=b",
        "seed-tracestate-trailing-space-value": b"\x02" + good + b"\nrojo=a \x7f",
        "seed-tracestate-only": b"\x00\n" + state,
        "seed-non-ascii": b"\x00" + good[:-1] + b"\xc3\xa9",
        # the module's own claim: a malformed tracestate member never reaches the SDK, which would log its text
        "seed-finding-traceparent-sdk-would-log-member": b"\x02" + good + b"\nrojo=1,\revil=forged log line",
        "seed-finding-traceparent-100kb": b"\x00" + good + b"-" + b"x" * 100_000,
    }


TestOneInput = Harness("traceparent", check, ())

if __name__ == "__main__":
    fuzz_main(TestOneInput)
    sys.exit(0)
