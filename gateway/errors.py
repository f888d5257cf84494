"""The one exception hierarchy of sealgate: plain classes that know no transport.

Every module raises these; the front ends translate them to gRPC and HTTP status codes in one table,
gateway/server/status_map.py, so a client's mistake never surfaces as INTERNAL and no traceback ever
reaches a client. Importing this module imports no gRPC, so the offline paths (unseal, fl/) stay light.
"""

from __future__ import annotations


class SealgateError(Exception):
    """Base of every error sealgate raises on purpose; its message is one line, safe to show."""


# --- artifact -------------------------------------------------------------------------------------
class ArtifactError(SealgateError):
    """A sealed artifact could not be opened or made."""


class UnsupportedFormat(ArtifactError):
    """Not a sealed artifact, or a format version this build does not read."""


class TamperedArtifact(ArtifactError):
    """Authentication failed: a byte changed, chunks moved, data truncated or appended."""


class UntrustedSigner(ArtifactError):
    """Signed by a key outside the trust store, or the signature does not verify."""


class NotARecipient(ArtifactError):
    """None of the given identities can unwrap the data key."""


class UnsafeArchive(ArtifactError):
    """The packed model holds absolute paths, '..', links, devices, or exceeds size limits."""


class UnsafeModel(ArtifactError):
    """The model itself breaks the model policy (docs/MODEL_POLICY.md): external data, a custom or host op."""


class MetadataMismatch(ArtifactError):
    """The signed content disagrees with the header (name, version)."""


class NotServable(NotARecipient):
    """A push the gateway cannot open (sealed for other recipients) without an explicit `store_only`."""


class SignatureError(ArtifactError):
    """An OMS signature is missing, malformed or does not match the model's files."""


# --- repository / versions ------------------------------------------------------------------------
class NotFound(SealgateError):
    """No such model or version."""


class RollbackRefused(SealgateError):
    """A version at or below the highest seen for a model, outside an explicit rollback."""


class Unavailable(SealgateError):
    """The server or model is not ready."""


class StorageFull(SealgateError):
    """The model repository's file system has no space (or quota) left: nothing was stored."""


class ModelFailed(SealgateError):
    """The model raised while running (an error inside the runtime, not the request's shape): INTERNAL, as an
    in-process runtime error is; its text stays in the gateway's log."""


# --- requests -------------------------------------------------------------------------------------
class InvalidInput(SealgateError):
    """Wrong shape, dtype, size, unknown or missing tensor."""


class TooLarge(SealgateError):
    """A message or stream beyond the configured limit."""


class StreamTimeout(SealgateError):
    """A stream that sent its first message or its whole content too late."""


class Overloaded(SealgateError):
    """More requests in progress than the server takes (`[server] max_concurrent_requests`)."""


class RateLimited(Overloaded):
    """More explanations than a token subject may ask for in a minute (`[explain] max_per_minute`)."""


class NotExplainable(SealgateError):
    """A model version that cannot be explained: no usable reference data (`reference.npz`), or an input
    explanations do not support."""


# --- auth -----------------------------------------------------------------------------------------
class Unauthenticated(SealgateError):
    """No token, or a token that does not verify. `reason` feeds metrics, never the token itself."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


class PermissionDenied(SealgateError):
    """A valid token without the scope the call needs, or bound to another certificate.

    `reason` ("scope" or "binding") feeds metrics.
    """

    def __init__(self, message: str, reason: str = "scope") -> None:
        super().__init__(message)
        self.reason = reason


# --- configuration / release ----------------------------------------------------------------------
class ConfigError(SealgateError):
    """A configuration file or option is invalid."""


class GateFailed(SealgateError):
    """A release verification gate failed; the message names the gate and by how much."""


CLIP_MARK = "…"
MAX_MESSAGE_CHARS = 512  # backstop for any message sent to a client; echoes inside are clipped to 128 first


def clip(text: object, limit: int = 128) -> str:
    """`str(text)` with control and other unprintable characters escaped, cut to `limit` characters + "…".

    Every echo of client input in an error message or a log line goes through here, so a 100 KB name or a
    newline can neither bloat a status message nor forge a log line.
    """
    raw = text if isinstance(text, str) else str(text)
    head = raw[: limit + 1]
    if not head.isprintable():
        head = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in head)
    if len(raw) > limit or len(head) > limit:
        return head[:limit] + CLIP_MARK
    return head
