"""`vault-service dev`: everything on one machine, with demo data (vault_service/dev/)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    dev = sub.add_parser("dev", help="everything on one machine, with demo data")
    dev.add_argument("--reset", action="store_true", help="wipe .dev/ first")
    dev.add_argument("--data-dir", type=Path, default=Path(".dev"))
    dev.add_argument("--port", type=int, default=8000)
    dev.set_defaults(run=_dev)


def _dev(args: argparse.Namespace) -> int:
    from vault_service.dev.server import run_dev

    return run_dev(args.data_dir, reset=args.reset, port=args.port)
