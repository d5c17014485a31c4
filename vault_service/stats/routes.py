"""GET /v1/stats: analysts' counts (API.md), as JSON or CSV.

A data route like any other: `stats:aggregates:read` (the analyst role alone),
`X-Purpose: statistics`, one access-log entry per query naming its dimensions and
period (criteria, never a count), and the `stats.hour` budget, decided atomically
with that entry before the table is even read: a query over budget learns nothing
(not whether its table exists or is refused) and costs nothing.
"""

from __future__ import annotations

import datetime
from typing import Any, Final

import msgspec
from litestar import Controller, Request, Response, get

from vault_service.access.budgets import Charge, rate_limit_headers
from vault_service.access.recording import request_log
from vault_service.auth.permissions import Permission
from vault_service.auth.principal import Principal
from vault_service.errors import InvalidParameter
from vault_service.paging import Query
from vault_service.stats.service import DIMENSIONS, StatsService, parse_query

JSON: Final = "application/json"
CSV: Final = "text/csv; charset=utf-8"
_ALLOWED: Final = frozenset({"group_by", "since", "until", "format"})
_MAX_PARAM: Final = 128
_encoder = msgspec.json.Encoder()


class StatsCell(msgspec.Struct):
    """One cell: a value per output column (`*` for a margin), and its count (null
    when suppressed). `structure` comes with a `region` column."""

    count: int | None


class StatsDocument(msgspec.Struct):
    group_by: list[str]
    since: str
    until: str
    k: int
    sealed_at: str
    total: str
    cells: list[StatsCell]


def _wants_csv(request: Request[Any, Any, Any], params: Query) -> bool:
    chosen = params.get("format")
    if chosen is not None:
        if chosen not in ("json", "csv"):
            raise InvalidParameter("format is json or csv")
        return chosen == "csv"
    accept = request.headers.get("accept", "")
    return "text/csv" in accept and JSON not in accept


_DIMS = ", ".join(DIMENSIONS)


class StatsController(Controller):
    path = "/v1/stats"
    tags: Final = ["stats"]  # type: ignore[misc]

    @get(
        "/",
        opt={"permission": Permission.STATS_READ, "data": True, "action": "stats.query"},
        summary="Counts of youth records by up to three dimensions, small cells suppressed",
        description=(
            "Analysts only, with `X-Purpose: statistics`. One closed calendar year "
            "(`since` its January, `until` its December; default the last closed year), "
            "computed once when the year closed (`409 stats_not_sealed` before). "
            "Every cell of the grid and every "
            "margin (`*`), each with its count or null when suppressed (fewer than k youth, "
            "or a complement that keeps a suppressed cell from being recomputed). "
            "`Accept: text/csv` or `format=csv` for CSV. Each query is logged and counts "
            "against the `stats.hour` budget."
        ),
    )
    async def stats(
        self,
        request: Request[Principal, Any, Any],
    ) -> Response[bytes]:
        # Parsed strictly here (documented in vault_service/openapi.py).
        params = Query(request.query_params.multi_items(), max_length=_MAX_PARAM, allowed=_ALLOWED)
        csv = _wants_csv(request, params)
        query = parse_query(params, datetime.datetime.now(datetime.UTC).date())
        service: StatsService = request.app.state.stats
        log = request_log(request.scope)
        await log.allowed(Charge.STATS, criteria=query.criteria)
        table = await service.table(query)
        headers = rate_limit_headers(log.decision)
        if csv:
            name = f"stats-{'-'.join(query.group_by)}-{query.year}.csv"
            headers["Content-Disposition"] = f'attachment; filename="{name}"'
            return Response(table.to_csv().encode(), media_type=CSV, headers=headers)
        return Response(_encoder.encode(table.document()), media_type=JSON, headers=headers)
