"""What a database reader gets: ciphertexts that reveal nothing and refuse to move."""

from __future__ import annotations

import base64
import json
import secrets
import uuid

import msgspec
import pytest

from tests.conftest import World, load_fixture
from vault_service.auth.permissions import Role

pytestmark = pytest.mark.integration
FULL = json.loads(load_fixture("full_record.json"))


def canary_record(tag: str) -> tuple[dict, list[str]]:
    """The full fixture with unique canaries in every kind of field."""
    c = {
        k: f"Zq{tag}{k}".replace("_", "")
        for k in ("birth", "usage", "first", "note", "line", "city", "holder")
    }
    record = json.loads(json.dumps(FULL))
    record["birth_name"] = c["birth"]
    record["usage_name"] = c["usage"]
    record["first_names"] = [c["first"], "Marie"]
    record["email"] = f"{c['first'].lower()}@canary.example"
    record["addresses"][0]["line1"] = f"12 rue {c['line']}"
    record["addresses"][0]["city"] = c["city"]
    record["allowance"]["holder_name"] = c["holder"]
    record["notes"][0]["text"] = f"Entretien avec {c['note']} au sujet du logement"
    canaries = [
        *c.values(),
        record["email"],
        FULL["nir"],
        FULL["allowance"]["iban"],
        FULL["phone"].replace(" ", ""),
    ]
    return record, canaries


def forms(value: str) -> list[str]:
    raw = value.encode()
    return [
        value,
        value.lower(),
        base64.b64encode(raw).decode()[:-4] or value,
        base64.urlsafe_b64encode(raw).decode()[:-4] or value,
        raw.hex(),
    ]


async def _dump(owner) -> str:
    """Every row of every table of the schema, as text (bytea as hex)."""
    tables = await owner.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
    )
    parts = []
    for t in tables:
        rows = await owner.fetch(f'SELECT t::text AS line FROM "{t["table_name"]}" t')  # noqa: S608
        parts.extend(r["line"] for r in rows)
    return "\n".join(parts)


async def test_database_dump_holds_no_plaintext(client, world: World) -> None:
    c = await world.counsellor()
    tag = secrets.token_hex(3)
    record, canaries = canary_record(tag)
    r = await client.post("/v1/records", json=record, headers=c.headers())
    assert r.status_code == 201
    # The record reads back, so the canaries really went in.
    back = (await client.get(f"/v1/records/{r.json()['id']}", headers=c.headers())).json()["record"]
    assert back["birth_name"] == record["birth_name"]
    dump = await _dump(world.owner)
    assert str(c.id) in dump  # the dump is real: ids are there
    dump_lower = dump.lower()
    for canary in canaries:
        for form in forms(canary):
            assert form.lower() not in dump_lower, "a personal value reached the database in clear"


async def _sealed(owner, record_id: str) -> dict[str, bytes]:
    raw = await owner.fetchval("SELECT sealed FROM records WHERE id = $1", uuid.UUID(record_id))
    return msgspec.msgpack.decode(raw, type=dict[str, bytes])


async def _store(owner, record_id: str, sealed: dict[str, bytes]) -> None:
    await owner.execute(
        "UPDATE records SET sealed = $2 WHERE id = $1",
        uuid.UUID(record_id),
        msgspec.msgpack.encode(sealed),
    )


async def _read(client, c, rid: str):
    return await client.get(f"/v1/records/{rid}", headers=c.headers())


async def test_moved_or_flipped_ciphertexts_fail_loudly(client, world: World) -> None:
    sid = await world.structure()
    c = await world.counsellor(sid)
    rid1 = (await client.post("/v1/records", json=FULL, headers=c.headers())).json()["id"]
    rid2 = (
        await client.post("/v1/records", json={**FULL, "birth_name": "Autre"}, headers=c.headers())
    ).json()["id"]
    s1, s2 = await _sealed(world.owner, rid1), await _sealed(world.owner, rid2)
    cases = {
        "copied to another record": {**s2, "birth_name": s1["birth_name"]},
        "copied to another field": {**s2, "usage_name": s2["birth_name"]},
        "one bit flipped": {**s2, "email": bytes([*s2["email"][:-1], s2["email"][-1] ^ 1])},
        "format byte changed": {**s2, "email": b"\x02" + s2["email"][1:]},
    }
    for name, tampered in cases.items():
        await _store(world.owner, rid2, tampered)
        r = await _read(client, c, rid2)
        assert (r.status_code, r.json()["code"]) == (500, "decryption_failed"), name
        assert "Autre" not in r.text and "Lef" not in r.text
    await _store(world.owner, rid2, s2)
    assert (await _read(client, c, rid2)).status_code == 200
    # A record key moved to another record is refused too.
    key1 = await world.owner.fetchval(
        "SELECT record_key FROM records WHERE id = $1", uuid.UUID(rid1)
    )
    key2 = await world.owner.fetchval(
        "SELECT record_key FROM records WHERE id = $1", uuid.UUID(rid2)
    )
    await world.owner.execute(
        "UPDATE records SET record_key = $2 WHERE id = $1", uuid.UUID(rid2), key1
    )
    assert (await _read(client, c, rid2)).json()["code"] == "decryption_failed"
    await world.owner.execute(
        "UPDATE records SET record_key = $2 WHERE id = $1", uuid.UUID(rid2), key2
    )
    assert (await _read(client, c, rid2)).status_code == 200


