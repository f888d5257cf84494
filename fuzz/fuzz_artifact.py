"""Fuzz the sealed-artifact parsers: the key-less header reader, the plaintext container, and a full open.

Input layout: the first byte picks the mode. 0: `sealed.inspect` (what `sealgate inspect` and the push
path run on untrusted bytes before any key is used) and the header's JSON description. 1: the container
parser `container.unpack_views` (the plaintext after decryption). 2: `sealed.open_artifact` with the fixed
fuzz identity and signer (fuzz/keys.py), so frames, chunks, the container, OMS and provenance are reached
from the valid seeds. Allowed: ArtifactError subclasses.
"""

from __future__ import annotations

import json
import sys

from fuzz.common import Harness, fuzz_main, instrumented

with instrumented():
    from fuzz import keys
    from gateway.artifact import container, sealed
    from gateway.errors import ArtifactError

MODE_INSPECT, MODE_CONTAINER, MODE_OPEN = 0, 1, 2


def parse(data: bytes) -> None:
    """The target: one of the three parsers, by the mode byte; results must describe what was read."""
    if not data:
        return
    mode, body = data[0] % 3, data[1:]
    if mode == MODE_INSPECT:
        header = sealed.inspect(body)
        json.dumps(header.describe())
    elif mode == MODE_CONTAINER:
        files = container.unpack_views(body)
        if sum(v.nbytes for v in files.values()) > len(body):
            raise AssertionError("container files add up to more bytes than the container holds")
    else:
        opened = sealed.open_artifact(body, [keys.identity()], keys.trust())
        if opened.signer_key_id not in keys.trust().keys:
            raise AssertionError("opened an artifact from a signer outside the trust store")


TestOneInput = Harness("artifact", parse, (ArtifactError,))

if __name__ == "__main__":
    fuzz_main(TestOneInput)
    sys.exit(0)
