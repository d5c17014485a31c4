"""The plaintext reference: same framework, server, database and shapes as the real
service, with no encryption, no authentication and no access checks. The benchmark
reports the real service's throughput as a ratio to this one, measured in the same run."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.params import FromPath

from vault_service.services import keep_session

SELECT = "SELECT id, body::text AS body FROM bench_reference WHERE id = $1"
INSERT = "INSERT INTO bench_reference (id, body) VALUES ($1, $2::jsonb)"


@get("/ref/records/{record_id:str}")
async def read(request: Request[Any, Any, Any], record_id: FromPath[str]) -> Response[bytes]:
    async with request.app.state.pool.acquire() as conn:
        row = await conn.fetchrow(SELECT, uuid.UUID(record_id))
    if row is None:
        return Response(b'{"code":"not_found"}', status_code=404, media_type="application/json")
    body = b'{"id":"' + str(row["id"]).encode() + b'","record":' + row["body"].encode() + b"}"
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


@post("/ref/records", status_code=201)
async def create(request: Request[Any, Any, Any]) -> Response[bytes]:
    body = await request.body()
    msgspec.json.decode(body)  # parse, like the service does (no schema, no checks)
    rid = uuid.uuid4()
    async with request.app.state.pool.acquire() as conn:
        await conn.execute(INSERT, rid, body.decode())
    return Response(
        msgspec.json.encode({"id": rid}), status_code=201, media_type="application/json"
    )


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    # Same pool settings as the service (vault_service.app), reset included.
    app.state.pool = await asyncpg.create_pool(
        os.environ["BENCH_REFERENCE_DSN"], min_size=2, max_size=10, reset=keep_session
    )
    yield
    await app.state.pool.close()


app = Litestar([read, create], lifespan=[lifespan])
