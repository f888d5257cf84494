"""JWT access-token verification against a JWKS file or URL, with a bounded cache so the hot path is a dict lookup.

Keys are chosen by `kid` only and bound to their algorithm; only asymmetric algorithms are ever accepted.
The key set is re-read when it changes (checked at most once per `reload_interval`), which clears the cache.
Tokens are never logged, and never part of an error message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jwt
from jwt import PyJWK

from gateway.auth.defaults import ALGORITHMS as DEFAULT_ALGORITHMS
from gateway.auth.jwks import FileJwks, JwksSource, UrlJwks, parse_jwks
from gateway.errors import ConfigError, Unauthenticated
from gateway.jsondepth import nesting_depth

log = logging.getLogger(__name__)

REASONS = frozenset(
    {
        "missing",
        "malformed",
        "expired",
        "audience",
        "issuer",
        "algorithm",
        "unknown_kid",
        "signature",
        "claims",
        "lifetime",
    }
)
# Asymmetric only: HS* (a public key used as an HMAC secret) and `none` can never be enabled.
SAFE_ALGORITHMS = frozenset({"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"})
ACCEPTED_TYP = frozenset({"jwt", "at+jwt", "application/jwt", "application/at+jwt"})
# JOSE headers that carry or point at a key (RFC 7515 4.1.2-4.1.6): keys come only from the configured JWKS,
# so a token naming its own is refused rather than silently verified against another key
KEY_HEADERS = frozenset({"jku", "jwk", "x5u", "x5c"})
MAX_TOKEN_CHARS = 8192
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
FILE_RELOAD_S = 1.0
URL_RELOAD_S = 300.0
MIN_KID_REFRESH_S = 10.0
MAX_HEADER_CHARS = 1024  # base64url characters of the JOSE header
MAX_INT_DIGITS = 32
MAX_JSON_DEPTH = 16  # nesting of a header or payload (claims are flat; cnf nests one level)
DEFAULT_MAX_LIFETIME_S = 86_400  # exp - iat above this is refused; 0: unlimited
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")  # base64url, no padding (RFC 7515 §2)


def preparse(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (header, payload) JSON objects of a compact JWS, parsed strictly before PyJWT sees the token.

    Refuses, with Unauthenticated (reason "malformed") and nothing else, anything but three base64url
    segments within the size bounds whose first two decode to UTF-8 JSON objects with no duplicate key at
    any depth (PyJWT and `json` keep the last of two "scope" keys), no NaN/Infinity and no number too big.
    """
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise Unauthenticated("malformed bearer token", reason="malformed")
    parts = token.split(".")
    if len(parts) != 3 or len(parts[0]) > MAX_HEADER_CHARS or not all(_SEGMENT.fullmatch(p) for p in parts):
        raise Unauthenticated("malformed bearer token", reason="malformed")
    return _json_object(parts[0], "header"), _json_object(parts[1], "payload")


