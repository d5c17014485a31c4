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
