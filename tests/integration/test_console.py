"""The auditor and DPO console in a real browser (Debian's Chromium through Playwright)
against a real `vault-service serve` process on the test stack.

Seeded through the API: records whose names, e-mail and NIR are canary strings, reads
of them, a break-the-glass grant and its review; one open alert. The test signs in by
pasting a token, opens every view, drills down, verifies the checkpoint in the browser
(and sees a tampered one fail), exports reports, checks screenshots, runs axe-core,
scans the DOM for the canaries and proves the CSP blocks an injected inline script.
Chromium missing is a failure, not a skip: `make test` installs it.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import secrets
import struct
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from playwright.async_api import Page, async_playwright

from tests.conftest import Stack, World, load_fixture, serve_processes
from tests.integration.test_admin_acts import _login, _ok
from tests.integration.test_cli import _cli, _env
from vault_service.audit.witness import CosignatureVerifier, cosign
from vault_service.auth.permissions import Role
from vault_service.console.routes import content_security_policy

pytestmark = pytest.mark.integration
CONTENT_SECURITY_POLICY = content_security_policy(None)
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE = (Path(__file__).parent.parent / "vendor" / "axe.min.js").read_text("utf-8")
FULL = json.loads(load_fixture("full_record.json"))
CONSOLE_PAGE = 50  # rows per page of the alerts and grants lists (app.js PAGE)
VIEWS = {
    "volume": ("Volume d’accès", "Access volume"),
    "alerts": ("Alertes ouvertes", "Open alerts"),
    "grants": ("Bris de glace : accès et revues", "Break-the-glass grants and reviews"),
    "checkpoint": ("Dernier point de contrôle", "Latest checkpoint"),
    "reports": ("Rapports", "Reports"),
}


def png_shows_something(png: bytes) -> tuple[int, int, int]:
    """(width, height, distinct byte values of the decompressed pixel rows). A blank
    page compresses to a handful of values (white and the row filter bytes); a page with
    text, tables and a chart to far more."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    at, idat = 8, b""
    while at < len(png):
        (length,) = struct.unpack(">I", png[at : at + 4])
        kind = png[at + 4 : at + 8]
        if kind == b"IDAT":
            idat += png[at + 8 : at + 8 + length]
        at += 12 + length
    return width, height, len(set(zlib.decompress(idat)))