async def _alerts_on(client, world: World, rid: str) -> list[dict]:
    auditor = await world.account(Role.AUDITOR, None)
    r = await client.get("/v1/alerts", headers=auditor.headers(purpose="audit"))
    return [
        a
        for a in r.json()["items"]
        if a["kind"] == "record.integrity_failed" and a["details"].get("record_id") == rid
    ]


async def test_a_database_writer_cannot_roll_back_edit_or_move_a_record(
    client, world: World, stack
) -> None:
    """Issue 10: each done in SQL as a superuser; the next read refuses (500
    record_integrity, nothing of the record in the body) and raises a critical alert;
    transfers and updates made by the service keep working."""
    import asyncpg

    sid = await world.structure()
    c, other = await world.counsellor(sid), await world.counsellor(sid)
    su = await asyncpg.connect(stack.dsn(None))  # the server's superuser
    try:
        for attack in ("replay", "clear", "referent"):
            rid = (await client.post("/v1/records", json=FULL, headers=c.headers())).json()["id"]
            old = await su.fetchval("SELECT sealed FROM records WHERE id = $1", uuid.UUID(rid))
            # A legitimate update by the service: new ciphertexts, a new tag.
            r = await client.patch(
                f"/v1/records/{rid}",
                json={"email": "nouvelle.adresse@example.org", "programme_kind": "CEJ_JR"},
                headers={**c.headers(), "If-Match": '"1"'},
            )
            assert r.status_code == 200, r.text
            assert (await _read(client, c, rid)).status_code == 200
            if attack == "replay":
                # The older e-mail ciphertext of the same record and field: it opens
                # (same record, field and key version), but the record is not what the
                # service wrote last.
                now = msgspec.msgpack.decode(
                    await su.fetchval("SELECT sealed FROM records WHERE id = $1", uuid.UUID(rid))
                )
                now["email"] = msgspec.msgpack.decode(old)["email"]
                await su.execute(
                    "UPDATE records SET sealed = $2 WHERE id = $1",
                    uuid.UUID(rid),
                    msgspec.msgpack.encode(now),
                )
            elif attack == "clear":
                await su.execute(
                    "UPDATE records SET clear = jsonb_set(clear, '{programme_kind}', '\"PACEA\"')"
                    " WHERE id = $1",
                    uuid.UUID(rid),
                )
            else:  # into another counsellor's caseload
                await su.execute(
                    "UPDATE records SET referent_id = $2 WHERE id = $1", uuid.UUID(rid), other.id
                )
            reader = other if attack == "referent" else c
            r = await _read(client, reader, rid)
            assert (r.status_code, r.json()["code"]) == (500, "record_integrity"), attack
            assert "nouvelle" not in r.text and FULL["birth_name"] not in r.text
            assert len(await _alerts_on(client, world, rid)) == 1, attack
            # Nor does a caseload list it in summary.
            listed = await client.get("/v1/caseload", headers=reader.headers())
            assert listed.status_code == 500 and FULL["birth_name"] not in listed.text
            await su.execute("DELETE FROM records WHERE id = $1", uuid.UUID(rid))
    finally:
        await su.close()
    # Transfers re-tag the record: a youth moved by the service reads fine.
    sup = await world.account(Role.SUPERVISOR, sid)
    rid = (await client.post("/v1/records", json=FULL, headers=c.headers())).json()["id"]
    r = await client.post(
        f"/v1/records/{rid}/transfer",
        json={"to_account": str(other.id), "kind": "definitive"},
        headers=sup.headers(purpose="transfer"),
    )
    assert r.status_code == 200, r.text
    assert (await _read(client, other, rid)).status_code == 200
