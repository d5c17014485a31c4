"""The authenticated caller, as the routes see it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from vault_service.auth.permissions import Role


@dataclass(frozen=True, slots=True)
class Principal:
    account_id: uuid.UUID
    role: Role
    structure_id: uuid.UUID | None
    scopes: frozenset[str]
    jti: uuid.UUID
    expires_at: int
    # A newly activated account: no break-glass, half budget (issue 3).
    restricted: bool = False
    # Authenticated with a second factor: an external token whose acr/amr its issuer's
    # configuration counts as multi-factor, or one of the service's own tokens (issued
    # to an account by an admin's command, not by a password). Routes whose permission
    # is in MFA_PERMISSIONS refuse a principal without it.
    mfa: bool = False


@dataclass(frozen=True, slots=True)
class VerifiedActor:
    """Who a token names once its signature verified, kept when the request is then
    refused (account state, link, assurance) so that the refusal is logged as theirs.
    An external identity linked to no account is named by `external_actor_id`."""

    actor_id: uuid.UUID
    role: str | None
    structure_id: uuid.UUID | None
    jti: uuid.UUID | None
