"""PyJWT's refusals as our stable reason codes, shared by our own tokens
(auth/tokens.py) and external identity providers' tokens (auth/oidc.py)."""

from __future__ import annotations

from typing import Final

import jwt

# Tested in this order.
PYJWT_REFUSALS: Final[tuple[tuple[type[jwt.PyJWTError], str], ...]] = (
    (jwt.ExpiredSignatureError, "token_expired"),
    (jwt.ImmatureSignatureError, "token_not_yet_valid"),
    (jwt.InvalidAudienceError, "token_audience"),
    (jwt.InvalidIssuerError, "token_issuer"),
    (jwt.MissingRequiredClaimError, "token_claims"),
    (jwt.InvalidSignatureError, "token_signature"),
)


def refusal_reason(
    exc: jwt.PyJWTError,
    extra: tuple[tuple[type[jwt.PyJWTError], str], ...] = (),
    default: str = "token_invalid",
) -> str:
    for kind, reason in (*PYJWT_REFUSALS, *extra):
        if isinstance(exc, kind):
            return reason
    return default
