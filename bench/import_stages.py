"""Where a bulk import's time goes, stage by stage, in one process with nothing else
running: the split that bench.imports (the rate under reads) cannot show.

    python -m bench.import_stages [--records 5000] [--batch-size 1000]

Starts its own embedded PostgreSQL and OpenBao (bench/records.py's set-up, no records
seeded), writes bench.imports' export (the full fixture), then times with the import's
own code: decoding a line and its legacy digest, the API's validation, the API's sealing
(`RecordService.seal_new`), building a batch's arrays, and `vs_import_batch` itself
(its wall time on the admin's login, commit included). Then, in a transaction rolled
back, PostgreSQL's own account of the batch's three inserts (EXPLAIN ANALYZE as the
superuser: the rows, their indexes and each foreign-key trigger).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from bench.imports import write_export
from bench.keys import admin_login
from bench.records import prepare
from vault_service.crypto.keys import KeyHierarchy
from vault_service.dev import embedded as devstack
from vault_service.imports.importer import _batch_args, _line_decoder, _Pending
from vault_service.imports.repository import ImportRepository
from vault_service.kms import VaultKms
from vault_service.records import schema
from vault_service.records.service import RecordService, SealedNew
from vault_service.settings import Settings

# The batch's three inserts as vs_import_batch runs them (migration 0016), explained.
EXPLAIN_RECORDS = """
EXPLAIN (ANALYZE, COSTS OFF)
INSERT INTO records (id, structure_id, referent_id, branch_key_version, record_key,
                     key_version, sealed, clear, created_by, retain_until)
SELECT u.id, $8, u.referent, u.bv, u.rk, 1, u.sealed, u.clear::jsonb, $9, u.retain
FROM unnest($1::uuid[], $2::uuid[], $3::integer[], $4::bytea[], $5::bytea[], $6::text[],
            $7::date[]) AS u (id, referent, bv, rk, sealed, clear, retain)
