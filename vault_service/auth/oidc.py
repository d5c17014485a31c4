"""Tokens from external OpenID Connect providers, trusted through their JWKS.

A Mission Locale may sign its counsellors in through its own identity provider.
Each trusted provider is configured explicitly (`VAULT_SERVICE_OIDC_ISSUERS`): its
exact `iss`, the audience it must put in tokens meant for us, where its JWKS lives,
and which asymmetric algorithms it may use. Nothing in a token chooses a key source:
`jku`, `x5u`, `jwk` and `x5c` headers are ignored, the key comes from the configured
JWKS by `kid`, and the algorithm must be both configured and bound to that key.

The JWKS is fetched in a worker thread (never on the event loop), cached per issuer,
and fetched again when it is older than `cache_seconds` or when an unknown `kid`
appears (a rotation), but never more than once per `min_refresh_interval` per
issuer, so a stream of forged kids cannot turn us into a flood against the IdP.
If the IdP cannot be reached, cached keys keep serving (up to `max_stale_seconds`);
with no cached keys every token of that issuer is refused: fail closed.

Every refusal is an `Unauthenticated` with a stable `reason`. Logs carry the
configured issuer and the reason code, never a token, a claim or a key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import math
import re
import ssl
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.client import HTTPMessage
from typing import IO, Annotated, Any, Final

import jwt
import msgspec
import structlog
from jwt import PyJWK

from vault_service.auth.refusals import refusal_reason
from vault_service.auth.verified import VerifiedTokens, digest_of
from vault_service.errors import ConfigurationError, Unauthenticated
from vault_service.settings.issuers import SUPPORTED_ALGORITHMS, IssuerConfig, url_allowed

log = structlog.get_logger(__name__)

MAX_TOKEN_BYTES: Final = 8192
MAX_JWKS_BYTES: Final = 256 * 1024
FETCH_TIMEOUT_SECONDS: Final = 5.0
# nbf is optional in OIDC; PyJWT checks it whenever it is present. So is jti: an ID
# token (OIDC Core 2) need not carry one; without it the token is named by its hash.
REQUIRED_CLAIMS: Final = ["iss", "aud", "exp", "iat", "sub"]
_KID: Final = re.compile(r"[A-Za-z0-9._-]{1,128}")  # always used with fullmatch
# The key type (and curve) each algorithm may be used with. Ed448 is left out on
# purpose: no provider we trust uses it, and a smaller surface is easier to reason about.
_KEY_TYPES: Final[Mapping[str, tuple[str, str | None]]] = {
    "RS256": ("RSA", None),
    "PS256": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "EdDSA": ("OKP", "Ed25519"),
}
# RFC 8725 3.11: explicit typing. "JWT" for ID tokens, "at+jwt" for RFC 9068 access
# tokens; anything else (logout+jwt, secevent+jwt, ...) is not an access credential.
_ACCEPTED_TYP: Final = frozenset({"jwt", "at+jwt"})
_JTI_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:vault-service:external-jti")
_SUBJECT_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:vault-service:external-subject")


def external_actor_id(issuer: str, subject: str) -> uuid.UUID:
    """The access log's actor id for an external identity linked to no account: an id,
    never the subject itself, that an auditor who knows (issuer, subject) recomputes."""
    return uuid.uuid5(_SUBJECT_NAMESPACE, issuer + "\x00" + subject)


class ExternalClaims(msgspec.Struct, frozen=True):
    issuer: str
    subject: str
    jti: str
    iat: int
    exp: int
    acr: str | None
    amr: tuple[str, ...]

    def token_id(self) -> uuid.UUID:
        return external_token_id(self.issuer, self.jti)


def external_token_id(issuer: str, jti: str) -> uuid.UUID:
    """A UUID for an external token, for `revoked_tokens.jti` and `Principal.jti`: an
    external jti is any string, unique only within its issuer, so the issuer is part
    of the name."""
    return uuid.uuid5(_JTI_NAMESPACE, issuer + "\x00" + jti)


class _Payload(msgspec.Struct, frozen=True, kw_only=True):
    """The claims we rely on, strictly typed (no float or bool timestamps); IdPs add
    many more claims, which are ignored."""

    iss: str
    sub: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]  # OIDC Core 2
    jti: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] | None = None
    iat: int
    exp: int
    nbf: int | None = None
    acr: str | None = None
    amr: tuple[str, ...] = ()


# --- fetching -------------------------------------------------------------------------


class JwksFetchError(Exception):
    """The JWKS could not be fetched. The message is a fixed phrase, never a URL or a body."""


class _CheckedRedirect(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to a URL our own rules would have accepted: otherwise an
    https JWKS could bounce us to plain http, or to a host on the internal network."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if not url_allowed(newurl, allow_query=True):
            raise JwksFetchError("redirect to a refused URL")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_jwks(url: str) -> bytes:
    """The default fetch: blocking, so always called through asyncio.to_thread."""
    if not url_allowed(url, allow_query=True):
        raise JwksFetchError("refused URL")
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=ssl.create_default_context()), _CheckedRedirect()
    )
    request = urllib.request.Request(  # noqa: S310 - scheme checked by _url_allowed above  # nosec B310
        url, headers={"Accept": "application/jwk-set+json, application/json"}
    )
    # The socket timeout bounds each read; the deadline bounds a server that drips bytes.
    deadline = time.monotonic() + FETCH_TIMEOUT_SECONDS
    chunks: list[bytes] = []
    size = 0
    with opener.open(request, timeout=FETCH_TIMEOUT_SECONDS) as response:
        if response.status != 200:
            raise JwksFetchError("unexpected HTTP status")
        while chunk := response.read(16384):
            size += len(chunk)
            if size > MAX_JWKS_BYTES:
                raise JwksFetchError("JWKS too large")
            if time.monotonic() > deadline:
                raise JwksFetchError("JWKS fetch too slow")
            chunks.append(chunk)
    return b"".join(chunks)


# --- keys -----------------------------------------------------------------------------

# kid -> algorithm -> key. One RSA key without an `alg` member may serve both RS256 and
# PS256 if both are configured; the token's alg then picks the binding.
_KeySet = dict[str, dict[str, PyJWK]]


def _load_key(jwk: dict[str, Any], alg: str) -> PyJWK | None:
    kty, crv = _KEY_TYPES[alg]
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        return None
    try:
        key = PyJWK(jwk, algorithm=alg)
        prepared = key.Algorithm.prepare_key(key.key)  # checks an EC key's curve
        if key.Algorithm.check_key_length(prepared) is not None:
            return None  # RSA under 2048 bits
    except (jwt.PyJWTError, ValueError, TypeError, AttributeError, KeyError):
        # A JWK that does not load is skipped like PyJWKSet does; the others still serve.
        return None
    return key


def _parse_jwks(body: bytes, algorithms: tuple[str, ...]) -> _KeySet | None:
    """The usable verification keys of a JWKS document, or None if it is not one."""
    try:
        document = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        return None
    keys: _KeySet = {}
    ambiguous: set[str] = set()
    for jwk in document["keys"]:
        if not isinstance(jwk, dict):
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not _KID.fullmatch(kid):
            continue  # a key we could never select
        if jwk.get("use", "sig") != "sig":
            continue
        key_ops = jwk.get("key_ops")
        if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
            continue
        if "d" in jwk:
            continue  # a published private key: the IdP is broken, do not hold its secret
        declared = jwk.get("alg")
        if declared is not None and declared not in algorithms:
            continue
        for alg in (declared,) if declared is not None else algorithms:
            key = _load_key(jwk, alg)
            if key is None:
                continue
            slot = keys.setdefault(kid, {})
            if alg in slot:
                ambiguous.add(kid)
            slot[alg] = key
    for kid in ambiguous:
        # Two keys under one kid and algorithm: we cannot tell which one is meant.
        del keys[kid]
    return keys


@dataclass
class _IssuerState:
    config: IssuerConfig
    keys: _KeySet | None = None
    fetched_at: float = -math.inf  # last successful fetch
    attempted_at: float = -math.inf  # last attempt, successful or not
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


# --- tokens ---------------------------------------------------------------------------


def _segment_json(segment: str) -> dict[str, Any]:
    try:
        raw = base64.b64decode(segment + "=" * (-len(segment) % 4), altchars=b"-_", validate=True)
        value = msgspec.json.decode(raw)
    except (ValueError, binascii.Error, msgspec.DecodeError):
        raise Unauthenticated(reason="token_malformed") from None
    if not isinstance(value, dict):
        raise Unauthenticated(reason="token_malformed")
    return value


def _split(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if len(token) > MAX_TOKEN_BYTES:
        raise Unauthenticated(reason="token_too_large")
    if not token.isascii():
        raise Unauthenticated(reason="token_malformed")
    parts = token.split(".")
    if len(parts) != 3:  # a JWE (5 parts) is not accepted either
        raise Unauthenticated(reason="token_malformed")
    return _segment_json(parts[0]), _segment_json(parts[1])


def unverified_issuer(token: str) -> str | None:
    """The `iss` of a token, NOT verified: only for routing a token to its verifier."""
    try:
        _, payload = _split(token)
    except Unauthenticated:
        return None
    iss = payload.get("iss")
    return iss if isinstance(iss, str) else None


def _typ_accepted(typ: object) -> bool:
    if typ is None:
        return True
    if not isinstance(typ, str):
        return False
    typ = typ.lower()
    typ = typ.removeprefix("application/")  # RFC 7515 4.1.9
    return typ in _ACCEPTED_TYP


# Beyond the refusals shared with our own tokens (auth/tokens.py).
_EXTRA_REFUSALS: Final[tuple[tuple[type[jwt.PyJWTError], str], ...]] = (
    (jwt.InvalidAlgorithmError, "token_algorithm"),
    (jwt.InvalidIssuedAtError, "token_claims"),
    (jwt.exceptions.InvalidSubjectError, "token_claims"),
    (jwt.exceptions.InvalidJTIError, "token_claims"),
)


# Raised by PyJWT only after the signature verified: the claims are the issuer's own.
_AFTER_SIGNATURE: Final = (
    jwt.ExpiredSignatureError,
    jwt.ImmatureSignatureError,
    jwt.InvalidAudienceError,
    jwt.InvalidIssuedAtError,
    jwt.MissingRequiredClaimError,
    jwt.exceptions.InvalidSubjectError,
    jwt.exceptions.InvalidJTIError,
)


class SignedButRefused(Unauthenticated):
    """A token whose signature verified, refused for its claims (expired, another
    audience, ...): its `sub` is the issuer's word, so the refusal can name the actor."""

    def __init__(self, reason: str, issuer: str, subject: str | None, jti: str) -> None:
        super().__init__(reason=reason)
        self.issuer = issuer
        self.subject = subject
        self.jti = jti


