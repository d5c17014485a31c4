"""The service's own JWTs: issued through Vault transit (Ed25519), verified locally.

One algorithm (EdDSA), every registered claim required and checked, a lifetime of
at most an hour, the key id an RFC 7638 thumbprint of a public key Vault holds.
Verified tokens are cached by SHA-256 of the token until their own expiry, because
an Ed25519 verification costs more than decrypting a whole record; the account's
state and the token's revocation are checked on every request all the same
(auth/accounts.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

import jwt
import msgspec
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vault_service.auth.permissions import Role, scopes_for
from vault_service.auth.refusals import refusal_reason
from vault_service.auth.verified import VerifiedTokens, digest_of
from vault_service.errors import ConfigurationError, Unauthenticated
from vault_service.kms import TOKEN_KEY, VaultKms
from vault_service.settings import Settings

log = structlog.get_logger(__name__)

ALGORITHM: Final = "EdDSA"
MAX_TOKEN_BYTES: Final = 8192
REQUIRED_CLAIMS: Final = ["iss", "aud", "exp", "nbf", "iat", "sub", "jti"]
_KID = re.compile(r"^[A-Za-z0-9_-]{43}$")
# An unknown kid may mean a rotation we have not seen: look again, but not more
# often than this, so forged kids cannot turn into a flood of Vault calls.
_REFRESH_INTERVAL: Final = 30.0


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def thumbprint(public_key: bytes) -> str:
    """RFC 7638 JWK thumbprint of an Ed25519 key (members in lexicographic order)."""
    canonical = json.dumps(
        {"crv": "Ed25519", "kty": "OKP", "x": _b64url(public_key)}, separators=(",", ":")
    )
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def _raw_header(token: str) -> dict[str, Any]:
    """The JOSE header, read before anything else so each refusal gets its own code
    (PyJWT would later refuse the same tokens, with less precise reasons)."""
    segment = token.split(".", 1)[0]
    try:
        header = msgspec.json.decode(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, msgspec.DecodeError):
        raise Unauthenticated(reason="token_malformed") from None
    if not isinstance(header, dict):
        raise Unauthenticated(reason="token_malformed")
    return header


class Claims(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    sub: uuid.UUID
    jti: uuid.UUID
    iat: int
    exp: int
    role: Role
    scope: str
    structure: uuid.UUID | None = None


@dataclass(frozen=True)
class VerificationKey:
    kid: str
    version: int
    raw: bytes
    key: Ed25519PublicKey


class SigningKeys:
    """Public keys of the token key's live versions, as read from Vault."""

    def __init__(self, kms: VaultKms) -> None:
        self._kms = kms
        self.latest: VerificationKey | None = None
        self.by_kid: dict[str, VerificationKey] = {}
        self._last_refresh = float("-inf")

    @property
    def age(self) -> float:
        return time.monotonic() - self._last_refresh

    async def refresh(self) -> None:
        self._last_refresh = time.monotonic()
        latest, keys = await self._kms.public_keys(TOKEN_KEY)
        by_kid = {}
        for version, raw in keys.items():
            vk = VerificationKey(
                thumbprint(raw), version, raw, Ed25519PublicKey.from_public_bytes(raw)
            )
            by_kid[vk.kid] = vk
        self.by_kid = by_kid
        self.latest = next((k for k in by_kid.values() if k.version == latest), None)

    async def lookup(self, kid: str) -> VerificationKey | None:
        found = self.by_kid.get(kid)
        if found is None and time.monotonic() - self._last_refresh > _REFRESH_INTERVAL:
            await self.refresh()
            found = self.by_kid.get(kid)
        return found

    def jwks(self) -> dict[str, Any]:
        return {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": _b64url(k.raw),
                    "kid": k.kid,
                    "alg": ALGORITHM,
                    "use": "sig",
                }
                for k in sorted(self.by_kid.values(), key=lambda k: k.version)
            ]
        }


