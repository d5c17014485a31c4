"""`vault-service serve`: the API against the configured PostgreSQL and Vault."""

from __future__ import annotations

import argparse
from typing import Any

from vault_service.settings import Settings

__all__ = ["register"]


def register(sub: Any) -> None:
    serve = sub.add_parser("serve", help="the API against the configured PostgreSQL and Vault")
    serve.set_defaults(run=_serve)


def _serve(_args: argparse.Namespace) -> int:
    from vault_service.serving import serve

    return serve(Settings.from_env())