class ExternalIssuers:
    """Verifies tokens of the configured external issuers."""

    def __init__(
        self,
        issuers: Sequence[IssuerConfig],
        *,
        fetch: Callable[[str], bytes] | None = None,
        min_refresh_interval: float = 30.0,
        cache_seconds: float = 3600.0,
        max_stale_seconds: float = 86400.0,
        clock: Callable[[], float] = time.monotonic,
        cache: VerifiedTokens | None = None,
    ) -> None:
        if len({i.issuer for i in issuers}) != len(issuers):
            raise ConfigurationError("an external issuer is configured twice")
        if min_refresh_interval < 0 or cache_seconds <= 0 or max_stale_seconds < cache_seconds:
            raise ConfigurationError("JWKS cache intervals out of bounds")
        self._states = {i.issuer: _IssuerState(i) for i in issuers}
        self._fetch = fetch_jwks if fetch is None else fetch
        self._min_refresh_interval = min_refresh_interval
        self._cache_seconds = cache_seconds
        # If the IdP stays unreachable, keys it may since have withdrawn (a leaked key)
        # stop being trusted after this long.
        self._max_stale_seconds = max_stale_seconds
        self._clock = clock
        # Shared with our own tokens' verifier (auth/verified.py): a hit is honoured
        # until the token's expiry and while its key is still published.
        self._cache = VerifiedTokens(10_000) if cache is None else cache

    @property
    def issuers(self) -> tuple[str, ...]:
        return tuple(self._states)

    def handles(self, unverified_iss: str) -> bool:
        return unverified_iss in self._states

    async def verify(self, token: str) -> ExternalClaims:
        digest = digest_of(token)
        cached = self._cache.get(digest)
        if cached is not None:
            claims, kid = cached
            state = self._states.get(claims.issuer) if isinstance(claims, ExternalClaims) else None
            keys = self._usable(state, self._clock()) if state is not None else None
            if (
                isinstance(claims, ExternalClaims)
                and state is not None
                and claims.exp > time.time() - state.config.leeway_seconds
                and keys is not None
                and kid in keys
            ):
                self._cache.hit(digest)
                return claims
            self._cache.drop(digest)
        claims, kid = await self._verify_uncached(token)
        self._cache.put(digest, claims, kid)
        return claims

    async def _verify_uncached(self, token: str) -> tuple[ExternalClaims, str]:
        try:
            state, alg, kid = self._route(token)
        except Unauthenticated as exc:
            # The token's own iss is attacker-chosen text: not logged.
            log.info("external_token_refused", issuer=None, reason=exc.reason)
            raise
        try:
            return await self._verify(state, token, alg, kid), kid
        except Unauthenticated as exc:
            log.info("external_token_refused", issuer=state.config.issuer, reason=exc.reason)
            raise

    def _route(self, token: str) -> tuple[_IssuerState, str, str]:
        """Header checks and the choice of issuer, before any key is looked up, each
        refusal with its own code (PyJWT would refuse the same tokens less precisely)."""
        header, payload = _split(token)
        alg = header.get("alg")
        # none, HS256 with a public key as the secret, and anything else we do not
        # support are refused before the issuer is even considered.
        if not isinstance(alg, str) or alg not in SUPPORTED_ALGORITHMS:
            raise Unauthenticated(reason="token_algorithm")
        if "crit" in header:
            # We implement no extension; RFC 7515 4.1.11 says refuse what we do not know.
            raise Unauthenticated(reason="token_crit")
        if not _typ_accepted(header.get("typ")):
            raise Unauthenticated(reason="token_malformed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not _KID.fullmatch(kid):
            raise Unauthenticated(reason="token_kid")
        iss = payload.get("iss")
        state = self._states.get(iss) if isinstance(iss, str) else None
        if state is None:
            raise Unauthenticated(reason="token_issuer")
        if alg not in state.config.algorithms:
            raise Unauthenticated(reason="token_algorithm")
        return state, alg, kid

    async def _verify(self, state: _IssuerState, token: str, alg: str, kid: str) -> ExternalClaims:
        config = state.config
        bound = await self._keys_for(state, kid)
        key = bound.get(alg)
        if key is None:
            # The kid names a key of another type (e.g. ES256 on an RSA key).
            raise Unauthenticated(reason="token_algorithm")
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=[alg],  # already checked against the configuration and the key
                audience=config.audience,
                issuer=config.issuer,  # exact string comparison
                leeway=config.leeway_seconds,
                options={
                    "require": REQUIRED_CLAIMS,
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_nbf": True,  # when present
                    "verify_iat": True,  # refuses an iat in the future beyond leeway
                    "verify_aud": True,
                    "verify_iss": True,
                    "verify_sub": True,
                    "verify_jti": True,
                    # aud must be exactly our audience string: a token minted for several
                    # services could be replayed to us by any of them.
                    "strict_aud": True,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.PyJWTError as exc:
            reason = refusal_reason(exc, _EXTRA_REFUSALS, default="token_malformed")
            if isinstance(exc, _AFTER_SIGNATURE):
                raise self._signed_refusal(reason, config, token) from None
            raise Unauthenticated(reason=reason) from None
        if "events" in payload:
            # A security event or back-channel logout token is never an access credential.
            raise self._signed_refusal("token_claims", config, token)
        try:
            claims = msgspec.convert(payload, _Payload)
        except msgspec.ValidationError:
            raise self._signed_refusal("token_claims", config, token) from None
        if not 0 < claims.exp - claims.iat <= config.max_lifetime_seconds:
            raise self._signed_refusal("token_lifetime", config, token)
        # Assurance (acr/amr) is checked by `assurance`, once the token's account is
        # known, so that such a refusal is logged as that account's.
        return ExternalClaims(
            issuer=config.issuer,
            subject=claims.sub,
            jti=claims.jti or "sha256:" + hashlib.sha256(token.encode("ascii")).hexdigest(),
            iat=claims.iat,
            exp=claims.exp,
            acr=claims.acr,
            amr=claims.amr,
        )

    @staticmethod
    def _signed_refusal(reason: str, config: IssuerConfig, token: str) -> SignedButRefused:
        _, payload = _split(token)
        sub = payload.get("sub")
        subject = sub if isinstance(sub, str) and 0 < len(sub) <= 255 else None
        jti = payload.get("jti")
        named = jti if isinstance(jti, str) and 0 < len(jti) <= 255 else None
        return SignedButRefused(
            reason,
            config.issuer,
            subject,
            named or "sha256:" + hashlib.sha256(token.encode("ascii")).hexdigest(),
        )

    def assurance(self, claims: ExternalClaims) -> bool:
        """Refuses a token below its issuer's floor (`required_acr`, `required_amr`);
        returns whether it counts as multi-factor (`mfa_acr`, `mfa_amr`)."""
        config = self._states[claims.issuer].config
        if config.required_acr and claims.acr not in config.required_acr:
            raise Unauthenticated(reason="token_assurance_insufficient")
        if not set(config.required_amr).issubset(claims.amr):
            raise Unauthenticated(reason="token_assurance_insufficient")
        if config.mfa_acr and claims.acr in config.mfa_acr:
            return True
        return bool(config.mfa_amr) and set(config.mfa_amr).issubset(claims.amr)

    def _usable(self, state: _IssuerState, now: float) -> _KeySet | None:
        if state.keys is None or now - state.fetched_at > self._max_stale_seconds:
            return None
        return state.keys

    async def _keys_for(self, state: _IssuerState, kid: str) -> dict[str, PyJWK]:
        now = self._clock()
        keys = self._usable(state, now)
        if keys is not None and kid in keys:
            fresh = now - state.fetched_at < self._cache_seconds
            # While another request refreshes, a known kid does not wait for it.
            if fresh or state.lock.locked():
                return keys[kid]
        # Unknown kid, stale cache or no cache: one fetch at a time per issuer, and at
        # most one attempt per interval, whether it succeeds or not.
        async with state.lock:
            if self._clock() - state.attempted_at >= self._min_refresh_interval:
                await self._refresh(state)
            keys = self._usable(state, self._clock())
        if keys is None:
            raise Unauthenticated(reason="idp_unavailable")
        found = keys.get(kid)
        if found is None:
            raise Unauthenticated(reason="token_unknown_key")
        return found

    async def _refresh(self, state: _IssuerState) -> None:
        config = state.config
        state.attempted_at = self._clock()
        try:
            # The default fetch has its own deadline; this one also bounds a custom fetch.
            body = await asyncio.wait_for(
                asyncio.to_thread(self._fetch, config.jwks_uri), FETCH_TIMEOUT_SECONDS + 1
            )
        except Exception as exc:  # noqa: BLE001 - any failure of the fetch means "unavailable"
            # The class name only: an exception's text may carry the URL or the body.
            log.warning("oidc_jwks_fetch_failed", issuer=config.issuer, error=type(exc).__name__)
            return
        keys = _parse_jwks(body, config.algorithms)
        if keys is None:
            log.warning("oidc_jwks_malformed", issuer=config.issuer)
            return
        state.keys = keys
        state.fetched_at = self._clock()
        log.info("oidc_jwks_refreshed", issuer=config.issuer, keys=len(keys))
