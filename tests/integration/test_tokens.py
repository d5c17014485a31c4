"""Hostile tokens: every one refused with 401 and a stable code."""

from __future__ import annotations

import base64
import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.conftest import World
from vault_service.auth.permissions import Role, scopes_for
from vault_service.kms import TOKEN_KEY

pytestmark = pytest.mark.integration


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(app, account_id: uuid.UUID, structure_id: uuid.UUID | None, **over) -> dict:
    s = app.state.settings
    now = int(time.time())
    claims = {
        "iss": s.tokens.issuer,
        "aud": s.tokens.audience,
        "sub": str(account_id),
        "jti": str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "role": "counsellor",
        "scope": " ".join(sorted(scopes_for(Role.COUNSELLOR))),
    }
    if structure_id:
        claims["structure"] = str(structure_id)
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


async def _vault_sign(app, header: dict, claims: dict) -> str:
    """A token signed by the real Vault key: only its content is hostile."""
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    keys = app.state.signing_keys
    sig = await app.state.kms.sign(TOKEN_KEY, signing_input.encode(), keys.latest.version)
    return signing_input + "." + _b64(sig)


@pytest.fixture
async def victim(world: World):
    sid = await world.structure()
    return await world.counsellor(sid)


async def _status(client, token: str) -> tuple[int, str]:
    r = await client.get(
        "/v1/caseload", headers={"Authorization": f"Bearer {token}", "X-Purpose": "follow_up"}
    )
    return r.status_code, r.json().get("code", "")


async def _status_after_notify(client, token: str) -> tuple[int, str]:
    """The answer once the NOTIFY has reached the account cache (delivered within
    milliseconds; a loaded machine may take a little longer)."""
    import asyncio

    for _ in range(40):
        status = await _status(client, token)
        if status[0] == 401:
            break
        await asyncio.sleep(0.05)
    return status


async def test_valid_token_is_accepted(client, victim) -> None:
    assert await _status(client, victim.token) == (200, "")


async def test_hostile_token_corpus(client, app, world: World, victim) -> None:
    kid = app.state.signing_keys.latest.kid
    public_raw = app.state.signing_keys.latest.raw
    good = _claims(app, victim.id, victim.structure_id)
    header = {"alg": "EdDSA", "typ": "JWT", "kid": kid}
    foreign = Ed25519PrivateKey.generate()
    foreign_kid = _b64(foreign.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))[:43]
    now = int(time.time())
    corpus: dict[str, tuple[str, str]] = {
        "alg none": (
            jwt.encode(good, None, algorithm="none", headers={"kid": kid}),
            "token_algorithm",
        ),
        "HS256 with the public key as secret": (
            jwt.encode(good, public_raw, algorithm="HS256", headers={"kid": kid}),
            "token_algorithm",
        ),
        "ES256 instead of EdDSA": (
            _b64(json.dumps({"alg": "ES256", "kid": kid}).encode())
            + "."
            + _b64(json.dumps(good).encode())
            + ".AAAA",
            "token_algorithm",
        ),
        "expired": (
            await _vault_sign(
                app, header, {**good, "iat": now - 4000, "nbf": now - 4000, "exp": now - 400}
            ),
            "token_expired",
        ),
        "nbf in the future": (
            await _vault_sign(app, header, {**good, "nbf": now + 600, "exp": now + 900}),
            "token_not_yet_valid",
        ),
        "iat in the future": (
            await _vault_sign(app, header, {**good, "iat": now + 600, "exp": now + 900}),
            "token_not_yet_valid",
        ),
        "wrong audience": (
            await _vault_sign(app, header, {**good, "aud": "another-service"}),
            "token_audience",
        ),
        "audience list": (
            await _vault_sign(app, header, {**good, "aud": [good["aud"], "x"]}),
            "token_audience",
        ),
        "wrong issuer": (
            # routed by its iss before any verification: no verifier knows it
            await _vault_sign(app, header, {**good, "iss": "https://evil.example"}),
            "token_issuer_unknown",
        ),
        "missing sub": (
            await _vault_sign(app, header, _claims(app, victim.id, victim.structure_id, sub=None)),
            "token_claims",
        ),
        "missing jti": (
            await _vault_sign(app, header, _claims(app, victim.id, victim.structure_id, jti=None)),
            "token_claims",
        ),
        "missing exp": (
            await _vault_sign(app, header, _claims(app, victim.id, victim.structure_id, exp=None)),
            "token_claims",
        ),
        "lifetime over an hour": (
            await _vault_sign(app, header, {**good, "exp": now + 7200}),
            "token_lifetime",
        ),
        "unknown crit header": (
            await _vault_sign(app, {**header, "crit": ["exp"]}, good),
            "token_crit",
        ),
        "unknown kid": (
            await _vault_sign(app, {**header, "kid": "A" * 43}, good),
            "token_unknown_key",
        ),
        "kid with path characters": (
            await _vault_sign(app, {**header, "kid": "../../etc/passwd"}, good),
            "token_kid",
        ),
        "signed by a key not in the JWKS": (
            jwt.encode(good, foreign, algorithm="EdDSA", headers={"kid": kid}),
            "token_signature",
        ),
        "foreign key and kid": (
            jwt.encode(good, foreign, algorithm="EdDSA", headers={"kid": foreign_kid}),
            "token_unknown_key",
        ),
        "over 8 KB": (
            await _vault_sign(app, header, {**good, "pad": "x" * 9000}),
            "token_too_large",
        ),
        "not a JWT": ("a.b.c", "token_malformed"),
        "role escalated in claims": (
            await _vault_sign(app, header, {**good, "role": "supervisor"}),
            "token_stale",
        ),
    }
    for name, (token, code) in corpus.items():
        status, got = await _status(client, token)
        assert (status, got) == (401, code), name