class TokenIssuer:
    def __init__(self, settings: Settings, kms: VaultKms, keys: SigningKeys) -> None:
        self._settings = settings
        self._kms = kms
        self._keys = keys

    async def issue(
        self,
        account_id: uuid.UUID,
        role: Role,
        structure_id: uuid.UUID | None,
        ttl_seconds: int,
        *,
        now: int | None = None,
    ) -> str:
        if not 0 < ttl_seconds <= self._settings.tokens.max_lifetime_seconds:
            raise ConfigurationError("token lifetime out of bounds")
        # Issuing is rare (a login, the CLI): look the key up again when it may have
        # rotated, so a retired version is never asked to sign.
        if self._keys.latest is None or self._keys.age > _REFRESH_INTERVAL:
            await self._keys.refresh()
        signing = self._keys.latest
        if signing is None:
            raise ConfigurationError("the token signing key has no usable version")
        issued = int(time.time()) if now is None else now
        header = {"alg": ALGORITHM, "typ": "JWT", "kid": signing.kid}
        payload: dict[str, Any] = {
            "iss": self._settings.tokens.issuer,
            "aud": self._settings.tokens.audience,
            "sub": str(account_id),
            "jti": str(uuid.uuid4()),
            "iat": issued,
            "nbf": issued,
            "exp": issued + ttl_seconds,
            "role": str(role),
            "scope": " ".join(sorted(scopes_for(role))),
        }
        if structure_id is not None:
            payload["structure"] = str(structure_id)
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(payload, separators=(",", ":")).encode())
        )
        signature = await self._kms.sign(TOKEN_KEY, signing_input.encode(), signing.version)
        return signing_input + "." + _b64url(signature)


class TokenVerifier:
    def __init__(
        self, settings: Settings, keys: SigningKeys, cache: VerifiedTokens | None = None
    ) -> None:
        self._settings = settings
        self._keys = keys
        # A hit is honoured only while its key is live.
        self._cache = VerifiedTokens(settings.tokens.cache_size) if cache is None else cache

    async def verify(self, token: str) -> Claims:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated(reason="token_too_large")
        digest = digest_of(token)
        cached = self._cache.get(digest)
        if cached is not None:
            claims, kid = cached
            if (
                isinstance(claims, Claims)
                and claims.exp > time.time() - self._settings.tokens.leeway_seconds
                and kid in self._keys.by_kid
            ):
                self._cache.hit(digest)
                return claims
            self._cache.drop(digest)
        claims, kid = await self._verify_uncached(token)
        self._cache.put(digest, claims, kid)
        return claims

    async def _verify_uncached(self, token: str) -> tuple[Claims, str]:
        header = _raw_header(token)
        # Refuse before any key lookup: alg "none", HS256 with our public key as the
        # secret, or any algorithm other than the one we issue.
        if header.get("alg") != ALGORITHM:
            raise Unauthenticated(reason="token_algorithm")
        if "crit" in header:
            # We implement no extension; RFC 7515 4.1.11 says refuse what we do not know.
            raise Unauthenticated(reason="token_crit")
        kid = header.get("kid")
        if not isinstance(kid, str) or not _KID.match(kid):
            raise Unauthenticated(reason="token_kid")
        key = await self._keys.lookup(kid)
        if key is None:
            raise Unauthenticated(reason="token_unknown_key")
        s = self._settings.tokens
        try:
            payload = jwt.decode(
                token,
                key.key,
                algorithms=[ALGORITHM],  # exactly one: never taken from the token
                audience=s.audience,
                issuer=s.issuer,
                leeway=s.leeway_seconds,
                options={
                    "require": REQUIRED_CLAIMS,
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_nbf": True,
                    "verify_iat": True,  # refuses an iat in the future beyond leeway
                    "verify_aud": True,
                    "verify_iss": True,
                    "strict_aud": True,  # aud must be our audience string, not a list
                },
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(reason=refusal_reason(exc)) from None
        try:
            claims = msgspec.convert(payload, Claims)
        except msgspec.ValidationError:
            raise Unauthenticated(reason="token_claims") from None
        if claims.exp - claims.iat > s.max_lifetime_seconds:
            raise Unauthenticated(reason="token_lifetime")
        return claims, kid
