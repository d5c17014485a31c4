"""The admin CLI: `vault-service dev|serve|migrate|tokens|accounts|keys|records|retention|...`.

One module per command group; each registers its parsers and a handler that parses,
calls the services (built by vault_service/services.py) and prints. Handlers import
what they run when they run: building the parser imports no pool, Vault client or
statistics solver, so `--help` and the light commands start at once. Secrets never
come from command-line options (they would sit in shell history and `ps`): Vault and
database credentials come from the environment or files, read through the settings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vault_service.cli.audit import is_standalone, standalone
from vault_service.cli.output import failure_line
from vault_service.errors import VaultServiceError
from vault_service.settings import log_level

__all__ = ["build_parser", "failure_line", "main"]

DESCRIPTION = """The admin CLI: `vault-service dev|serve|migrate|tokens|accounts|keys|records|\
retention|...`.

Secrets never come from command-line options (they would sit in shell history and
`ps`): Vault and database credentials come from the environment or files.
"""


def build_parser() -> argparse.ArgumentParser:
    from vault_service.cli import (
        accounts,
        audit,
        defence,
        dev,
        imports,
        keys,
        records,
        serve,
        setup,
        stats,
        tokens,
    )

    parser = argparse.ArgumentParser(prog="vault-service", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (dev, serve, stats, setup, tokens, accounts, defence, records, audit, keys):
        group.register(sub)
    imports.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from vault_service.observability import configure_logging

    configure_logging(log_level(), stream=sys.stderr)
    args = None if is_standalone(argv) else build_parser().parse_args(argv)
    try:
        return standalone(argv) if args is None else int(args.run(args))
    except VaultServiceError as exc:
        print(f"error: {exc.code}: {exc.detail}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - every command ends with one line, never a traceback
        print(f"error: {failure_line(exc)}", file=sys.stderr)
        return 1
