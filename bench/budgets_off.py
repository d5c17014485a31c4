"""A benchmark-only build of the service with record budgets taken out, to report what
they cost. Never used outside bench/: the service itself has no switch for budgets.

Every request still makes its access-log entry durable through the same statement; it
only claims no budget, so the statement decides nothing and reads no budget row.
"""

from __future__ import annotations

from typing import Any

from vault_service.access.budgets import BudgetPolicy


def _no_claims(self: BudgetPolicy, *args: Any, **kwargs: Any) -> list[Any]:
    return []


BudgetPolicy.claims = _no_claims  # type: ignore[method-assign]

from vault_service.asgi import app  # noqa: E402 - after the patch, on purpose

__all__ = ["app"]
