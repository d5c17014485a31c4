"""A benchmark-only build of the service with the record integrity check taken out
(records/sealing.py `check_integrity`), to report what it costs on reads. Never used
outside bench/: the service itself has no switch for it. Records are still written
with their tags; only the check on reading is skipped."""

from __future__ import annotations

from typing import Any

from vault_service.records.sealing import Sealer


def _no_check(*args: Any, **kwargs: Any) -> None:
    return None


Sealer.check_integrity = staticmethod(_no_check)  # type: ignore[method-assign,assignment]

from vault_service.asgi import app  # noqa: E402 - after the patch, on purpose

__all__ = ["app"]