async def test_missing_and_malformed_headers(client) -> None:
    r = await client.get("/v1/caseload", headers={"X-Purpose": "follow_up"})
    assert (r.status_code, r.json()["code"]) == (401, "token_missing")
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = await client.get(
        "/v1/caseload", headers={"Authorization": "Basic dXNlcjpwYXNz", "X-Purpose": "follow_up"}
    )
    assert (r.status_code, r.json()["code"]) == (401, "token_malformed")


async def test_inactive_accounts_and_revocation(client, app, world: World) -> None:
    sid = await world.structure()
    pending = await world.account(Role.COUNSELLOR, sid, state="pending")
    assert await _status(client, pending.token) == (401, "account_inactive")
    active = await world.counsellor(sid)
    assert (await _status(client, active.token))[0] == 200
    # Suspension: every outstanding token refused on the next request (NOTIFY drops caches).
    await world.owner.execute(
        "UPDATE accounts SET state = 'suspended', tokens_valid_after = now() WHERE id = $1",
        active.id,
    )
    await world.owner.execute("SELECT pg_notify('vault_service_accounts', $1)", str(active.id))
    assert await _status_after_notify(client, active.token) == (401, "account_inactive")
    # A single revoked jti.
    other = await world.counsellor(sid)
    jti = jwt.decode(other.token, options={"verify_signature": False})["jti"]
    assert (await _status(client, other.token))[0] == 200
    await world.owner.execute(
        "INSERT INTO revoked_tokens (jti, account_id, expires_at) VALUES ($1, $2, now() + interval '1 hour')",
        uuid.UUID(jti),
        other.id,
    )
    await world.owner.execute("SELECT pg_notify('vault_service_accounts', $1)", str(other.id))
    assert await _status_after_notify(client, other.token) == (401, "token_revoked")


async def test_tokens_issue_refuses_long_lifetimes(app, victim) -> None:
    from vault_service.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        await app.state.token_issuer.issue(victim.id, Role.COUNSELLOR, victim.structure_id, 7200)
