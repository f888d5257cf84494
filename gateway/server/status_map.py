"""The one table from sealgate's errors to wire status codes: each error class -> (gRPC code, HTTP status).

gateway/errors.py knows no transport (the offline paths never import gRPC); the front ends translate
here and nowhere else. A class not in the table takes the entry of its nearest listed base (the MRO
is walked), so a new subclass inherits its parent's codes; anything that is not a SealgateError is a
bug and reaches a client only as INTERNAL / 500 "internal error". docs/STATUS_CODES.md documents it.
"""

from __future__ import annotations

import grpc

from gateway.errors import (
    MAX_MESSAGE_CHARS,
    ArtifactError,
    ConfigError,
    GateFailed,
    InvalidInput,
    ModelFailed,
    NotExplainable,
    NotFound,
    NotServable,
    Overloaded,
    PermissionDenied,
    RollbackRefused,
    SealgateError,
    StorageFull,
    StreamTimeout,
    TooLarge,
    Unauthenticated,
    Unavailable,
    clip,
)

Codes = tuple[grpc.StatusCode, int]
INTERNAL: Codes = (grpc.StatusCode.INTERNAL, 500)

TABLE: dict[type[SealgateError], Codes] = {
    SealgateError: INTERNAL,
    ArtifactError: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    NotServable: (grpc.StatusCode.FAILED_PRECONDITION, 412),
    NotFound: (grpc.StatusCode.NOT_FOUND, 404),
    RollbackRefused: (grpc.StatusCode.FAILED_PRECONDITION, 412),
    Unavailable: (grpc.StatusCode.UNAVAILABLE, 503),
    InvalidInput: (grpc.StatusCode.INVALID_ARGUMENT, 400),
    TooLarge: (grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    StreamTimeout: (grpc.StatusCode.DEADLINE_EXCEEDED, 408),
    Overloaded: (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    StorageFull: (grpc.StatusCode.RESOURCE_EXHAUSTED, 507),  # 507 Insufficient Storage
    Unauthenticated: (grpc.StatusCode.UNAUTHENTICATED, 401),
    PermissionDenied: (grpc.StatusCode.PERMISSION_DENIED, 403),
    ConfigError: (grpc.StatusCode.FAILED_PRECONDITION, 500),
    GateFailed: (grpc.StatusCode.FAILED_PRECONDITION, 412),
    NotExplainable: (grpc.StatusCode.FAILED_PRECONDITION, 412),  # e.g. a model without reference.npz
    ModelFailed: INTERNAL,  # the model raised inside its runtime: the server's failure, not the client's
}

# Refusals of the HTTP layer carry their own HTTP status; this is the gRPC code recorded for each.
HTTP_TO_GRPC: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    414: grpc.StatusCode.RESOURCE_EXHAUSTED,
    431: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.UNIMPLEMENTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    505: grpc.StatusCode.INVALID_ARGUMENT,
}

_RESOLVED: dict[type[BaseException], Codes] = {}


class HttpRefusal(SealgateError):
    """A request refused at the HTTP layer (bad framing, sizes, deadline), with its own HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def codes(exc: BaseException) -> Codes:
    """(gRPC code, HTTP status) of any exception: its class's entry or its nearest listed base's."""
    if isinstance(exc, HttpRefusal):
        return HTTP_TO_GRPC.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT), exc.status
    kind = type(exc)
    found = _RESOLVED.get(kind)
    if found is None:
        found = next((TABLE[base] for base in kind.__mro__ if base in TABLE), INTERNAL)
        _RESOLVED[kind] = found
    return found


def grpc_code(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status code a client receives for `exc`."""
    return codes(exc)[0]


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Map any exception to (code, client-safe message); unexpected errors reveal nothing."""
    if isinstance(exc, SealgateError):
        return codes(exc)[0], clip(exc, MAX_MESSAGE_CHARS)
    return grpc.StatusCode.INTERNAL, "internal error"


def http_status(exc: BaseException) -> tuple[int, str]:
    """Map any exception to (HTTP status, client-safe message); unexpected errors reveal nothing."""
    if isinstance(exc, SealgateError):
        return codes(exc)[1], clip(exc, MAX_MESSAGE_CHARS)
    return 500, "internal error"
