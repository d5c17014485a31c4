"""Permissions as `scope:resource:action`, and what each role holds.

Every route declares one permission in its handler `opt`; a route without one is
refused (deny by default), unless it is explicitly public.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Role(StrEnum):
    COUNSELLOR = "counsellor"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"
    AUDITOR = "auditor"
    ANALYST = "analyst"


class Permission(StrEnum):
    RECORDS_CREATE = "case:records:create"
    RECORDS_READ = "case:records:read"
    RECORDS_UPDATE = "case:records:update"
    RECORDS_SEARCH = "case:records:search"
    RECORDS_SEARCH_NIR = "case:records:search_nir"
    CASELOAD_READ = "case:caseload:read"
    RECORDS_TRANSFER = "case:records:transfer"
    RECORDS_BREAK_GLASS = "case:records:break_glass"
    BREAK_GLASS_REVIEW = "case:break_glass:review"
    TRANSFERS_READ = "case:transfers:read"
    TRANSFERS_DECIDE = "case:transfers:decide"
    TRANSFERS_CANCEL = "case:transfers:cancel"
    AUDIT_READ = "audit:events:read"
    ALERTS_ACK = "audit:alerts:ack"
    STATS_READ = "stats:aggregates:read"


class Purpose(StrEnum):
    """Closed list of purposes of access (X-Purpose); logged with every access."""

    FOLLOW_UP = "follow_up"
    APPOINTMENT = "appointment"
    ORIENTATION = "orientation"
    ALLOWANCE = "allowance"
    TRANSFER = "transfer"
    LEGAL_REQUEST = "legal_request"
    DATA_SUBJECT_REQUEST = "data_subject_request"
    BREAK_GLASS = "break_glass"
    SUPERVISION = "supervision"
    AUDIT = "audit"
    STATISTICS = "statistics"


ROLE_PERMISSIONS: Final[dict[Role, frozenset[Permission]]] = {
    Role.COUNSELLOR: frozenset(
        {
            Permission.RECORDS_CREATE,
            Permission.RECORDS_READ,
            Permission.RECORDS_UPDATE,
            Permission.RECORDS_SEARCH,
            Permission.RECORDS_SEARCH_NIR,
            Permission.CASELOAD_READ,
            Permission.RECORDS_BREAK_GLASS,
        }
    ),
    # One structure: masked structure-wide view, transfers (asking, and answering
    # another structure's), break-glass review.
    Role.SUPERVISOR: frozenset(
        {
            Permission.RECORDS_READ,
            Permission.RECORDS_SEARCH,
            Permission.CASELOAD_READ,
            Permission.RECORDS_TRANSFER,
            Permission.TRANSFERS_READ,
            Permission.TRANSFERS_DECIDE,
            Permission.TRANSFERS_CANCEL,
            Permission.RECORDS_BREAK_GLASS,
            Permission.BREAK_GLASS_REVIEW,
        }
    ),
    # Admins manage accounts and keys through the CLI; never case data.
    Role.ADMIN: frozenset(),
    Role.AUDITOR: frozenset({Permission.AUDIT_READ, Permission.ALERTS_ACK}),
    # Counts with small cells suppressed (vault_service/stats/); never a row.
    Role.ANALYST: frozenset({Permission.STATS_READ}),
}

# Which roles may state which purposes on data routes.
ROLE_PURPOSES: Final[dict[Role, frozenset[Purpose]]] = {
    Role.COUNSELLOR: frozenset(
        {
            Purpose.FOLLOW_UP,
            Purpose.APPOINTMENT,
            Purpose.ORIENTATION,
            Purpose.ALLOWANCE,
            Purpose.TRANSFER,
            Purpose.DATA_SUBJECT_REQUEST,
            Purpose.BREAK_GLASS,
        }
    ),
    Role.SUPERVISOR: frozenset(
        {
            Purpose.FOLLOW_UP,
            Purpose.TRANSFER,
            Purpose.LEGAL_REQUEST,
            Purpose.DATA_SUBJECT_REQUEST,
            Purpose.BREAK_GLASS,
            Purpose.SUPERVISION,
        }
    ),
    Role.ADMIN: frozenset(),
    Role.AUDITOR: frozenset({Purpose.AUDIT}),
    Role.ANALYST: frozenset({Purpose.STATISTICS}),
}


# Routes whose permission is one of these need a second factor (Principal.mfa): reaching
# outside the caseload, the NIR, moving youth between counsellors or structures, and
# everything an auditor reads (the whole access log, breach reports).
MFA_PERMISSIONS: Final[frozenset[Permission]] = frozenset(
    {
        Permission.RECORDS_BREAK_GLASS,
        Permission.BREAK_GLASS_REVIEW,
        Permission.RECORDS_SEARCH_NIR,
        Permission.RECORDS_TRANSFER,
        Permission.TRANSFERS_DECIDE,
        Permission.TRANSFERS_CANCEL,
        Permission.AUDIT_READ,
        Permission.ALERTS_ACK,
    }
)


def scopes_for(role: Role) -> frozenset[str]:
    return frozenset(str(p) for p in ROLE_PERMISSIONS[role])
