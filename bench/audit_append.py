"""Access-log benchmark: batching sequencer vs naive hash chain, proofs at 1M, verifier.

    python -m bench.audit_append [--duration 10] [--writers 64] [--processes 1]
                                 [--proof-size 1000000] [--verify-entries 200000]

Starts its own embedded PostgreSQL (same machine, default settings, fsync on), then:

0. sequencer: the request path. `--writers` coroutines per process call
   `Sequencer.commit` (entry durable in the pending queue, budget function with no
   claims), while an integrator in a process of its own moves entries into the tree;
   entries/s, latency of each commit, and how long the queue took to drain after;
1. append: `--writers` concurrent coroutines per process (in `--processes` processes,
   each with its own sequencer, as replicas would be) call `AccessLog.append` for
   `--duration` seconds after a short warm-up; entries/s, p50/p99/p99.9 latency of
   each append (from the call to the durable commit), mean batch size;
2. naive: the same writers on a naive hash chain in the same database (lock the head
   row, insert one entry, update the head, commit: one transaction per entry);
3. proofs: a log of `--proof-size` entries is built directly (COPY of leaves and bodies,
   tiles from the TileBuilder), then inclusion and consistency proofs are served by
   `AuditProofs` (the auditor API's service, one query for the tree head or checkpoint,
   one for the tiles, one for the entry) and encoded to JSON: p50/p99 per proof;
4. verifier: bundles of the first `--verify-entries` entries of that log are exported
   as the API serves them and checked by `vault_service.audit.verify.run` against a
   checkpoint signed by a local Ed25519 key: entries/s (reading and parsing the files,
   body hashes, leaves, rebuild and consistency with the signed root), median of three
   runs after an untimed one, in one process and in one process per CPU (`--jobs`).

Prints one JSON document with every figure; nothing is written elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import hashlib
import json
import multiprocessing
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from vault_service.access.sequencer import Sequencer
from vault_service.audit import verify
from vault_service.audit.entry import AccessEvent, encode_leaf
from vault_service.audit.entry import prepare as _prepare
from vault_service.audit.integrator import Integrator
from vault_service.audit.log import AccessLog
from vault_service.audit.merkle import leaf_hash
from vault_service.audit.note import format_checkpoint, sign_note, verifier_key_string
from vault_service.audit.proofs import AuditProofs
from vault_service.audit.tiles import TileBuilder
from vault_service.audit.verify import KEYS_FORMAT, KeysFile
from vault_service.dev import embedded as devstack

ORIGIN = "bench.vault-service/access-log"
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)

NAIVE_SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_chain_head (id int PRIMARY KEY, seq bigint NOT NULL,
                                             head bytea NOT NULL);
CREATE TABLE IF NOT EXISTS bench_chain (seq bigint PRIMARY KEY, body jsonb NOT NULL,
                                        hash bytea NOT NULL);
INSERT INTO bench_chain_head (id, seq, head) VALUES (1, 0, sha256(''::bytea))
    ON CONFLICT DO NOTHING;
GRANT SELECT, UPDATE ON bench_chain_head TO vault_service_app;
GRANT SELECT, INSERT ON bench_chain TO vault_service_app;
"""
NAIVE_LOCK = "SELECT seq, head FROM bench_chain_head WHERE id = 1 FOR UPDATE"
NAIVE_INSERT = "INSERT INTO bench_chain (seq, body, hash) VALUES ($1, $2, $3)"
NAIVE_UPDATE = "UPDATE bench_chain_head SET seq = $1, head = $2 WHERE id = 1"


_EVENTS: list[AccessEvent] = []
_NEXT = [0]


def next_event() -> AccessEvent:
    """One of 4096 events made in advance: the ids of a real request come with the
    request, so generating them is not the log's cost and stays out of the loop."""
    if not _EVENTS:
        _EVENTS.extend(make_event() for _ in range(4096))
    _NEXT[0] = (_NEXT[0] + 1) % len(_EVENTS)
    return _EVENTS[_NEXT[0]]


def make_event() -> AccessEvent:
    """A counsellor reading one record: the most common entry."""
    return AccessEvent(
        action="record.read",
        outcome="allowed",
        actor_id=uuid.uuid4(),
        role="counsellor",
        structure_id=uuid.uuid4(),
        record_ids=(uuid.uuid4(),),
        fields=("birth_name", "first_names", "birth_date", "phone", "email", "situations"),
        purpose="follow_up",
        request_id=uuid.uuid4().hex[:16],
        token_jti=uuid.uuid4(),
    )


def percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {}
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "p999_ms": at(0.999),
        "max_ms": round(ordered[-1] * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


# --- 1 and 2: appends ----------------------------------------------------------------------
async def _drive(writers: int, warmup: float, duration: float, append: Any) -> dict[str, Any]:
    latencies: list[float] = []
    counting = False
    stop = False

    async def writer() -> None:
        clock = time.perf_counter
        while not stop:
            event = next_event()
            started = clock()
            await append(event)
            if counting:
                latencies.append(clock() - started)

    tasks = [asyncio.create_task(writer()) for _ in range(writers)]
    await asyncio.sleep(warmup)
    counting = True
    started = time.perf_counter()
    await asyncio.sleep(duration)
    counting = False
    elapsed = time.perf_counter() - started
    stop = True
    await asyncio.gather(*tasks)
    return {"entries": len(latencies), "seconds": elapsed, "latencies": latencies}


async def _append_worker(
    dsn: str, mode: str, writers: int, warmup: float, duration: float
) -> dict[str, Any]:
    if mode == "sequencer":
        # The request path: entries made durable in the pending queue, one statement per
        # batch (the budget function with no claims); integration runs elsewhere.
        pool = await asyncpg.create_pool(dsn, min_size=3, max_size=3)
        sequencer = Sequencer(pool)
        sequencer.start()
        try:
            result = await _drive(writers, warmup, duration, sequencer.commit)
        finally:
            await sequencer.stop()
            await pool.close()
        result["batches"] = sequencer.batches
        return result
    if mode == "log":
        pool = await asyncpg.create_pool(dsn, min_size=3, max_size=3)
        log = AccessLog(pool)
        await log.start()
        try:
            result = await _drive(writers, warmup, duration, log.append)
        finally:
            await log.stop()
            await pool.close()
        result["batches"] = log.batches
        return result

    # The naive chain: one transaction per entry, serialised on the head row. It gets a
    # connection per writer (what a naive service would have under this load).
    pool = await asyncpg.create_pool(dsn, min_size=writers, max_size=writers)

    async def naive_append(event: AccessEvent) -> int:
        body = _prepare(event, time.time_ns() // 1000).body
        async with pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(NAIVE_LOCK)
            seq = row["seq"] + 1
            digest = hashlib.sha256(bytes(row["head"]) + body.encode()).digest()
            await conn.execute(NAIVE_INSERT, seq, body, digest)
            await conn.execute(NAIVE_UPDATE, seq, digest)
        return int(seq)

    try:
        return await _drive(writers, warmup, duration, naive_append)
    finally:
        await pool.close()


def _process_entry(args: tuple[str, str, int, float, float], queue: Any) -> None:
    queue.put(asyncio.run(_append_worker(*args)))


async def _integrate(dsn: str, stop: Any, queue: Any) -> None:
    """The integrator in a process of its own (as `vault-service audit integrate`):
    integrates while the writers run, then until the queue is empty; reports how many
    entries it integrated and how long the queue took to drain once writers stopped."""
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=3)
    tree = AccessLog(pool)
    await tree.start()
    integrator = Integrator(pool, tree, poll_seconds=0.01)
    await integrator.start()
    while not stop.is_set():  # noqa: ASYNC110 - a multiprocessing event, not an asyncio one
        await asyncio.sleep(0.05)
    started = time.perf_counter()
    async with pool.acquire() as conn:
        while await conn.fetchval("SELECT count(*) FROM audit_pending"):  # noqa: ASYNC110 - polls the database
            await asyncio.sleep(0.01)
    drained = time.perf_counter() - started
    await integrator.stop()
    await tree.stop()
    await pool.close()
    queue.put({"integrated": integrator.integrated, "drain_seconds": round(drained, 3)})


def _integrator_entry(dsn: str, stop: Any, queue: Any) -> None:
    asyncio.run(_integrate(dsn, stop, queue))


def run_appends(
    dsn: str, mode: str, processes: int, writers: int, warmup: float, duration: float
) -> dict[str, Any]:
    integration = None
    if mode == "sequencer":
        context = multiprocessing.get_context("spawn")
        stop, done = context.Event(), context.Queue()
        integration = context.Process(target=_integrator_entry, args=(dsn, stop, done))
        integration.start()
    if processes == 1:
        results = [asyncio.run(_append_worker(dsn, mode, writers, warmup, duration))]
    else:
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        procs = [
            context.Process(
                target=_process_entry, args=((dsn, mode, writers, warmup, duration), queue)
            )
            for _ in range(processes)
        ]
        for proc in procs:
            proc.start()
        results = [queue.get() for _ in procs]
        for proc in procs:
            proc.join()
    latencies = [x for r in results for x in r["latencies"]]
    entries = sum(r["entries"] for r in results)
    seconds = max(r["seconds"] for r in results)
    summary: dict[str, Any] = {
        "mode": mode,
        "processes": processes,
        "writers_per_process": writers,
        "entries": entries,
        "entries_per_second": round(entries / seconds),
        **percentiles(latencies),
    }
    if integration is not None:
        stop.set()
        summary["integration"] = done.get()
        integration.join()
    if mode in ("log", "sequencer"):
        batches = sum(r["batches"] for r in results)
        summary["transactions"] = batches
        summary["mean_batch"] = round(entries / max(1, batches), 1)
    return summary


# --- 3: a big log, built directly --------------------------------------------------------------
async def build_log(dsn: str, owner_dsn: str, size: int) -> float:
    """`size` entries with bodies, written with COPY; tiles and head from TileBuilder.
    Same rows the sequencer writes, minus the sequencer."""
    started = time.perf_counter()
    template = make_event()
    base_us = time.time_ns() // 1000 - size
    conn = await asyncpg.connect(dsn)
    owner = await asyncpg.connect(owner_dsn)
    try:
        # Index maintenance during a bulk load is the slow part; rebuilt once at the end.
        await owner.execute(
            "DROP INDEX audit_bodies_records_idx, audit_bodies_actor_idx, audit_bodies_action_idx"
        )
        builder = TileBuilder(0, _NoTiles())
        tiles: dict[tuple[int, int], bytes] = {}
        head = builder.append([])
        chunk = 100_000
        for start in range(0, size, chunk):
            count = min(chunk, size - start)
            entries, bodies, hashes = [], [], []
            for index in range(start, start + count):
                event = msgspec.structs.replace(
                    template, actor_id=uuid.uuid4(), record_ids=(uuid.uuid4(),)
                )
                prepared = _prepare(event, base_us + index)
                leaf = encode_leaf(index, prepared.at_us, prepared.body_hash)
                digest = leaf_hash(leaf)
                hashes.append(digest)
                entries.append((index, leaf, digest))
                at = EPOCH + datetime.timedelta(microseconds=prepared.at_us)
                bodies.append((index, at, prepared.salt, prepared.body))
            await conn.copy_records_to_table(
                "audit_entries", records=entries, columns=["idx", "leaf", "leaf_hash"]
            )
            await conn.copy_records_to_table(
                "audit_bodies", records=bodies, columns=["idx", "at", "salt", "body"]
            )
            head = builder.append(hashes)
            tiles.update(head.tiles)  # later, wider versions of a tile replace earlier ones
        await conn.copy_records_to_table(
            "audit_tiles",
            records=[(level, idx, data) for (level, idx), data in tiles.items()],
            columns=["level", "idx", "hashes"],
        )
        await conn.execute(
            "UPDATE audit_tree_state SET size = $1, root = $2 WHERE id = 1",
            head.size,
            head.root,
        )
        await owner.execute(
            "CREATE INDEX audit_bodies_actor_idx ON audit_bodies ((body ->> 'actor_id'), idx)"
        )
        await owner.execute(
            "CREATE INDEX audit_bodies_action_idx ON audit_bodies ((body ->> 'action'), idx)"
        )
        await owner.execute(
            "CREATE INDEX audit_bodies_records_idx ON audit_bodies "
            "USING gin ((body -> 'record_ids') jsonb_path_ops) WITH (fastupdate = off)"
        )
        await owner.execute("ANALYZE")
    finally:
        await conn.close()
        await owner.close()
    return time.perf_counter() - started


class _NoTiles:
    def get(self, level: int, index: int) -> bytes | None:
        return None


async def measure_proofs(dsn: str, size: int, samples: int) -> dict[str, Any]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    proofs = AuditProofs(pool, None, ORIGIN)
    rng = random.Random(9)
    encoder = msgspec.json.Encoder()
    try:
        for _ in range(50):  # warm the plans and the cache
            encoder.encode(await proofs.inclusion(rng.randrange(size), size))
        inclusion: list[float] = []
        for _ in range(samples):
            started = time.perf_counter()
            encoder.encode(await proofs.inclusion(rng.randrange(size), size))
            inclusion.append(time.perf_counter() - started)
        consistency: list[float] = []
        for _ in range(samples):
            first = rng.randrange(1, size)
            started = time.perf_counter()
            encoder.encode(await proofs.consistency(first, size))
            consistency.append(time.perf_counter() - started)
        bundles: list[float] = []
        for _ in range(20):
            start = rng.randrange(size - verify.MAX_BUNDLE_ENTRIES)
            started = time.perf_counter()
            encoder.encode(await proofs.bundle(start, start + verify.MAX_BUNDLE_ENTRIES, size))
            bundles.append(time.perf_counter() - started)
    finally:
        await pool.close()
    return {
        "tree_size": size,
        "inclusion": percentiles(inclusion),
        "consistency": percentiles(consistency),
        "bundle_10000_entries": percentiles(bundles),
    }


# --- 4: the offline verifier ----------------------------------------------------------------------
async def measure_verifier(dsn: str, size: int, entries: int, directory: Path) -> dict[str, Any]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    proofs = AuditProofs(pool, None, ORIGIN)
    bundles = []
    try:
        head_size, head_root = await proofs.tree_head()
        assert head_size == size
        for start in range(0, entries, verify.MAX_BUNDLE_ENTRIES):
            bundle = await proofs.bundle(
                start, min(start + verify.MAX_BUNDLE_ENTRIES, entries), size
            )
            path = directory / f"bundle-{start}.json"
            path.write_bytes(msgspec.json.encode(bundle))
            bundles.append(path)
    finally:
        await pool.close()
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    note = sign_note(format_checkpoint(ORIGIN, size, head_root), ORIGIN, public, key.sign)
    (directory / "checkpoint.txt").write_text(note)
    (directory / "keys.json").write_bytes(
        msgspec.json.encode(
            KeysFile(
                format=KEYS_FORMAT,
                origin=ORIGIN,
                latest_version=1,
                keys=[verifier_key_string(ORIGIN, public)],
            )
        )
    )

    def verify_all(jobs: int) -> float:
        started = time.perf_counter()
        report = verify.run(
            keys=directory / "keys.json",
            checkpoint=directory / "checkpoint.txt",
            bundles=bundles,
            jobs=jobs,
        )
        elapsed = time.perf_counter() - started
        if not report.passed:
            raise SystemExit(f"verifier failed on an untampered log: {report.failures[:3]}")
        return elapsed

    result: dict[str, Any] = {
        "entries": entries,
        "bundles": len(bundles),
        "bytes": sum(p.stat().st_size for p in bundles),
    }
    # One untimed pass first (page cache, allocator), then the median of three, in one
    # process (the rate of the verifier's loop) and in one per CPU (the CLI's default).
    verify_all(1)
    for jobs in (1, os.cpu_count() or 1):
        runs = sorted(verify_all(jobs) for _ in range(3))
        result[f"jobs_{jobs}"] = {
            "seconds_median_of_3": round(runs[1], 3),
            "entries_per_second": round(entries / runs[1]),
            "entries_per_second_runs": [round(entries / r) for r in runs],
        }
    return result


# --- main -------------------------------------------------------------------------------------------
async def prepare_database(admin_dsn: str, name: str) -> None:
    await devstack.bootstrap_database(admin_dsn, name, drop_first=True)
    await devstack.migrate_database(admin_dsn, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--proof-size", type=int, default=1_000_000)
    parser.add_argument("--proof-samples", type=int, default=2000)
    parser.add_argument("--verify-entries", type=int, default=200_000)
    parser.add_argument(
        "--skip", action="append", default=[], help="sequencer|append|naive|proofs|verify"
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="vault-service-bench-audit-"))
    pg = devstack.start_embedded_postgres(work / "pgdata", delete_on_stop=True)
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
        "command": "python -m bench.audit_append " + " ".join(argv or sys.argv[1:]),
    }
    try:
        asyncio.run(prepare_database(pg.admin_dsn, "bench_audit"))
        dsn = devstack.dsn_for(pg.admin_dsn, user="vault_service_app", database="bench_audit")
        owner = devstack.dsn_for(pg.admin_dsn, user="vault_service_owner", database="bench_audit")

        async def naive_schema() -> None:
            conn = await asyncpg.connect(owner)
            try:
                await conn.execute(NAIVE_SCHEMA)
            finally:
                await conn.close()

        asyncio.run(naive_schema())
        for mode in ("sequencer", "log", "naive"):
            if {"sequencer": "sequencer", "log": "append", "naive": "naive"}[mode] in args.skip:
                continue
            result = run_appends(
                dsn, mode, args.processes, args.writers, args.warmup, args.duration
            )
            report[mode] = result
            print(json.dumps(result), file=sys.stderr)

        if "proofs" not in args.skip or "verify" not in args.skip:
            asyncio.run(prepare_database(pg.admin_dsn, "bench_audit_big"))
            big = devstack.dsn_for(
                pg.admin_dsn, user="vault_service_app", database="bench_audit_big"
            )
            big_owner = devstack.dsn_for(
                pg.admin_dsn, user="vault_service_owner", database="bench_audit_big"
            )
            seconds = asyncio.run(build_log(big, big_owner, args.proof_size))
            report["build"] = {"entries": args.proof_size, "seconds": round(seconds, 1)}
            print(json.dumps(report["build"]), file=sys.stderr)
            if "proofs" not in args.skip:
                report["proofs"] = asyncio.run(
                    measure_proofs(big, args.proof_size, args.proof_samples)
                )
                print(json.dumps(report["proofs"]), file=sys.stderr)
            if "verify" not in args.skip:
                files = work / "verify"
                files.mkdir()
                report["verifier"] = asyncio.run(
                    measure_verifier(
                        big, args.proof_size, min(args.verify_entries, args.proof_size), files
                    )
                )
    finally:
        pg.stop()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