def _json_object(segment: str, what: str) -> dict[str, Any]:
    """Decode one base64url segment as a strict JSON object; Unauthenticated("malformed") on any fault."""
    try:
        raw = base64.b64decode(segment + "=" * (-len(segment) % 4), altchars=b"-_", validate=True)
        if nesting_depth(raw, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:  # refused before json recurses into it
            raise ValueError("nested too deep")
        value = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_unique_keys,
            parse_constant=_no_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except (ValueError, RecursionError, binascii.Error):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise Unauthenticated(f"malformed bearer token ({what})", reason="malformed") from None
    if not isinstance(value, dict):
        raise Unauthenticated(f"malformed bearer token ({what} is not a JSON object)", reason="malformed")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: a JSON object whose keys are all distinct, else ValueError."""
    value = dict(pairs)
    if len(value) != len(pairs):
        raise ValueError("duplicate key")
    return value


def _no_constant(name: str) -> Any:
    """parse_constant: NaN, Infinity and -Infinity are not JSON."""
    raise ValueError(f"{name} is not JSON")


def _bounded_int(text: str) -> int:
    """parse_int: an integer of at most MAX_INT_DIGITS digits (claims are times and small counts)."""
    if len(text) > MAX_INT_DIGITS:
        raise ValueError("number out of range")
    return int(text)


def _finite_float(text: str) -> float:
    """parse_float: a float that stays finite (1e400 is refused, not read as infinity)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


@dataclass(frozen=True, slots=True)
class Claims:
    """The verified facts of a token that the gateway uses; `raw` is the whole (read-only) payload."""

    sub: str
    scopes: frozenset[str]
    exp: int
    cnf_thumbprint: str | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass
class VerifierStats:
    """Counters for metrics: cache hits, full verifications, refusals, JWKS reloads."""

    hits: int = 0
    verifications: int = 0
    refusals: int = 0
    reloads: int = 0


class TokenVerifier:
    """Verifies bearer JWTs issued by `issuer` for `audience`, with keys by `kid` from a JWKS file."""

    def __init__(
        self,
        jwks_path: Path | None,
        issuer: str | Sequence[str],
        audience: str | Sequence[str],
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        leeway: float = 30,
        cache_size: int = 10_000,
        reload_interval: float | None = None,
        *,
        jwks_url: str | None = None,
        jwks_ca: Path | None = None,
        max_lifetime: float = DEFAULT_MAX_LIFETIME_S,
    ) -> None:
        """Load the keys now (ConfigError if unusable); refuse any algorithm outside SAFE_ALGORITHMS.

        Keys come from `jwks_url` (HTTPS, checked against `jwks_ca` or the system roots) when given, else
        from the file `jwks_path`. `reload_interval` (default 1 s for a file, 300 s for a URL) is how often
        the source is checked; a URL is fetched in the background, never on a request, and sooner when a
        token names an unknown kid (at most every MIN_KID_REFRESH_S). A token whose exp - iat, or exp - now,
        exceeds `max_lifetime` seconds is refused (reason "lifetime"); 0 means no limit.
        """
        unsafe = sorted(set(algorithms) - SAFE_ALGORITHMS)
        if unsafe or not algorithms:
            raise ConfigError(f"refusing JWT algorithms {unsafe or 'none given'}: only asymmetric ones are allowed")
        if not issuer or not audience:
            raise ConfigError("a token verifier needs an issuer and an audience")
        if jwks_url:
            self._source: JwksSource = UrlJwks(jwks_url, jwks_ca)
        elif jwks_path is not None:
            self._source = FileJwks(Path(jwks_path))
        else:
            raise ConfigError("a token verifier needs a JWKS file or URL")
        self._issuer = issuer if isinstance(issuer, str) else tuple(issuer)
        self._audience = audience if isinstance(audience, str) else list(audience)
        self._algorithms = tuple(algorithms)
        self._leeway = float(leeway)
        if max_lifetime < 0:
            raise ConfigError("the maximum token lifetime must be >= 0 (0: unlimited)")
        self._max_lifetime = float(max_lifetime)
        self._cache_size = max(1, int(cache_size))
        if reload_interval is None:
            reload_interval = URL_RELOAD_S if self._source.remote else FILE_RELOAD_S
        self._reload_interval = float(reload_interval)
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._cache: dict[bytes, Claims] = {}
        self._generation = 0
        self.stats = VerifierStats()
        self._fetching = False
        stamp, data = self._source.poll(None)
        self._stamp: Hashable = stamp
        self._keys = parse_jwks(data or b"", self._source.name, self._algorithms)
        self._last_check = time.monotonic()

    @property
    def cache_entries(self) -> int:
        """How many verified tokens are cached now."""
        return len(self._cache)

    @property
    def key_ids(self) -> frozenset[str]:
        """The kids currently trusted."""
        return frozenset(self._keys)

    def generation(self) -> int:
        """The key-set generation, after the JWKS file is checked if due; changes on reload and clear_cache.

        Callers that memoize decisions built on verified claims key them on this.
        """
        self._maybe_reload()
        return self._generation

    def verify(self, token: str | bytes | None) -> Claims:
        """Return the token's Claims, from the cache when it was verified before and has not expired.

        Raises Unauthenticated with `reason` in REASONS on any failure.
        """
        if token is None or len(token) == 0:
            raise self._refuse("missing bearer token", "missing")
        if isinstance(token, bytes):
            try:
                token = token.decode("ascii")
            except UnicodeDecodeError:
                raise self._refuse("malformed bearer token", "malformed") from None
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            raise self._refuse("malformed bearer token", "malformed")
        self._maybe_reload()
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        now = time.time()
        with self._lock:
            cached = self._cache.get(digest)
            if cached is not None:
                if cached.exp > now:
                    self.stats.hits += 1
                    return cached
                del self._cache[digest]
            generation = self._generation
            keys = self._keys
        claims = self._verify_uncached(token, keys)
        self._store(digest, claims, generation)
        return claims

    def reload(self) -> bool:
        """Check the key source now; returns whether the key set was replaced (blocks on a URL fetch)."""
        with self._reload_lock:
            self._last_check = time.monotonic()
            name = self._source.name
            try:
                stamp, data = self._source.poll(self._stamp)
            except ConfigError as exc:
                log.warning("JWKS %s unreadable, keeping the current keys: %s", name, exc)
                return False
            if data is None:
                return False
            self._stamp = stamp
            try:
                keys = parse_jwks(data, name, self._algorithms)
            except ConfigError as exc:
                log.warning("JWKS %s invalid, keeping the current keys: %s", name, exc)
                return False
            with self._lock:
                self._keys = keys
                self._cache.clear()
                self._generation += 1
                self.stats.reloads += 1
            log.info("JWKS %s reloaded: %d key(s)", name, len(keys))
            return True

    def clear_cache(self) -> None:
        """Forget every verified token (e.g. after revoking a key out of band)."""
        with self._lock:
            self._cache.clear()
            self._generation += 1

    # --- internals --------------------------------------------------------------------------------
    def _maybe_reload(self, interval: float | None = None) -> None:
        """Check the key source at most once per interval; cheap when nothing is due.

        A file is checked inline (a stat); a URL in a background thread, so no request waits on the network.
        """
        if time.monotonic() - self._last_check < (self._reload_interval if interval is None else interval):
            return
        if not self._source.remote:
            self.reload()
            return
        with self._lock:
            if self._fetching:
                return
            self._fetching = True
            self._last_check = time.monotonic()
        threading.Thread(target=self._fetch_in_background, name="sealgate-jwks", daemon=True).start()

    def _fetch_in_background(self) -> None:
        try:
            self.reload()
        finally:
            with self._lock:
                self._fetching = False

    def _store(self, digest: bytes, claims: Claims, generation: int) -> None:
        """Cache a verified token until its exp, unless the keys changed meanwhile; bounded in size."""
        now = time.time()
        if claims.exp <= now:
            return
        with self._lock:
            if generation != self._generation:
                return
            if len(self._cache) >= self._cache_size:
                for k in [k for k, c in self._cache.items() if c.exp <= now]:
                    del self._cache[k]
                # Still full of live tokens: drop the oldest tenth (insertion order), amortising the scan.
                excess = len(self._cache) - int(self._cache_size * 0.9)
                for k in list(self._cache)[: max(0, excess)]:
                    del self._cache[k]
            self._cache[digest] = claims

    def _verify_uncached(self, token: str, keys: Mapping[str, PyJWK]) -> Claims:
        """The full check: header, key by kid, signature and registered claims (PyJWT), then our claims."""
        with self._lock:
            self.stats.verifications += 1
        try:
            header, _ = preparse(token)
        except Unauthenticated as exc:
            raise self._refuse(str(exc), "malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise self._refuse("token algorithm not allowed", "algorithm")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYP):
            raise self._refuse("token type not accepted", "malformed")
        if "crit" in header:
            raise self._refuse("token has critical header extensions", "malformed")
        if not KEY_HEADERS.isdisjoint(header):
            raise self._refuse("token header carries its own key (jku, jwk, x5u, x5c)", "malformed")
        kid = header.get("kid")
        key = keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            if self._source.remote:  # perhaps the issuer rotated: fetch again soon, without waiting here
                self._maybe_reload(MIN_KID_REFRESH_S)
            raise self._refuse("token signed by an unknown key", "unknown_kid")
        if key.algorithm_name != alg:
            raise self._refuse("token algorithm does not match its key", "algorithm")
        try:
            decoded = jwt.decode_complete(
                token,
                key=key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": REQUIRED_CLAIMS, "verify_signature": True, "strict_aud": False},
            )
        except jwt.PyJWTError as exc:
            message, reason = _classify(exc)
            raise self._refuse(message, reason) from None
        payload = decoded["payload"]
        self._check_lifetime(payload)
        return self._claims(payload)

    def _check_lifetime(self, payload: dict[str, Any]) -> None:
        """Refuse (reason "lifetime") a token valid for longer than the configured maximum."""
        if not self._max_lifetime:
            return
        exp, iat = payload.get("exp"), payload.get("iat")
        if isinstance(exp, bool) or isinstance(iat, bool) or not isinstance(exp, int | float):
            raise self._refuse("token expiry invalid", "claims")
        if not isinstance(iat, int | float):
            raise self._refuse("token issue time invalid", "claims")
        if exp - iat > self._max_lifetime or exp - time.time() > self._max_lifetime + self._leeway:
            raise self._refuse(f"token lifetime exceeds {int(self._max_lifetime)} s", "lifetime")

    def _claims(self, payload: dict[str, Any]) -> Claims:
        """Build Claims, refusing (reason "claims") wrongly typed sub, exp, scope or cnf."""
        sub, exp, scope, cnf = payload.get("sub"), payload.get("exp"), payload.get("scope", ""), payload.get("cnf")
        if not isinstance(sub, str) or not sub:
            raise self._refuse("token subject invalid", "claims")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise self._refuse("token expiry invalid", "claims")
        for time_claim in ("iat", "nbf"):  # PyJWT reads int("123"): a NumericDate must be a JSON number
            value = payload.get(time_claim)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise self._refuse(f"token {time_claim} invalid", "claims")
        if not isinstance(scope, str):
            raise self._refuse("token scope invalid", "claims")
        thumbprint = None
        if cnf is not None:
            thumbprint = cnf.get("x5t#S256") if isinstance(cnf, dict) else None
            if not isinstance(thumbprint, str) or not thumbprint:
                raise self._refuse("token confirmation (cnf) invalid", "claims")
        return Claims(
            sub=sub,
            scopes=frozenset(scope.split()),
            exp=int(exp),
            cnf_thumbprint=thumbprint,
            raw=MappingProxyType(payload),
        )

    def _refuse(self, message: str, reason: str) -> Unauthenticated:
        """Count a refusal and build the exception (reason from the fixed set, message token-free)."""
        with self._lock:
            self.stats.refusals += 1
        return Unauthenticated(message, reason=reason)


def _classify(exc: jwt.PyJWTError) -> tuple[str, str]:
    """Map a PyJWT error to a client-safe message and one of REASONS (subclasses first)."""
    table: list[tuple[type[jwt.PyJWTError], str, str]] = [
        (jwt.ExpiredSignatureError, "token expired", "expired"),
        (jwt.InvalidAudienceError, "token audience not accepted", "audience"),
        (jwt.InvalidIssuerError, "token issuer not accepted", "issuer"),
        (jwt.InvalidAlgorithmError, "token algorithm not allowed", "algorithm"),
        (jwt.InvalidKeyError, "token algorithm not allowed", "algorithm"),
        (jwt.InvalidSignatureError, "token signature invalid", "signature"),
        (jwt.MissingRequiredClaimError, "token lacks a required claim", "claims"),
        (jwt.DecodeError, "malformed bearer token", "malformed"),
    ]
    for cls, message, reason in table:
        if isinstance(exc, cls):
            if isinstance(exc, jwt.MissingRequiredClaimError):
                message = f"token lacks the required claim {exc.claim!r}"
            return message, reason
    return "token claims invalid", "claims"
