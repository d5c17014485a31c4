"""`vault-service stats refresh`: seal every closed year not sealed yet, with the
service's role and keys (the same code as the service's scheduled round; one rebuild
at a time)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from vault_service.settings import Settings

__all__ = ["register"]


def register(sub: Any) -> None:
    stats = sub.add_parser("stats", help="the BI lane's aggregate").add_subparsers(
        dest="action", required=True
    )
    refresh = stats.add_parser(
        "refresh", help="compute and seal the tables of every closed year not sealed yet"
    )
    refresh.set_defaults(run=_refresh)


async def _stats_refresh(settings: Settings) -> dict[str, Any]:
    from vault_service.alerts.store import Alerts
    from vault_service.records.honeytokens import HONEYTOKEN_LABEL, Canaries
    from vault_service.services import service_side, stats_refresher

    async with service_side(settings) as service:
        canaries = Canaries(service.pool, await service.keys.derived_key(False, HONEYTOKEN_LABEL))
        await canaries.load()
        refresher = stats_refresher(
            settings,
            service.pool,
            service.records.sealer,
            service.kms,
            canaries.named,
            Alerts(service.pool),
        )
        done = await refresher.refresh()
    return {
        "refreshed_at": done.refreshed_at.isoformat(),
        "years_sealed": list(done.years),
        "tables": done.tables,
        "records": done.records,
        "canaries_left_out": done.canaries,
        "unreadable_left_out": done.failed,
    }


def _refresh(_args: argparse.Namespace) -> int:
    print(json.dumps(asyncio.run(_stats_refresh(Settings.from_env())), indent=2))
    return 0
