"""Authentication and authorization of every request (called by vault_service/access/gate.py).

One front door for two kinds of token, chosen by the token's `iss` alone: the
service's own (auth/tokens.py, the account named by `sub`), or a configured external
OpenID provider's (auth/oidc.py, the account its (issuer, subject) is linked to); one
principal type, one refusal mapping, one verified-token cache (auth/verified.py).

Deny by default: a route is public only if its handler says `opt={"public": True}`
(never through a path regex); every other route must name one `Permission` in
`opt["permission"]`, held both by the token's scopes and by the caller's current
role; a permission in MFA_PERMISSIONS also needs a multi-factor principal. Data
routes (`opt["data"]`) also need a valid `X-Purpose` for the role.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from litestar.types import Scope

from vault_service.auth.accounts import AccountGate, ExternalRefusal
from vault_service.auth.oidc import (
    ExternalIssuers,
    SignedButRefused,
    external_token_id,
    unverified_issuer,
)
from vault_service.auth.permissions import (
    MFA_PERMISSIONS,
    ROLE_PERMISSIONS,
    ROLE_PURPOSES,
    Permission,
    Purpose,
)
from vault_service.auth.principal import Principal, VerifiedActor
from vault_service.auth.tokens import TokenVerifier
from vault_service.errors import (
    AssuranceInsufficient,
    Forbidden,
    PurposeNotAllowed,
    PurposeRequired,
    Unauthenticated,
)

PUBLIC_OPT: Final = "public"
VERIFIED_CLAIMS: Final = "verified_claims"
"""Request state: the actor (VerifiedActor) of a token that verified and was then refused."""
_BEARER = re.compile(r"^Bearer ([A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*)$")
# A short reference ("rdv 12/03", "courrier CAF"), not a place for personal data,
# kept seven months in the access log: plain characters only, and nothing shaped like
# an identifier or a person (review finding: a NIR written with spaces or dots, a
# phone number, an e-mail address, a name with a birth date all went through).
_DETAIL = re.compile(r"[\w .,;:'()/-]{1,120}")
_DIGIT_RUN = re.compile(r"\d{6,}")
_MAX_DIGITS: Final = 9  # a NIR has 13 to 15, a phone number 10, however written
_FULL_DATE = re.compile(r"\d{1,2}\s*[/.-]\s*\d{1,2}\s*[/.-]\s*\d{2,4}")
# Two capitalised words in a row: a first name and a surname ("Jean Dupont").
_NAME = re.compile(r"\b[A-ZÀ-ÖØ-Þ][a-zß-öø-ÿ]+[\s'-]+[A-ZÀ-ÖØ-Þ][a-zß-öø-ÿ]+")
_PURPOSE_HEADERS: Final = frozenset({b"x-purpose", b"x-purpose-detail"})


async def authenticate(scope: Scope) -> Principal:
    """The principal of a request's bearer token, or Unauthenticated with its reason."""
    state = scope["app"].state
    header = None
    for key, value in scope["headers"]:
        if key == b"authorization":
            if header is not None:
                # Two credentials: a proxy may have checked the other one.
                raise Unauthenticated(reason="token_malformed")
            header = value.decode("latin-1")
    if header is None:
        raise Unauthenticated(reason="token_missing")
    if len(header) > 8200:
        raise Unauthenticated(reason="token_too_large")
    match = _BEARER.match(header)
    if match is None:
        raise Unauthenticated(reason="token_malformed")
    token = match[1]
    gate: AccountGate = state.account_gate
    external: ExternalIssuers | None = state.external_issuers
    # The verifier is chosen by the token's `iss` and nothing else: our own issuer, or
    # one configured external issuer. The claim is read unverified, only to route; each
    # verifier then checks it against its own configuration. A payload that does not
    # decode goes to our verifier, which names what is wrong with it.
    iss = unverified_issuer(token)
    if external is not None and iss is not None and external.handles(iss):
        try:
            ext = await external.verify(token)
        except SignedButRefused as exc:
            if exc.subject is not None:
                scope["state"][VERIFIED_CLAIMS] = await gate.external_actor(
                    exc.issuer, exc.subject, external_token_id(exc.issuer, exc.jti)
                )
            raise
        try:
            return await gate.external_principal(ext, external.assurance)
        except ExternalRefusal as exc:
            # The signature verified: logged as the linked account's (or the external
            # identity's, when linked to none), never counted as anonymous.
            scope["state"][VERIFIED_CLAIMS] = exc.actor
            raise
    if iss is not None and iss != state.settings.tokens.issuer:
        raise Unauthenticated(reason="token_issuer_unknown")
    verifier: TokenVerifier = state.token_verifier
    claims = await verifier.verify(token)
    try:
        return await gate.principal(claims)
    except Unauthenticated:
        # The signature verified: the refusal names the account (revoked, suspended,
        # stale), and is logged as that account's, never counted as anonymous.
        scope["state"][VERIFIED_CLAIMS] = VerifiedActor(
            claims.sub, str(claims.role), claims.structure, claims.jti
        )
        raise


def authorize(scope: Scope, opt: Mapping[str, Any]) -> None:
    """The route's declared permission, held by both the token's scopes and the
    account's current role; for data routes, a purpose the role may state."""
    if opt.get(PUBLIC_OPT):
        return
    permission = opt.get("permission")
    if not isinstance(permission, Permission):
        raise Forbidden()  # a route that forgot to declare a permission serves no one
    principal = scope.get("user")
    if not isinstance(principal, Principal):
        raise Unauthenticated(reason="token_missing")
    if (
        permission not in ROLE_PERMISSIONS[principal.role]
        or str(permission) not in principal.scopes
    ):
        raise Forbidden()
    if permission in MFA_PERMISSIONS and not principal.mfa:
        raise AssuranceInsufficient()
    if opt.get("data"):
        wanted: dict[str, str] = {}
        for key, value in scope["headers"]:
            if key in _PURPOSE_HEADERS:
                if key.decode() in wanted:
                    raise PurposeRequired("X-Purpose and X-Purpose-Detail may appear once")
                wanted[key.decode()] = value.decode("latin-1")
        scope["state"]["purpose"] = purpose_of(wanted, principal)


def plain_reference(text: str) -> bool:
    """Short plain text that a person states (a purpose detail, an alert comment):
    plain characters only; no run of six digits, no more than nine digits in all (a
    NIR, a phone number, with or without separators), no date with a year, no
    e-mail address (no `@` passes the character class), no name-like pair of
    capitalised words. A reference that fails is refused, never stored."""
    return (
        _DETAIL.fullmatch(text) is not None
        and _DIGIT_RUN.search(text) is None
        and sum(c.isdigit() for c in text) <= _MAX_DIGITS
        and _FULL_DATE.search(text) is None
        and _NAME.search(text) is None
    )


def purpose_of(headers: Mapping[str, str], principal: Principal) -> tuple[Purpose, str | None]:
    raw = headers.get("x-purpose")
    try:
        purpose = Purpose(raw) if raw is not None else None
    except ValueError:
        purpose = None
    if purpose is None:
        raise PurposeRequired()
    if purpose not in ROLE_PURPOSES[principal.role]:
        raise PurposeNotAllowed()
    detail = headers.get("x-purpose-detail")
    if detail is not None and not plain_reference(detail):
        raise PurposeRequired("X-Purpose-Detail must be a short reference (120 characters)")
    return purpose, detail