async def axe_violations(page: Page) -> list[dict[str, Any]]:
    # Evaluated through the DevTools protocol, which the page's CSP does not govern
    # (an injected <script> would be refused, as the CSP test below shows).
    await page.evaluate(AXE)
    found: list[dict[str, Any]] = await page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ['violations']})).violations
            .map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target)}))"""
    )
    return [v for v in found if v["impact"] in ("serious", "critical")]


async def dom_text(page: Page) -> str:
    html: str = await page.content()
    inner: str = await page.evaluate(
        """() => document.body.innerText + [...document.querySelectorAll('input, textarea')]
            .map(e => e.value).join(' ')"""
    )
    return html + inner


async def seed(client: Any, world: World, owner: Any) -> dict[str, Any]:
    tag = secrets.token_hex(4)
    canaries = [f"Zqcanary{tag}", f"Zqprenom{tag}", f"zq{tag}@canary.example", FULL["nir"]]
    sid = await world.structure()
    counsellor, colleague = await world.counsellor(sid), await world.counsellor(sid)
    supervisor = await world.account(Role.SUPERVISOR, sid)
    auditor = await world.account(Role.AUDITOR, None, ttl=1800)
    body = {
        **FULL,
        "birth_name": canaries[0],
        "first_names": [canaries[1]],
        "email": canaries[2],
    }
    ids = []
    for _ in range(3):
        r = await client.post("/v1/records", json=body, headers=counsellor.headers())
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    for rid in ids:
        r = await client.get(f"/v1/records/{rid}", headers=counsellor.headers())
        assert r.status_code == 200 and canaries[0] in r.text  # the canary is really there
    r = await client.post(
        f"/v1/records/{ids[0]}/break-glass",
        json={"reason": "safety_emergency"},
        headers=colleague.headers(purpose="break_glass"),
    )
    assert r.status_code == 201, r.text
    grant = r.json()["grant_id"]
    r = await client.post(
        f"/v1/break-glass/{grant}/review",
        json={"outcome": "unjustified"},
        headers=supervisor.headers(purpose="supervision"),
    )
    assert r.status_code == 204, r.text
    # One open alert, as the bulk-read defence would raise (its own tests drive that).
    alert = uuid.uuid4()
    await owner.execute(
        "INSERT INTO alerts (id, severity, kind, account_id, structure_id, details) "
        "VALUES ($1, 'warning', 'budget.exceeded', $2, $3, '{\"budget\": \"records-hour\"}')",
        alert,
        counsellor.id,
        sid,
    )
    # More open alerts and grants than one console page (50), all newer than the ones
    # above: newest first, those are on a later page, reached with "Show more". Removed
    # by the test when it ends (other tests read the first page of every alert).
    fillers = [uuid.uuid4() for _ in range(CONSOLE_PAGE + 5)]
    await owner.executemany(
        "INSERT INTO alerts (id, severity, kind) VALUES ($1, 'info', 'rule.console_filler')",
        [(f,) for f in fillers],
    )
    await owner.executemany(
        "INSERT INTO break_glass_grants (id, record_id, account_id, structure_id, reason, "
        "expires_at) VALUES ($1, $2, $3, $4, 'service_continuity', now() + interval '1 hour')",
        [(f, uuid.UUID(ids[1]), colleague.id, sid) for f in fillers],
    )
    return {
        "fillers": fillers,
        "canaries": canaries,
        "counsellor": counsellor,
        "auditor": auditor,
        "ids": ids,
        "grant": grant,
        "alert": alert,
        "structure": sid,
        "structure_accounts": (counsellor.id, colleague.id, supervisor.id),
    }


async def more_until(page: Page, name: str, wanted: Any) -> None:
    """Press "Show more" of a list (focused, then Enter: the keyboard's way) until
    `wanted` (a locator) has a row, or, with None, until the list is complete."""
    for _ in range(200):
        if wanted is not None and await wanted.count() > 0:
            return
        button = page.locator(f"#{name}-more")
        if await button.is_hidden():
            assert wanted is None, f"{name}: the list ended without the row"
            return
        pages = await page.get_attribute(f"#{name}-table", "data-pages")
        await button.focus()
        await page.keyboard.press("Enter")
        await page.wait_for_function(
            "([n, p]) => document.querySelector(`#${n}-table`).dataset.pages !== p",
            arg=[name, pages],
        )
    raise AssertionError(f"{name}: more than 200 pages")


async def show(page: Page, view: str, errors: list[str] | None = None) -> None:
    await page.click(f'#nav button[data-view="{view}"]')
    await page.wait_for_function(
        "v => document.body.dataset.view === v && "
        "!['Chargement…', 'Loading…'].includes(document.querySelector('#status').textContent)",
        arg=view,
    )
    assert await page.text_content("#status") in ("Chargé.", "Loaded."), (view, errors)


async def test_console_end_to_end(
    stack: Stack, client: Any, world: World, owner: Any, tmp_path: Path
) -> None:
    assert CHROMIUM.exists(), "Chromium is missing: apt-get install -y chromium (make test does)"
    seeded = await seed(client, world, owner)
    canaries: list[str] = seeded["canaries"]
    auditor = seeded["auditor"]
    async with serve_processes(stack, 1) as served, async_playwright() as pw:
        base = served.bases[0]
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(
                accept_downloads=True, viewport={"width": 1280, "height": 900}
            )
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on(
                "console",
                # The page's own failures; not the browser's notes on the 401 of the
                # wrong token above or the absent favicon.
                lambda m: errors.append(m.text) if m.text.startswith("console_failure") else None,
            )

            # --- the page and its headers ---------------------------------------------
            response = await page.goto(f"{base}/console/")
            assert response is not None and response.status == 200
            headers = await response.all_headers()
            assert headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            for directive in ("default-src 'self'", "frame-ancestors 'none'", "script-src 'self'"):
                assert directive in headers["content-security-policy"]
            assert "unsafe-inline" not in headers["content-security-policy"]
            for asset in ("app.js", "note.js", "i18n.js", "console.css", "vendor/uPlot.esm.js"):
                r = await served.http.get(f"{base}/console/{asset}")
                assert r.status_code == 200, asset
                assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            r = await served.http.get(f"{base}/console/%2e%2e/app.py")
            assert r.status_code == 404
            await page.wait_for_function("() => document.body.dataset.ready === 'true'")
            assert await axe_violations(page) == []

            # --- sign-in: a wrong token is refused with its code --------------------------
            await page.fill("#token", "not-a-token")
            await page.click("#signin-form button[type=submit]")
            await page.wait_for_function(
                "() => document.querySelector('#signin-error').textContent"
            )
            assert "token_malformed" in await page.text_content("#signin-error") or "http_401" in (
                await page.text_content("#signin-error") or ""
            )

            # --- sign-in with a pasted token, first view timed ----------------------------
            await page.fill("#token", auditor.token)
            started = time.perf_counter()
            await page.click("#signin-form button[type=submit]")
            await page.wait_for_selector("#volume-chart canvas")
            await page.wait_for_selector("#volume-table tbody tr")
            first_view = time.perf_counter() - started
            in_page = await page.evaluate("document.body.dataset.firstViewMs")
            print(
                f"\nconsole first view (sign-in to chart and table): {first_view * 1000:.0f} ms "
                f"wall, {in_page} ms in the page"
            )
            assert first_view < 5.0  # the 1 s target is reported above; 5 s on a shared CI box

            # --- the volume view: chart, table, drill-down --------------------------------
            assert await page.text_content("#view-volume h2") == VIEWS["volume"][0]
            counsellor_id = str(seeded["counsellor"].id)
            row = page.locator("#volume-table tbody tr", has_text=counsellor_id).first
            assert await row.count() == 1
            cells = await row.locator("td").all_text_contents()
            assert int(cells[2]) >= 4 and int(cells[3]) >= 6  # 3 creates, 3 reads (+ grant)
            await row.get_by_role("button").click()
            await page.wait_for_selector("#drill:not([hidden]) #drill-table tbody tr")
            actions = await page.locator(
                "#drill-table tbody tr td:nth-child(3)"
            ).all_text_contents()
            assert "record.read" in actions and "record.create" in actions
            verified = await page.locator(
                "#drill-table tbody tr td:nth-child(8)"
            ).all_text_contents()
            assert set(verified) == {"oui"}
            # The chart really drew something (pixels, not a blank canvas).
            inked = await page.evaluate(
                """() => { const c = document.querySelector('#volume-chart canvas');
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }"""
            )
            assert inked > 500
            # By structure: the seeded structure's row, drilled down to its entries.
            await page.select_option("#volume-by", "structure")
            await page.click("#volume-form button[type=submit]")
            srow = page.locator("#volume-table tbody tr", has_text=str(seeded["structure"])).first
            await srow.wait_for()
            scells = await srow.locator("td").all_text_contents()
            await srow.get_by_role("button").click()
            await page.wait_for_selector("#drill:not([hidden]) #drill-table tbody tr")
            # Filtered by the API: exactly the structure's entries of that day, as many
            # as the volume row counts, and made by its own accounts only.
            await more_until(page, "drill", None)
            drilled = await page.locator(
                "#drill-table tbody tr td:nth-child(5)"
            ).all_text_contents()
            assert len(drilled) == int(scells[2]), (len(drilled), scells)
            assert set(drilled) <= {str(a) for a in seeded["structure_accounts"]}

            shots: dict[str, bytes] = {}
            seen: dict[str, str] = {}

            async def check_view(view: str) -> None:
                assert await page.text_content(f"#view-{view} h2") == VIEWS[view][0]
                assert await axe_violations(page) == [], view
                shots[view] = await page.screenshot(full_page=True)
                (tmp_path / f"{view}.png").write_bytes(shots[view])
                seen[view] = await dom_text(page)

            await check_view("volume")

            # --- alerts ---------------------------------------------------------------------
            await show(page, "alerts", errors)
            alert_row = page.locator("#alerts-table tbody tr", has_text=counsellor_id)
            # Newest first, a page of 50: the seeded alert is older than the fillers, so
            # not on the first page; "Show more", from the keyboard, brings it.
            assert await page.locator("#alerts-table tbody tr").count() == CONSOLE_PAGE
            assert await alert_row.count() == 0
            assert "d’autres suivent" in (await page.text_content("#alerts-count") or "")
            await more_until(page, "alerts", alert_row)
            assert await page.locator("#alerts-table tbody tr").count() > CONSOLE_PAGE
            assert "budget.exceeded" in (await alert_row.first.text_content() or "")
            raised = await page.locator("#alerts-table tbody tr td:first-child").all_text_contents()
            assert raised == sorted(raised, reverse=True)  # newest first, across pages
            await check_view("alerts")
            # Acknowledged from the console: a comment is required, then the alert leaves
            # the open list, acknowledged by this auditor, with an entry in the log.
            alert_id = str(seeded["alert"])
            await page.click(f'#alerts-table tbody tr:has-text("{counsellor_id}") button')
            assert (
                await page.text_content("#status")
                == "Un commentaire est nécessaire pour acquitter."
            )
            await page.fill(f"#ack-{alert_id}", "Vérifié avec la structure")
            await page.click(f'#alerts-table tbody tr:has-text("{counsellor_id}") button')
            await page.wait_for_function(
                "() => document.querySelector('#status').textContent.startsWith('Alerte ')"
            )
            # Gone from every page, not only from the first one the list reloaded.
            await more_until(page, "alerts", None)
            assert "la liste est complète" in (await page.text_content("#alerts-count") or "")
            assert await alert_row.count() == 0
            row = await owner.fetchrow(
                "SELECT state, acked_by, ack_comment FROM alerts WHERE id = $1", seeded["alert"]
            )
            assert tuple(row) == ("acknowledged", auditor.id, "Vérifié avec la structure")

            # --- break-the-glass ----------------------------------------------------------
            await show(page, "grants", errors)
            grant_row = page.locator("#grants-table tbody tr", has_text=seeded["ids"][0])
            assert await page.locator("#grants-table tbody tr").count() == CONSOLE_PAGE
            assert await grant_row.count() == 0
            await more_until(page, "grants", grant_row)
            opened = await page.locator("#grants-table tbody tr td:first-child").all_text_contents()
            assert opened == sorted(opened, reverse=True)
            text = await grant_row.first.text_content() or ""
            assert "safety_emergency" in text and "unjustified" in text
            await check_view("grants")

            # --- checkpoint, verified in the browser --------------------------------------
            # The publisher signs every few seconds once the tree grew: wait for one that
            # covers the seeded entries.
            deadline = time.monotonic() + 30
            while True:
                r = await served.http.get(
                    f"{base}/v1/audit/checkpoint", headers=auditor.headers(purpose="audit")
                )
                if r.status_code == 200:
                    break
                assert r.status_code == 404 and time.monotonic() < deadline, r.text
                await asyncio.sleep(0.2)
            await show(page, "checkpoint", errors)
            await page.wait_for_function("() => document.body.dataset.checkpoint")
            assert await page.evaluate("document.body.dataset.checkpoint") == "verified"
            status = await page.text_content("#checkpoint-status") or ""
            assert status.startswith("Vérifié dans le navigateur")
            sig = await page.locator("#signatures-table tbody tr").first.all_text_contents()
            assert "valide" in sig[0]
            await check_view("checkpoint")

            # Cosignatures: the served checkpoint with a line of the witness code's own
            # (vault_service.audit.witness.cosign, byte for byte what `witness serve`
            # returns), checked in the browser against the witness key pasted in; a
            # cosignature by another key under the same name and id fails.
            witness_key = Ed25519PrivateKey.generate()
            witness = CosignatureVerifier(
                "dpo.test/console",
                witness_key.public_key().public_bytes(
                    serialization.Encoding.Raw, serialization.PublicFormat.Raw
                ),
            )
            forged = {"on": False}

            async def cosigned(route: Any) -> None:
                answer = await route.fetch()
                note = await answer.text()
                body = note[: note.index("\n\n") + 1]
                signer = Ed25519PrivateKey.generate() if forged["on"] else witness_key
                line = cosign(signer, witness.name, body, int(time.time()))
                if forged["on"]:  # the same name and key id, another key's signature
                    raw = base64.b64decode(line.rsplit(" ", 1)[1])
                    line = (
                        line.rsplit(" ", 1)[0]
                        + " "
                        + base64.b64encode(witness.key_id.to_bytes(4, "big") + raw[4:]).decode()
                        + "\n"
                    )
                await route.fulfill(response=answer, body=note + line)

            await page.route("**/v1/audit/checkpoint", cosigned)
            await page.fill("#witness-keys", witness.vkey)
            await page.click("#witness-form button[type=submit]")
            await page.wait_for_function("() => document.body.dataset.checkpoint")
            assert await page.evaluate("document.body.dataset.checkpoint") == "verified"
            rows = await page.locator("#signatures-table tbody tr").all_text_contents()
            assert any(
                "dpo.test/console" in r and "cosignature" in r and "valide" in r for r in rows
            )
            assert "1 cosignature(s) de témoin vérifiée(s)" in (
                await page.text_content("#checkpoint-status") or ""
            )
            forged["on"] = True
            await page.click("#witness-form button[type=submit]")
            await page.wait_for_function("() => document.body.dataset.checkpoint")
            assert await page.evaluate("document.body.dataset.checkpoint") == "failed"
            rows = await page.locator("#signatures-table tbody tr").all_text_contents()
            assert any("dpo.test/console" in r and "INVALIDE" in r for r in rows)
            await page.unroute("**/v1/audit/checkpoint")
            await page.fill("#witness-keys", "")

            # A checkpoint whose root was changed in transit fails in the browser.
            async def tamper(route: Any) -> None:
                answer = await route.fetch()
                lines = (await answer.text()).split("\n")
                lines[2] = "A" * 43 + "="
                await route.fulfill(response=answer, body="\n".join(lines))

            await page.route("**/v1/audit/checkpoint", tamper)
            await page.click("#witness-form button[type=submit]")
            await page.wait_for_function("() => document.body.dataset.checkpoint === 'failed'")
            assert "ÉCHEC" in (await page.text_content("#checkpoint-status") or "")
            assert "INVALIDE" in (await page.text_content("#signatures-table tbody") or "")
            await page.unroute("**/v1/audit/checkpoint")

            # --- reports: breach impact (table, CSV, proofs) and subject access ------------
            await show(page, "reports", errors)
            await page.fill("#breach-actor", counsellor_id)
            await page.click("#breach-form button[type=submit]")
            await page.wait_for_selector("#breach-table tbody tr")
            listed = await page.locator("#breach-table tbody tr td:first-child").all_text_contents()
            assert set(seeded["ids"]) <= set(listed)
            async with page.expect_download() as download_info:
                await page.click("#breach-csv")
            download = await download_info.value
            assert download.suggested_filename == "breach-impact.csv"
            csv_path = tmp_path / "breach-impact.csv"
            await download.save_as(csv_path)
            csv_text = csv_path.read_text("utf-8")
            assert csv_text.splitlines()[0].startswith("record_id") or "record_id" in csv_text
            assert all(rid in csv_text for rid in seeded["ids"])
            async with page.expect_download() as download_info:
                await page.click("#breach-proofs")
            download = await download_info.value
            proofs_path = tmp_path / download.suggested_filename
            await download.save_as(proofs_path)
            proofs = json.loads(proofs_path.read_text("utf-8"))
            assert proofs["actor_id"] == counsellor_id and len(proofs["entries"]) >= 6
            await page.fill("#subject-record", seeded["ids"][1])
            await page.click("#subject-form button[type=submit]")
            await page.wait_for_selector("#subject-table tbody tr")
            async with page.expect_download() as download_info:
                await page.click("#subject-csv")
            download = await download_info.value
            subject_path = tmp_path / "subject.csv"
            await download.save_as(subject_path)
            subject_csv = subject_path.read_text("utf-8")
            assert subject_csv.startswith("index,at,action,outcome,actor_id")
            assert "record.read" in subject_csv and counsellor_id in subject_csv
            await check_view("reports")

            # --- screenshots: not blank, each its own page ---------------------------------
            for view, png in shots.items():
                width, height, distinct = png_shows_something(png)
                assert width >= 1000 and height >= 500, view
                assert distinct > 40, (view, distinct)
            assert len({hash(p) for p in shots.values()}) == len(shots)

            # --- no personal value, no token, anywhere in the DOM of any view -----------
            for view, text in seen.items():
                for canary in canaries:
                    assert canary not in text, (view, "a personal value reached the page")
                assert auditor.token not in text, (view, "the token is in the DOM")
            storage = await page.evaluate(
                "() => [localStorage.length, sessionStorage.length, document.cookie]"
            )
            assert storage == [0, 0, ""]

            # --- English labels -------------------------------------------------------------
            await page.click("#lang")
            await page.wait_for_function("() => document.documentElement.lang === 'en'")
            assert await page.text_content("header h1") == "Audit console"
            assert await page.text_content("#view-reports h2") == VIEWS["reports"][1]
            await show(page, "alerts", errors)
            assert await page.text_content("#view-alerts h2") == VIEWS["alerts"][1]
            assert await page.text_content("#alerts-more") == "Show more"
            assert "more follow" in (await page.text_content("#alerts-count") or "")
            await show(page, "volume", errors)
            assert await page.text_content("#view-volume h2") == VIEWS["volume"][1]
            assert await axe_violations(page) == []
            r = await served.http.get(f"{base}/console")
            assert r.status_code == 200 and "<h1" in r.text

            # --- keyboard: Tab reaches the navigation, Enter opens a view, focus visible ---
            await page.focus("#lang")
            for _ in range(10):
                await page.keyboard.press("Tab")
                if await page.evaluate("document.activeElement.dataset.view === 'grants'"):
                    break
            outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
            assert outline == "solid"
            await page.keyboard.press("Enter")
            await page.wait_for_function("() => document.body.dataset.view === 'grants'")
            assert await page.evaluate("document.activeElement.id") == "h-grants"

            # --- the CSP: an injected inline script does not run ----------------------------
            ran = await page.evaluate(
                """() => new Promise(resolve => {
                    document.addEventListener('securitypolicyviolation',
                        e => resolve({ran: window.__injected === 1, blocked: e.effectiveDirective}));
                    const s = document.createElement('script');
                    s.textContent = 'window.__injected = 1';
                    document.body.appendChild(s);
                    setTimeout(() => resolve({ran: window.__injected === 1, blocked: null}), 2000);
                })"""
            )
            assert ran == {"ran": False, "blocked": "script-src-elem"}
            assert errors == []
        finally:
            await browser.close()
            await owner.execute("DELETE FROM alerts WHERE id = ANY($1)", seeded["fillers"])
            await owner.execute(
                "DELETE FROM break_glass_grants WHERE id = ANY($1)", seeded["fillers"]
            )


async def test_console_endpoints_refuse_bad_input_and_log_every_answer(
    client: Any, world: World
) -> None:
    auditor = await world.account(Role.AUDITOR, None)
    h = auditor.headers(purpose="audit")
    now = "2026-01-31T00:00:00Z"
    bad = [
        ("/v1/audit/volume", {"by": "record", "since": "2026-01-01T00:00:00Z", "until": now}),
        ("/v1/audit/volume", {"by": "actor"}),
        ("/v1/audit/volume", {"since": "2026-01-01T00:00:00", "until": now}),
        ("/v1/audit/volume", {"since": now, "until": "2026-01-01T00:00:00Z"}),
        ("/v1/audit/volume", {"since": "2025-01-01T00:00:00Z", "until": now}),
        ("/v1/audit/volume", {"since": "2026-01-01T00:00:00Z", "until": now, "x": "1"}),
        ("/v1/audit/break-glass", {"state": "open"}),
        ("/v1/audit/break-glass", {"limit": "0"}),
        ("/v1/audit/break-glass", {"order": "random"}),
    ]
    for path, params in bad:
        r = await client.get(path, params=params, headers=h)
        assert (r.status_code, r.json()["code"]) == (400, "invalid_parameter"), (path, params)
    r = await client.get(
        "/v1/audit/volume",
        params={"by": "structure", "since": "2026-01-01T00:00:00Z", "until": now},
        headers=h,
    )
    assert r.status_code == 200 and r.json()["by"] == "structure"
    r = await client.get("/v1/audit/break-glass", params={"state": "reviewed"}, headers=h)
    assert r.status_code == 200
    # Every answer, refused or given, is an entry of the access log under its action.
    for action, allowed, refused in (("audit.volume", 1, 6), ("audit.break_glass", 1, 3)):
        r = await client.get(
            "/v1/audit/events",
            params={"actor_id": str(auditor.id), "action": action},
            headers=h,
        )
        outcomes = [e["outcome"] for e in r.json()["items"]]
        assert outcomes.count("allowed") == allowed and outcomes.count("refused") == refused, (
            action,
            outcomes,
        )
    # Acknowledgement: a comment, an open alert, once; the entry in the log.
    alert = uuid.uuid4()
    await world.owner.execute(
        "INSERT INTO alerts (id, severity, kind) VALUES ($1, 'info', 'rule.test')", alert
    )
    path = f"/v1/alerts/{alert}/ack"
    # A NUL (which PostgreSQL's text cannot hold) or another control character is
    # refused as the body it is, never a 500.
    for body in (
        {},
        {"comment": ""},
        {"comment": "x" * 501},
        {"comment": "ok", "more": 1},
        {"comment": "vu\u0000"},
        {"comment": "vu\u0007"},
    ):
        r = await client.post(path, json=body, headers=h)
        assert (r.status_code, r.json()["code"]) == (400, "invalid_body"), body
    r = await client.post("/v1/alerts/not-a-uuid/ack", json={"comment": "ok"}, headers=h)
    assert (r.status_code, r.json()["code"]) == (400, "invalid_parameter")
    r = await client.post(f"/v1/alerts/{uuid.uuid4()}/ack", json={"comment": "ok"}, headers=h)
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    assert await world.owner.fetchval("SELECT state FROM alerts WHERE id = $1", alert) == "open"
    r = await client.post(path, json={"comment": "vu"}, headers=h)
    assert r.status_code == 204, r.text
    r = await client.post(path, json={"comment": "encore"}, headers=h)
    assert (r.status_code, r.json()["code"]) == (404, "not_found")  # only an open alert
    row = await world.owner.fetchrow(
        "SELECT state, acked_by, ack_comment FROM alerts WHERE id = $1", alert
    )
    assert tuple(row) == ("acknowledged", auditor.id, "vu")
    r = await client.get(
        "/v1/audit/events", params={"actor_id": str(auditor.id), "action": "alert.ack"}, headers=h
    )
    outcomes = [e["outcome"] for e in r.json()["items"]]
    assert outcomes.count("allowed") == 1 and outcomes.count("refused") == 9, outcomes
    assert all("vu" not in json.dumps(e) for e in r.json()["items"])
    # The acknowledgement's entry names the alert.
    r = await client.get(
        "/v1/audit/events", params={"record_id": str(alert), "action": "alert.ack"}, headers=h
    )
    assert r.status_code == 200, r.text
    assert [e["outcome"] for e in r.json()["items"]] == ["allowed"]
    # Critical alerts and alerts about the auditor's own account stay with the admins.
    for severity, about in (("critical", None), ("warning", auditor.id)):
        other = uuid.uuid4()
        await world.owner.execute(
            "INSERT INTO alerts (id, severity, kind, account_id) VALUES ($1, $2, 'rule.test', $3)",
            other,
            severity,
            about,
        )
        r = await client.post(f"/v1/alerts/{other}/ack", json={"comment": "ok"}, headers=h)
        assert (r.status_code, r.json()["code"]) == (404, "not_found"), severity
        assert await world.owner.fetchval("SELECT state FROM alerts WHERE id = $1", other) == "open"
    # Other roles are refused by the gate (the route matrix checks every role).
    counsellor = await world.counsellor()
    r = await client.get("/v1/audit/break-glass", headers=counsellor.headers())
    assert r.status_code == 403


async def _pages(client: Any, path: str, params: dict[str, str], h: dict[str, str]) -> list[list]:
    """Every page of a list, following next_cursor."""
    pages: list[list] = []
    query = dict(params)
    for _ in range(1000):
        r = await client.get(path, params=query, headers=h)
        assert r.status_code == 200, r.text
        pages.append(r.json()["items"])
        if r.json()["next_cursor"] is None:
            return pages
        query["cursor"] = r.json()["next_cursor"]
    raise AssertionError("more than 1000 pages")


WEEK = ("2026-01-01T00:00:00Z", "2026-01-08T00:00:00Z")


async def test_the_consoles_lists_page_newest_first_and_entries_filter_by_structure(
    client: Any, world: World
) -> None:
    auditor = await world.account(Role.AUDITOR, None)
    h = auditor.headers(purpose="audit")
    for path, params in (
        ("/v1/alerts", {"order": "latest"}),
        ("/v1/alerts", {"order": ""}),
        ("/v1/audit/break-glass", {"order": "NEWEST"}),
        ("/v1/audit/events", {"structure_id": "not-a-uuid"}),
        ("/v1/audit/events", {"structure_id": uuid.uuid4().hex}),
        # No index on the structure: a window of a week at most bounds the scan.
        ("/v1/audit/events", {"structure_id": str(uuid.uuid4())}),
        ("/v1/audit/events", {"structure_id": str(uuid.uuid4()), "since": WEEK[0]}),
        (
            "/v1/audit/events",
            {"structure_id": str(uuid.uuid4()), "since": WEEK[0], "until": "2026-01-08T00:00:01Z"},
        ),
    ):
        r = await client.get(path, params=params, headers=h)
        assert (r.status_code, r.json()["code"]) == (400, "invalid_parameter"), (path, params)
        assert all(v not in r.json()["detail"] for v in params.values() if v), params

    # Alerts, newest first, two a page: five of ours, each once, in descending order,
    # the second page reached by its cursor (others may be raised meanwhile: only
    # ours are counted, the order is checked on all).
    since = await world.owner.fetchval("SELECT now()")
    ours = []
    for _ in range(5):
        ours.append(uuid.uuid4())
        # One transaction each: distinct raised_at, in this order.
        await world.owner.execute(
            "INSERT INTO alerts (id, severity, kind) VALUES ($1, 'info', 'rule.paging')", ours[-1]
        )
    params = {"since": since.isoformat(), "order": "newest", "limit": "2"}
    pages = await _pages(client, "/v1/alerts", params, h)
    assert len(pages) >= 3 and all(len(p) <= 2 for p in pages)
    listed = [a for p in pages for a in p]
    keys = [(a["raised_at"], a["id"]) for a in listed]
    assert keys == sorted(keys, reverse=True)
    assert [a["id"] for a in listed if a["kind"] == "rule.paging"] == [
        str(a) for a in reversed(ours)
    ]
    # The default is unchanged: oldest first.
    oldest = await _pages(client, "/v1/alerts", {"since": since.isoformat(), "limit": "2"}, h)
    assert [a["id"] for p in oldest for a in p if a["kind"] == "rule.paging"] == [
        str(a) for a in ours
    ]

    # Break-the-glass grants, newest first, two a page: ours are the newest three.
    sid = await world.structure()
    counsellor, colleague = await world.counsellor(sid), await world.counsellor(sid)
    r = await client.post("/v1/records", json=FULL, headers=counsellor.headers())
    assert r.status_code == 201, r.text
    record = r.json()["id"]
    grants = []
    for reason in ("safety_emergency", "service_continuity", "legal_obligation"):
        r = await client.post(
            f"/v1/records/{record}/break-glass",
            json={"reason": reason},
            headers=colleague.headers(purpose="break_glass"),
        )
        assert r.status_code == 201, r.text
        grants.append(r.json()["grant_id"])
    r = await client.get(
        "/v1/audit/break-glass", params={"order": "newest", "limit": "2"}, headers=h
    )
    first = r.json()
    assert [g["id"] for g in first["items"]] == [grants[2], grants[1]]
    assert first["next_cursor"] is not None
    r = await client.get(
        "/v1/audit/break-glass",
        params={"order": "newest", "limit": "2", "cursor": first["next_cursor"]},
        headers=h,
    )
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["id"] == grants[0]
    everything = await _pages(client, "/v1/audit/break-glass", {"order": "newest"}, h)
    opened = [(g["opened_at"], g["id"]) for p in everything for g in p]
    assert opened == sorted(opened, reverse=True) and len(set(opened)) == len(opened)
    by_id = await _pages(client, "/v1/audit/break-glass", {"limit": "500"}, h)
    assert sorted(g["id"] for p in by_id for g in p) == sorted(g for _, g in opened)

    # Entries by structure: exactly the structure's (one record created, three grants,
    # their entries), paged two at a time; another structure's entries are not there.
    other = await world.counsellor()
    r = await client.post("/v1/records", json=FULL, headers=other.headers())
    assert r.status_code == 201, r.text
    now = datetime.datetime.now(datetime.UTC)
    window = {
        "since": (now - datetime.timedelta(days=1)).isoformat(),
        "until": (now + datetime.timedelta(days=1)).isoformat(),
    }
    pages = await _pages(
        client, "/v1/audit/events", {"structure_id": str(sid), "limit": "2", **window}, h
    )
    assert len(pages) >= 2
    entries = [e for p in pages for e in p]
    assert {e["structure_id"] for e in entries} == {str(sid)}
    assert {e["actor_id"] for e in entries} == {str(counsellor.id), str(colleague.id)}
    assert [e["action"] for e in entries].count("record.create") == 1
    indexes = [e["index"] for e in entries]
    assert indexes == sorted(set(indexes))
    # The same as filtering every entry in the page, as the console did before.
    r = await client.get(
        "/v1/audit/events",
        params={"actor_id": str(colleague.id), "structure_id": str(sid), **window},
        headers=h,
    )
    assert [e["index"] for e in r.json()["items"]] == [
        e["index"] for e in entries if e["actor_id"] == str(colleague.id)
    ]
    r = await client.get(
        "/v1/audit/events", params={"structure_id": str(uuid.uuid4()), **window}, headers=h
    )
    assert r.json() == {"items": [], "next_cursor": None}
    r = await client.get(
        "/v1/audit/events",
        params={"structure_id": str(sid), "since": WEEK[0], "until": WEEK[1]},
        headers=h,
    )
    assert r.json() == {"items": [], "next_cursor": None}


async def test_volume_queries_draw_on_the_auditors_volume_budget(client: Any, world: World) -> None:
    auditor = await world.account(Role.AUDITOR, None)
    h = auditor.headers(purpose="audit")
    params = {"by": "structure", "since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00Z"}
    refused_at = None
    for i in range(61):
        r = await client.get("/v1/audit/volume", params=params, headers=h)
        if r.status_code == 429:
            refused_at = i
            break
        assert r.status_code == 200, r.text
        assert r.headers["RateLimit-Policy"] == '"volume-hour";q=60;w=3600'
        assert r.headers["RateLimit"].startswith(f'"volume-hour";r={59 - i};')
    assert refused_at == 60, (
        "the 61st query of the hour is refused (VAULT_SERVICE_BUDGET_VOLUME_HOUR)"
    )
    assert r.json()["code"] == "volume_budget_exceeded"
    assert 0 < int(r.headers["Retry-After"]) <= 3600
    # A refused query is not an answer: nothing but the problem document.
    assert "rows" not in r.json()
    # Another route of the same auditor is not refused: the budget is the volume's.
    r = await client.get("/v1/audit/break-glass", params={"limit": "1"}, headers=h)
    assert r.status_code == 200, r.text
    # Each query is an entry; the refusal too, with its code, decided with it.
    other = await world.account(Role.AUDITOR, None)
    entries = [
        e
        for p in await _pages(
            client,
            "/v1/audit/events",
            {"actor_id": str(auditor.id), "action": "audit.volume", "limit": "1000"},
            other.headers(purpose="audit"),
        )
        for e in p
    ]
    outcomes = [(e["outcome"], e.get("refusal_code")) for e in entries]
    assert outcomes.count(("allowed", None)) == 60
    assert outcomes[-1] == ("refused", "volume_budget_exceeded")
    assert all(e["record_ids"] == [] for e in entries)
    # The refusal raised the budget alert about this auditor, as any budget does.
    raised = await world.owner.fetchval(
        "SELECT count(*) FROM alerts WHERE account_id = $1 AND kind = 'budget.exceeded'",
        auditor.id,
    )
    assert raised == 1


class ConsoleProvider:
    """OpenBao's OpenID provider (authorization code, PKCE, public client) with its own
    login pages (OpenBao's UI, userpass), as an auditor's identity provider."""

    def __init__(self, bao: Any) -> None:
        self.bao = bao
        suffix = secrets.token_hex(3)
        c = bao.client()
        self.key, self.scope, self.name = f"console-{suffix}", f"mfa_{suffix}", f"console-{suffix}"
        c.write(f"identity/oidc/key/{self.key}", algorithm="RS256", allowed_client_ids=["*"])
        # The second factor, as the provider's claim (a real provider sets it after MFA).
        c.write(f"identity/oidc/scope/{self.scope}", template=json.dumps({"amr": ["pwd", "mfa"]}))
        c.write(
            f"identity/oidc/client/{self.name}",
            redirect_uris=["http://127.0.0.1:1/console/callback.html"],
            assignments=["allow_all"],
            key=self.key,
            client_type="public",
            id_token_ttl="5m",
            access_token_ttl="5m",
        )
        self.client_id: str = c.read(f"identity/oidc/client/{self.name}")["data"]["client_id"]
        c.write(
            f"identity/oidc/provider/{self.name}",
            allowed_client_ids=[self.client_id],
            scopes_supported=[self.scope],
        )
        base = f"{bao.addr}/v1/identity/oidc/provider/{self.name}"
        discovery = httpx.get(f"{base}/.well-known/openid-configuration").json()
        self.discovery: dict[str, Any] = discovery
        if "userpass/" not in c.sys.list_auth_methods()["data"]:
            c.sys.enable_auth_method("userpass")

    def user(self) -> tuple[str, str, str]:
        """(name, password, subject) of a user who signs in at the provider."""
        c = self.bao.client()
        name, password = f"auditor{secrets.token_hex(3)}", secrets.token_urlsafe(12)
        c.write(f"auth/userpass/users/{name}", password=password)
        login = c.auth.userpass.login(name, password)
        return name, password, str(login["auth"]["entity_id"])

    def serve(self, console_base: str) -> None:
        """The console's callback as the client's redirect, and CORS for its origin."""
        c = self.bao.client()
        c.write(
            f"identity/oidc/client/{self.name}",
            redirect_uris=[f"{console_base}/console/callback.html"],
        )
        # Its own UI's origin too: with CORS on, OpenBao refuses any other origin.
        c.write("sys/config/cors", enabled=True, allowed_origins=[console_base, self.bao.addr])

    def issuer_config(self) -> dict[str, Any]:
        return {
            "issuer": self.discovery["issuer"],
            "audience": self.client_id,
            "jwks_uri": self.discovery["jwks_uri"],
            "algorithms": ["RS256"],
            "mfa_amr": ["mfa"],
        }

    def console_config(self) -> dict[str, Any]:
        return {
            "issuer": self.discovery["issuer"],
            "client_id": self.client_id,
            "authorization_endpoint": self.discovery["authorization_endpoint"],
            "token_endpoint": self.discovery["token_endpoint"],
            "scope": f"openid {self.scope}",
        }


async def test_console_signs_in_with_openid_connect_and_pkce(
    stack: Stack, client: Any, world: World
) -> None:
    assert CHROMIUM.exists(), "Chromium is missing: apt-get install -y chromium (make test does)"
    provider = await asyncio.to_thread(ConsoleProvider, stack.bao)
    name, password, subject = await asyncio.to_thread(provider.user)
    stranger = (await asyncio.to_thread(provider.user))[:2]
    auditor = await world.account(Role.AUDITOR, None)
    # The auditor's identity at the provider, linked to the account by two admins.
    dsn_a, _ = await _login(stack, world)
    dsn_b, _ = await _login(stack, world)
    link = ["--issuer", provider.discovery["issuer"], "--subject", subject]
    asked = _ok(
        await asyncio.to_thread(
            _cli,
            _env(stack, VAULT_SERVICE_ADMIN_DATABASE_URL=dsn_a),
            "accounts",
            "link",
            str(auditor.id),
            *link,
        )
    )
    _ok(
        await asyncio.to_thread(
            _cli,
            _env(stack, VAULT_SERVICE_ADMIN_DATABASE_URL=dsn_b),
            "accounts",
            "approve",
            asked["request_id"],
        )
    )
    overrides = {
        "oidc_issuers": json.dumps([provider.issuer_config()]),
        "console_oidc": json.dumps(provider.console_config()),
    }
    async with serve_processes(stack, 1, **overrides) as served, async_playwright() as pw:
        base = served.bases[0]
        await asyncio.to_thread(provider.serve, base)
        r = await served.http.get(f"{base}/console/config.json")
        assert r.json()["oidc"]["client_id"] == provider.client_id
        csp = r.headers["content-security-policy"]
        assert f"connect-src 'self' {stack.bao.addr}" in csp and "frame-ancestors 'none'" in csp
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:

            async def provider_login(who: str, secret: str) -> tuple[Page, float]:
                """A fresh browser (no provider session) signs in at the provider."""
                context = await browser.new_context(viewport={"width": 1280, "height": 900})
                page = await context.new_page()
                await page.goto(f"{base}/console/")
                await page.wait_for_function("() => document.body.dataset.ready === 'true'")
                assert await page.is_visible("#oidc-signin")
                async with context.expect_page() as popup_info:
                    await page.click("#oidc-signin")
                popup = await popup_info.value
                asked = popup.url  # the authorization request, before any redirect
                assert "code_challenge_method=S256" in asked and "code_challenge=" in asked
                assert "code_verifier" not in asked and "nonce=" in asked
                # The provider's own login page (OpenBao's UI): username and password.
                await popup.wait_for_selector('select[data-test-select="auth-method"]')
                await popup.select_option('select[data-test-select="auth-method"]', "userpass")
                await popup.fill('input[name="username"]', who)
                await popup.fill('input[name="password"]', secret)
                await popup.click("#auth-submit")
                await popup.wait_for_event("close", timeout=30_000)  # the callback closes it
                return page, time.perf_counter()

            # Signed in at the provider but linked to no account: refused, with its code.
            page, _ = await provider_login(*stranger)
            await page.wait_for_function(
                "() => document.querySelector('#signin-error').textContent"
            )
            assert "identity_not_linked" in (await page.text_content("#signin-error") or "")
            assert await page.is_hidden("#nav")
            page, started = await provider_login(name, password)
            await page.wait_for_selector("#volume-chart canvas", timeout=30_000)
            await page.wait_for_selector("#volume-table tbody tr")
            print(
                f"\nconsole OpenID sign-in, provider's redirect to first view: "
                f"{(time.perf_counter() - started) * 1000:.0f} ms"
            )
            assert await page.text_content("#view-volume h2") == VIEWS["volume"][0]
            storage = await page.evaluate(
                "() => [localStorage.length, sessionStorage.length, document.cookie]"
            )
            assert storage == [0, 0, ""]
        finally:
            await browser.close()
            await asyncio.to_thread(provider.bao.client().delete, "sys/config/cors")
    # The console's requests were the linked auditor's, each in the access log.
    r = await client.get(
        "/v1/audit/events",
        params={"actor_id": str(auditor.id), "action": "audit.volume"},
        headers=auditor.headers(purpose="audit"),
    )
    assert r.status_code == 200, r.text
    assert [e["outcome"] for e in r.json()["items"]] == ["allowed"]
