"""The console's first view, timed in Debian's Chromium against a running service.

    source .dev/env    # after `make run` (vault-service dev)
    VAULT_SERVICE_CONSOLE_TOKEN=$(vault-service tokens issue --subject <auditor id>) \\
        python -m bench.console [--base http://127.0.0.1:8000] [--runs 5] [--witness-key KEY]

Each run opens a fresh browser context on /console/, pastes the token and times the
first view (sign-in to the access-volume chart and its table drawn), in the page
(performance.now) and from outside. The reference, measured in the same run: the
one API call that view makes (`GET /v1/audit/volume`, 14 days, by account) from
Python. With --witness-key, the checkpoint view is opened too and must show the log's
signature and that witness's cosignature verified in the browser.
The token comes from the environment (a command line is readable by every user).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import statistics
import sys
import time

import httpx
from playwright.async_api import async_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def reference(base: str, token: str, runs: int) -> list[float]:
    today = datetime.datetime.now(datetime.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    until = today + datetime.timedelta(days=1)
    params = {
        "by": "actor",
        "since": (until - datetime.timedelta(days=14)).isoformat(),
        "until": until.isoformat(),
    }
    headers = {"Authorization": f"Bearer {token}", "X-Purpose": "audit"}
    times = []
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        for _ in range(runs):
            started = time.perf_counter()
            r = await http.get("/v1/audit/volume", params=params, headers=headers)
            times.append(time.perf_counter() - started)
            r.raise_for_status()
    return times


async def run(base: str, token: str, runs: int, witness_key: str | None) -> int:
    walls, inside = [], []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for _ in range(runs):
                context = await browser.new_context(viewport={"width": 1280, "height": 900})
                page = await context.new_page()
                await page.goto(f"{base}/console/")
                await page.wait_for_function("() => document.body.dataset.ready === 'true'")
                await page.fill("#token", token)
                started = time.perf_counter()
                await page.click("#signin-form button[type=submit]")
                await page.wait_for_selector("#volume-chart canvas")
                await page.wait_for_selector("#volume-table tbody tr")
                walls.append(time.perf_counter() - started)
                await page.wait_for_function("() => document.body.dataset.firstViewMs")
                inside.append(float(await page.evaluate("document.body.dataset.firstViewMs")))
                if witness_key:
                    await page.click('#nav button[data-view="checkpoint"]')
                    await page.wait_for_function("() => document.body.dataset.checkpoint")
                    await page.fill("#witness-keys", witness_key)
                    await page.click("#witness-form button[type=submit]")
                    await page.wait_for_function("() => document.body.dataset.checkpoint")
                    rows = await page.locator("#signatures-table tbody tr").all_text_contents()
                    print("checkpoint:", await page.text_content("#checkpoint-status"))
                    for row in rows:
                        print("  ", row)
                    witness_key = None  # once is enough
                await context.close()
        finally:
            await browser.close()
    api = await reference(base, token, runs)
    median_view, median_api = statistics.median(walls), statistics.median(api)
    print(f"runs: {runs} (shared machine: figures are noisy)")
    print(
        f"first view, sign-in to chart and table: median {median_view * 1000:.0f} ms, "
        f"max {max(walls) * 1000:.0f} ms (in the page: median {statistics.median(inside):.0f} ms)"
    )
    print(f"reference, GET /v1/audit/volume alone: median {median_api * 1000:.1f} ms")
    print(f"ratio first view / API call: {median_view / median_api:.1f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="http://127.0.0.1:8000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--witness-key")
    args = parser.parse_args()
    token = os.environ.get("VAULT_SERVICE_CONSOLE_TOKEN", "").strip()
    if not token:
        print("VAULT_SERVICE_CONSOLE_TOKEN is not set (an auditor's token)", file=sys.stderr)
        return 2
    return asyncio.run(run(args.base, token, args.runs, args.witness_key))


if __name__ == "__main__":
    sys.exit(main())
