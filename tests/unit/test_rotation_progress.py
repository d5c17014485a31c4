"""Progress of `keys rotate` on stderr: plain lines for a pipe or a file, a rich bar on
a terminal."""

from __future__ import annotations

import io

from vault_service.progress import RotationProgress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    with RotationProgress("rewrap branch keys", 5, stream=out) as progress:
        progress.advance(2)
        progress.advance(3)
    assert out.getvalue().splitlines() == [
        "rewrap branch keys: 0/5",
        "rewrap branch keys: 2/5",
        "rewrap branch keys: 5/5",
    ]


def test_a_bar_on_a_terminal() -> None:
    out = _Terminal()
    with RotationProgress("re-seal records", 4, stream=out) as progress:
        progress.advance(4)
    text = out.getvalue()
    assert "re-seal records" in text and "4/4" in text
    assert "re-seal records: " not in text  # no plain lines


def test_plain_lines_with_the_rate() -> None:
    out = io.StringIO()
    with RotationProgress("import", 5, stream=out, rate=True) as progress:
        progress.advance(5)
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("import: 5/5 (") and last.endswith("/s)")
