"""Budgets on bulk reads: what a request claims, and how a decision is answered.

What leaks in a breach is records, not requests, so each principal has a budget of
*distinct records* returned per fixed UTC window (the hour, the day); re-reading a
record already counted in the window is free. Kinds, per account unless stated:

- `record.hour`, `record.day`: full views, whose encrypted fields were returned;
- `structure.hour`: full views by all accounts of one structure together;
- `summary.hour`: masked views (caseload, search, a supervisor's view of a record);
- `break_glass.day`: full views read under break-the-glass (on top of the above);
- `nir.hour`, `nir.day`: NIR lookups, each lookup counted, whatever it finds;
- `transfer.hour`: distinct records a supervisor transfers or assigns;
- `stats.hour`: statistics queries of an analyst, each one counted;
- `volume.hour`: access-volume queries of an auditor (a grouping over up to 93 days
  of the access log), each one counted.

Limits come from the settings per role and are halved while an account is restricted
(newly activated). The decision itself is made in PostgreSQL, atomically with the
durable access-log entry (access/sequencer.py), so it is exact across replicas.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from typing import Final

from vault_service.access.sequencer import BudgetClaim, Decision
from vault_service.auth.permissions import Role
from vault_service.auth.principal import Principal
from vault_service.errors import VaultServiceError
from vault_service.settings import BudgetSettings

__all__ = ["BudgetExceeded", "BudgetPolicy", "Charge", "rate_limit_headers"]


class Charge(enum.Enum):
    """What a response returns, hence which budgets it draws on."""

    NONE = "none"  # nothing personal (a write's acknowledgement): headers only
    FULL = "full"
    SUMMARY = "summary"
    NIR = "nir"
    TRANSFER = "transfer"  # a record handed to another account (transfer, assignment)
    STATS = "stats"  # a table of counts: no record, each query counted
    VOLUME = "volume"  # the access log grouped per day: no record, each query counted


class BudgetExceeded(VaultServiceError):
    """429: the budget named in the code is spent for its window; nothing was returned.
    The access log already holds the refusal when `logged` is true."""

    status = 429
    code = "record_budget_exceeded"
    title = "The budget of records for this period is spent; nothing was returned"

    def __init__(self, decision: Decision, *, logged: bool) -> None:
        super().__init__(headers=rate_limit_headers(decision, retry_after=True))
        kind = (decision.budget or "record.hour").partition(".")[0]
        self.code = f"{kind}_budget_exceeded"  # type: ignore[misc]
        self.logged = logged


def rate_limit_headers(decision: Decision, *, retry_after: bool = False) -> dict[str, str]:
    """RateLimit-Policy and RateLimit (IETF httpapi ratelimit-headers draft) for the
    budget that binds the request most; Retry-After on a refusal."""
    if decision.budget is None or decision.limit is None:
        return {}
    name = decision.budget.replace(".", "-")
    window = 86_400 if decision.budget.endswith(".day") else 3_600
    reset = max(int(decision.reset_seconds or 1), 1)
    headers = {
        "RateLimit-Policy": f'"{name}";q={decision.limit};w={window}',
        "RateLimit": f'"{name}";r={max(int(decision.remaining or 0), 0)};t={reset}',
    }
    if retry_after:
        headers["Retry-After"] = str(reset)
    return headers


class BudgetPolicy:
    def __init__(self, budgets: BudgetSettings) -> None:
        # Admins never read case data: no setting, a budget of 0.
        self._record_hour = dict.fromkeys(Role, 0)
        self._record_day = dict.fromkeys(Role, 0)
        self._summary_hour = dict.fromkeys(Role, 0)
        for role in _ROLES:
            self._record_hour[role] = budgets.record_hour(role)
            self._record_day[role] = budgets.record_day(role)
            self._summary_hour[role] = budgets.summary_hour(role)
        self._structure_hour = budgets.budget_structure_hour
        self._break_glass_day = budgets.budget_break_glass_day
        self._nir_hour = budgets.budget_nir_hour
        self._nir_day = budgets.budget_nir_day
        self._transfer_hour = budgets.budget_transfer_hour
        self._stats_hour = budgets.budget_stats_hour
        self._volume_hour = budgets.budget_volume_hour

    def claims(
        self,
        principal: Principal,
        charge: Charge,
        record_ids: Sequence[uuid.UUID] = (),
        *,
        break_glass: bool = False,
    ) -> list[BudgetClaim]:
        """The budgets that `record_ids`, returned as `charge`, draw on."""
        role = principal.role
        account = principal.account_id
        half = 2 if principal.restricted else 1
        if charge is Charge.FULL:
            claims = [
                BudgetClaim(account, "record.hour", self._record_hour[role] // half, record_ids),
                BudgetClaim(account, "record.day", self._record_day[role] // half, record_ids),
            ]
            if principal.structure_id is not None:
                claims.append(
                    BudgetClaim(
                        principal.structure_id, "structure.hour", self._structure_hour, record_ids
                    )
                )
            if break_glass:
                claims.append(
                    BudgetClaim(
                        account, "break_glass.day", self._break_glass_day // half, record_ids
                    )
                )
            return claims
        if charge is Charge.SUMMARY:
            return [
                BudgetClaim(account, "summary.hour", self._summary_hour[role] // half, record_ids)
            ]
        if charge is Charge.NIR:
            # Every lookup counts, whatever it finds: a fresh id stands for the lookup.
            # Its results (a few masked summaries) draw on no other budget: were they
            # charged to the summary budget, a spent summary budget would refuse (and
            # not charge) exactly the lookups that found someone, and the difference
            # between 200 and 429 would tell whether a NIR is known.
            lookup = (uuid.uuid4(),)
            return [
                BudgetClaim(account, "nir.hour", self._nir_hour // half, lookup),
                BudgetClaim(account, "nir.day", self._nir_day // half, lookup),
            ]
        if charge is Charge.TRANSFER:
            # Custody moves: one supervisor handing a structure to one counsellor is the
            # bulk read of tomorrow.
            return [BudgetClaim(account, "transfer.hour", self._transfer_hour // half, record_ids)]
        if charge is Charge.STATS:
            # No record is returned; a fresh id stands for the query, as for a NIR
            # lookup, so that every query counts.
            return [BudgetClaim(account, "stats.hour", self._stats_hour // half, (uuid.uuid4(),))]
        if charge is Charge.VOLUME:
            # Not the analysts' budget: that one guards suppressed cells against
            # differencing, this one the database against an auditor's (or a stolen
            # auditor token's) repeated quarter-long scans of the log. Each query counts.
            return [BudgetClaim(account, "volume.hour", self._volume_hour // half, (uuid.uuid4(),))]
        # Nothing returned: the record budget's state, for the headers.
        return [BudgetClaim(account, "record.hour", self._record_hour[role] // half, ())]


_ROLES: Final = (Role.COUNSELLOR, Role.SUPERVISOR, Role.AUDITOR, Role.ANALYST)
