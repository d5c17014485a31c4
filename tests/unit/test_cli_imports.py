"""What the CLI loads before it runs anything: the offline tools that auditors and
witnesses run import nothing of a server, and building the parser (every command's
`--help`) loads no Vault client, web framework, statistics solver or composition root
(the record reasons it offers come with the database driver's error types)."""

from __future__ import annotations

import subprocess
import sys

SERVER_MODULES = ("asyncpg", "hvac", "litestar", "granian", "scipy", "vault_service.services")


def _loaded_after(code: str, modules: tuple[str, ...] = SERVER_MODULES) -> set[str]:
    probe = "\n".join(
        (
            "import sys",
            code,
            f"print('loaded:' + ','.join(m for m in {modules!r} if m in sys.modules))",
        )
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    line = next(x for x in reversed(out.splitlines()) if x.startswith("loaded:"))
    return {m for m in line.removeprefix("loaded:").split(",") if m}


def test_audit_verify_loads_nothing_of_a_server() -> None:
    loaded = _loaded_after(
        "from vault_service.cli import main\n"
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['audit', 'verify', '--help'])"
    )
    assert loaded == set()


def test_building_the_parser_loads_nothing_of_a_server() -> None:
    loaded = _loaded_after(
        "from vault_service.cli import build_parser\nbuild_parser()", SERVER_MODULES[1:]
    )
    assert loaded == set()
