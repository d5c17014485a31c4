"""Soak: mixed load on a stack of its own, then the post-fault checks.

    python -m vault_service.stack.soak --minutes 30 [--workers 4] [--pause 0.02]
                                       [--state-dir DIR] [--output soak.json]

Starts the stack (vault_service.stack, with the load's budgets), runs `workers`
counsellors through Caddy (create and read, vault_service.stack.load) for `minutes`,
samples each replica's resident memory every `--sample` seconds, then stops the load
and checks: no error answer, no transport error, every acknowledged write present and
readable, every data answer in the access log, `vault-service audit verify` on the
whole log. Memory: the mean of the last three samples against the first sample after
warm-up (the first fifth of the run, at least one minute); growth must stay under 5%.
Exit status 0 when everything holds, 1 otherwise; the figures are printed as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vault_service.stack import start
from vault_service.stack.load import LOAD_OVERRIDES, Load, check, dump, make_accounts, replica_rss

MAX_GROWTH = 0.05


def rss_growth(samples: list[tuple[float, dict[str, int]]], warmup: float) -> dict[str, Any]:
    """Per replica: RSS after warm-up, at the end (mean of the last three samples), growth."""
    after = [s for s in samples if s[0] >= warmup]
    if len(after) < 4:
        return {}
    out: dict[str, Any] = {}
    for name in after[0][1]:
        base = after[0][1][name]
        end = sum(s[1][name] for s in after[-3:]) / 3
        out[name] = {
            "rss_after_warmup_mib": round(base / 2**20, 1),
            "rss_end_mib": round(end / 2**20, 1),
            "growth": round((end - base) / base, 4) if base else None,
        }
    return out


async def soak(args: argparse.Namespace) -> int:
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="vault-service-soak-"))
    t_start = time.monotonic()
    stack = start(state_dir, replica_overrides=LOAD_OVERRIDES)
    try:
        accounts = await make_accounts(stack, args.workers)
        duration = args.minutes * 60
        warmup = max(60.0, duration / 5)
        samples: list[tuple[float, dict[str, int]]] = []
        t0 = time.monotonic()
        async with Load(stack, accounts, pause=args.pause, write_share=args.write_share) as load:
            while (elapsed := time.monotonic() - t0) < duration:
                samples.append((elapsed, replica_rss(stack)))
                print(
                    f"soak: {elapsed / 60:5.1f} min, {load.tally.requests} requests, "
                    f"rss {[round(v / 2**20) for v in samples[-1][1].values()]} MiB",
                    file=sys.stderr,
                    flush=True,
                )
                await asyncio.sleep(min(args.sample, max(0.0, duration - elapsed)))
            samples.append((time.monotonic() - t0, replica_rss(stack)))
        tally = load.tally
        verdict = await check(stack, accounts, [tally])
        growth = rss_growth(samples, warmup)
        errors = sum(n for k, n in tally.statuses.items() if not k.endswith(("200", "201")))
        ok = (
            verdict.ok()
            and errors == 0
            and tally.transport_errors == 0
            and bool(growth)
            and all(g["growth"] is not None and g["growth"] < MAX_GROWTH for g in growth.values())
        )
        report = {
            "minutes": args.minutes,
            "workers": args.workers,
            "load": tally.summary(),
            "requests_per_second": round(tally.requests / duration, 1),
            "error_answers": errors,
            "memory": growth,
            "checks": {k: v for k, v in verdict.__dict__.items() if k != "verify_output"},
            "verify": verdict.verify_output.strip().splitlines()[-1:],
            "wall_minutes": round((time.monotonic() - t_start) / 60, 1),
            "ok": ok,
        }
        text = dump(report)
        print(text)
        if args.output:
            args.output.write_text(text + "\n", encoding="utf-8")
        return 0 if ok else 1
    finally:
        stack.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vault_service.stack.soak")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between requests")
    parser.add_argument("--write-share", type=float, default=0.3)
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between RSS samples")
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    # Tokens live an hour at most (jwt_max_lifetime_seconds): the soak stays within it.
    if not 1 <= args.minutes <= 50:
        parser.error("--minutes must be between 1 and 50 (the tokens live an hour)")
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
