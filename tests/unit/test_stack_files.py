"""The stack (vault_service.stack) runs the committed infra/ files; where a file names a
container's address or path literally, the copy it runs differs in exactly those values."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from vault_service.errors import ConfigurationError
from vault_service.stack import INFRA, Ports, StackState, derived_config


def state() -> StackState:
    ports = Ports(
        postgres=15432,
        openbao=18200,
        openbao_cluster=18201,
        replicas=[18001, 18002],
        proxy=18443,
        proxy_health=18081,
    )
    return StackState("/srv/stack", ports)


@pytest.mark.parametrize(
    ("name", "committed"),
    [("openbao", INFRA / "openbao" / "config.hcl"), ("caddy", INFRA / "proxy" / "Caddyfile")],
)
def test_derived_files_differ_only_in_addresses_and_paths(name: str, committed: Path) -> None:
    text, replacements = derived_config(name, state())
    original = committed.read_text(encoding="utf-8")
    changed = [
        line
        for line in difflib.ndiff(original.splitlines(), text.splitlines())
        if line.startswith("- ")
    ]
    # Every removed line held one of the replaced values, and nothing else was touched.
    assert len(changed) == len(replacements)
    for line in changed:
        assert any(old in line for old in replacements), line
    assert len(text.splitlines()) == len(original.splitlines())


def test_derived_caddyfile_balances_over_both_replicas() -> None:
    text, _ = derived_config("caddy", state())
    assert "reverse_proxy 127.0.0.1:18001 127.0.0.1:18002 {" in text
    assert "localhost:18443 {" in text
    assert "tls internal" in text and "max_size 1MB" in text


def test_a_changed_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "proxy").mkdir()
    (tmp_path / "proxy" / "Caddyfile").write_text("localhost:9999 {\n}\n", encoding="utf-8")
    monkeypatch.setattr("vault_service.stack.INFRA", tmp_path)
    with pytest.raises(ConfigurationError):
        derived_config("caddy", state())