"""
EXPLAIN_INDEX = """
EXPLAIN (ANALYZE, COSTS OFF)
INSERT INTO record_index (record_id, structure_id, name, digest)
SELECT ($5::uuid[])[u.k], CASE WHEN u.national THEN NULL ELSE $6::uuid END, u.n, u.d
FROM unnest($1::integer[], $2::text[], $3::bytea[], $4::boolean[]) AS u (k, n, d, national)
ON CONFLICT DO NOTHING
"""
EXPLAIN_LEDGER = """
EXPLAIN (ANALYZE, COSTS OFF)
INSERT INTO import_ledger (source, legacy_digest, record_id, run_id)
SELECT 'bench', u.d, u.id, $3 FROM unnest($1::bytea[], $2::uuid[]) AS u (d, id)
"""


async def stages(
    env: dict[str, str], superuser: str, admin: str, lines: list[bytes], batch: int
) -> None:
    settings = Settings.from_env(env)
    service_pool = await asyncpg.create_pool(settings.database.url, min_size=1, max_size=2)
    kms = VaultKms(settings.vault)
    records = RecordService(
        service_pool,
        KeyHierarchy(kms, service_pool, ttl=300, max_uses=10**9),
        schema.load(),
        search_page_max=20,
        caseload_page_max=50,
    )
    su = await asyncpg.connect(superuser)
    lock = await asyncpg.connect(admin)
    pool = await asyncpg.create_pool(admin, min_size=1, max_size=2)
    try:
        sid = await su.fetchval("SELECT id FROM structures WHERE code = 'BENCH'")
        referent = await su.fetchval("SELECT id FROM accounts WHERE role = 'counsellor'")
        actor = await su.fetchval("SELECT account_id FROM admin_logins LIMIT 1")
        repo = ImportRepository(lock, pool)
        run = uuid.uuid4()
        await repo.start(run, "bench")
        key = os.urandom(32)
        await records.seal_new(sid, referent, records.validate_create(bytes(_line_decoder.decode(lines[0]).record)), uuid.uuid4())  # fmt: skip
        n = len(lines)
        spent: dict[str, float] = {}

        def took(stage: str, since: float) -> None:
            spent[stage] = spent.get(stage, 0.0) + time.process_time() - since

        t = time.process_time()
        parsed = [_line_decoder.decode(raw) for raw in lines]
        digests = [
            hmac.digest(key, b"bench\x00" + p.legacy_id.encode(), hashlib.sha256) for p in parsed
        ]
        took("line decoded, legacy digest", t)
        t = time.process_time()
        values = [records.validate_create(bytes(p.record)) for p in parsed]
        took("validation (validate_create)", t)
        t = time.process_time()
        sealed: list[SealedNew] = []
        for v in values:
            sealed.append(await records.seal_new(sid, referent, v, uuid.uuid4()))
        took("sealing (seal_new)", t)
        t = time.process_time()
        args: list[list[Any]] = []
        for i in range(0, n, batch):
            fresh = [
                (_Pending(0, d, b"", referent), s)
                for d, s in zip(digests[i : i + batch], sealed[i : i + batch], strict=True)
            ]
            args.append(_batch_args(run, "bench", sid, fresh))
        took("batch arrays", t)
        first = args[0]
        explained: list[str] = []
        rolled_back = su.transaction()
        await rolled_back.start()
        try:
            for query, params in (
                (EXPLAIN_RECORDS, [*first[3:10], sid, actor]),
                (EXPLAIN_INDEX, [*first[11:15], first[3], sid]),
                (EXPLAIN_LEDGER, [first[10], first[3], run]),
            ):
                for row in await su.fetch(query, *params):
                    if "Execution Time" in row[0] or "Trigger" in row[0]:
                        explained.append(row[0].strip())
                explained.append("")
        finally:
            await rolled_back.rollback()
        wall = 0.0
        for a in args:
            w = time.perf_counter()
            await repo.write_batch(*a)
            wall += time.perf_counter() - w
        per = {k: v / n * 1e6 for k, v in spent.items()}
        per["vs_import_batch (wall, commit included)"] = wall / n * 1e6
        print(f"{n} records, batches of {batch}, load {os.getloadavg()[0]:.1f}:")
        for stage, us in per.items():
            print(f"  {stage:42s} {us:7.1f} us/record")
        print(f"PostgreSQL's account of one batch of {len(first[3])} (EXPLAIN ANALYZE):")
        for line in explained:
            print("  " + line if line else "")
    finally:
        await pool.close()
        await lock.close()
        await su.close()
        await service_pool.close()
        kms.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vault-bench-import-stages-"))
    pg = devstack.start_embedded_postgres(tmp / "pgdata", delete_on_stop=True)
    bao = devstack.start_openbao(tmp / "openbao", persistent=False)
    try:
        env = {
            "VAULT_SERVICE_DATABASE_URL": devstack.dsn_for(
                pg.admin_dsn, user="vault_service_app", database=devstack.DATABASE
            ),
            "VAULT_SERVICE_VAULT_ADDR": bao.addr,
            "VAULT_SERVICE_VAULT_TOKEN": devstack.configure_vault(bao),
            "VAULT_SERVICE_JWT_ISSUER": "https://bench.local",
            "VAULT_SERVICE_JWT_AUDIENCE": "vault-service",
        }
        asyncio.run(prepare(pg, env, 0))
        owner = devstack.dsn_for(
            pg.admin_dsn, user="vault_service_owner", database=devstack.DATABASE
        )
        admin = asyncio.run(admin_login(pg, owner))
        export = tmp / "export.jsonl"
        write_export(export, args.records)
        superuser = devstack.dsn_for(pg.admin_dsn, user=None, database=devstack.DATABASE)
        lines = export.read_bytes().splitlines()
        asyncio.run(stages(env, superuser, admin, lines, args.batch_size))
        return 0
    finally:
        bao.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
