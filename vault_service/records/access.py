"""Who sees what of a record: the one home of the object-access decision.

Decided from the database row and the principal, never from anything the client
sends (the OWASP API1 failure):
- a counsellor sees the full record of the youth of their caseload (referent, or a
  live temporary/support assignment);
- a live break-the-glass grant shows the full record, only to a request that states
  `break_glass` as its purpose, so every such read is marked;
- a supervisor sees a masked view of the youth of their own structure;
- a cross-structure transfer request is answered by the receiving structure's
  supervisors and withdrawn by the sending structure's;
- anything else answers 404 exactly like a record that does not exist.

Pure functions: no I/O, nothing allocated on the read path but the answer.
"""

from __future__ import annotations

import enum
import uuid
from typing import Any, Protocol

from vault_service.auth.permissions import Purpose, Role
from vault_service.auth.principal import Principal
from vault_service.errors import NotFound


class View(enum.StrEnum):
    FULL = "full"
    MASKED = "masked"


class AccessFacts(Protocol):
    """What a decision reads of a row: `structure_id`, `referent_id`, and the caller's
    own `assigned` and `glass` flags (the repository's record query computes them in
    the same round trip). An asyncpg Record is one."""

    def __getitem__(self, key: str, /) -> Any: ...


def _in_caseload(principal: Principal, row: AccessFacts) -> bool:
    return (
        principal.role == Role.COUNSELLOR
        and row["structure_id"] == principal.structure_id
        and (row["referent_id"] == principal.account_id or row["assigned"])
    )


def decide(principal: Principal, row: AccessFacts, purpose: Purpose | None) -> View | None:
    """The view the caller gets of this row, or None (answer 404)."""
    # `_in_caseload` spelt out: this runs on every read, the hottest path there is.
    if (
        principal.role == Role.COUNSELLOR
        and row["structure_id"] == principal.structure_id
        and (row["referent_id"] == principal.account_id or row["assigned"])
    ):
        return View.FULL
    if row["glass"] and purpose is Purpose.BREAK_GLASS:
        return View.FULL
    if principal.role == Role.SUPERVISOR and row["structure_id"] == principal.structure_id:
        return View.MASKED
    return None


def may_write(principal: Principal, row: AccessFacts) -> bool:
    """Writes are for the caseload only: break-the-glass reads, it never writes."""
    return _in_caseload(principal, row)


def list_scope(principal: Principal) -> tuple[uuid.UUID, uuid.UUID | None]:
    """(structure, referent or None) that bound what a list or search may return.

    The repository's list queries apply the same caseload rule as `decide` (referent
    or live assignment) inside that structure; a supervisor's scope is the whole
    structure, and lists only ever show masked summaries."""
    if principal.structure_id is None:
        raise NotFound()
    referent = principal.account_id if principal.role == Role.COUNSELLOR else None
    return principal.structure_id, referent


def supervises(principal: Principal, structure_id: uuid.UUID | None) -> bool:
    """A supervisor acting on their own structure (transfers, grant reviews)."""
    return (
        principal.role == Role.SUPERVISOR
        and principal.structure_id is not None
        and structure_id == principal.structure_id
    )


def may_answer_transfer(principal: Principal, request: AccessFacts) -> bool:
    """Accepting or declining a transfer request (`to_structure`, `requested_by`) is
    for the receiving structure's supervisors, never for the one who asked: an account
    moved meanwhile from the sending structure would otherwise push a youth alone."""
    return (
        supervises(principal, request["to_structure"])
        and request["requested_by"] != principal.account_id
    )


def may_cancel_transfer(principal: Principal, request: AccessFacts) -> bool:
    """Withdrawing a transfer request (`from_structure`): the sending structure's
    supervisors."""
    return supervises(principal, request["from_structure"])


def may_break_glass_on(principal: Principal, structure_id: uuid.UUID | None) -> bool:
    """Break-the-glass opens only inside the caller's own structure."""
    return principal.structure_id is not None and structure_id == principal.structure_id
