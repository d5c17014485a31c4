"""External OpenID tokens end to end: a real provider, the running service, the log.

The provider is OpenBao's identity OIDC provider (the shared test OpenBao, and a second
dev server that a test stops): it signs ID tokens with a key it publishes at
`.well-known/keys`, for roles whose templates put `acr` and `amr` claims, for users
signed in through userpass (the entity id is the `sub`). The service runs as a real
`vault-service serve` process configured with `VAULT_SERVICE_OIDC_ISSUERS`; the
identity is linked to an account with `accounts link` and a second admin's approval.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hvac
import pytest

from tests.conftest import FIXTURES, Stack, World, serve_processes
from tests.integration.test_admin_acts import _events, _integrated, _login, _ok
from tests.integration.test_cli import _cli, _env
from vault_service.auth.oidc import external_actor_id
from vault_service.auth.permissions import Role
from vault_service.dev import embedded as devstack

pytestmark = pytest.mark.integration

AUDIENCE = "vault-service-test"  # the stack's VAULT_SERVICE_JWT_AUDIENCE
NIR = json.loads((FIXTURES / "full_record.json").read_text("utf-8"))["nir"]
# role name -> (acr, amr, audience, ttl)
ROLES: dict[str, tuple[str, list[str], str, str]] = {
    "full": ("eidas2", ["pwd", "mfa"], AUDIENCE, "5m"),
    "password": ("eidas2", ["pwd"], AUDIENCE, "5m"),
    "low": ("eidas1", ["pwd", "mfa"], AUDIENCE, "5m"),
    "other": ("eidas2", ["pwd", "mfa"], "another-service", "5m"),
    "short": ("eidas2", ["pwd", "mfa"], AUDIENCE, "1s"),
}


class Provider:
    """OpenBao's OIDC identity provider, configured for these tests."""

    def __init__(self, bao: devstack.OpenBao) -> None:
        self.bao = bao
        self.suffix = secrets.token_hex(3)
        self.key = f"vs-{self.suffix}"
        self.mount = f"up-{self.suffix}"
        c = bao.client()
        c.write("identity/oidc/config", issuer=bao.addr)
        c.write(
            f"identity/oidc/key/{self.key}",
            algorithm="RS256",
            allowed_client_ids=["*"],
            rotation_period="24h",
            verification_ttl="24h",
        )
        for name, (acr, amr, audience, ttl) in ROLES.items():
            c.write(
                f"identity/oidc/role/{self.role(name)}",
                key=self.key,
                client_id=audience,
                ttl=ttl,
                template=json.dumps({"acr": acr, "amr": amr}),
            )
        policy = f"oidc-token-{self.suffix}"
        c.sys.create_or_update_policy(
            policy, 'path "identity/oidc/token/*" { capabilities = ["read"] }'
        )
        c.sys.enable_auth_method("userpass", path=self.mount)
        self._policy = policy
        base = bao.addr + "/v1/identity/oidc"
        with urllib.request.urlopen(base + "/.well-known/openid-configuration") as r:  # noqa: S310 - loopback test server
            self.issuer: str = json.load(r)["issuer"]
        self.jwks_uri = base + "/.well-known/keys"

    def role(self, name: str) -> str:
        return f"{name}-{self.suffix}"

    def user(self, name: str) -> tuple[str, hvac.Client]:
        """A user signed in at the provider: (its subject, a client with its token)."""
        c = self.bao.client()
        password = secrets.token_urlsafe(12)
        c.write(
            f"auth/{self.mount}/users/{name}",
            password=password,
            token_policies=["default", self._policy],
        )
        login = c.auth.userpass.login(name, password, mount_point=self.mount)
        return login["auth"]["entity_id"], hvac.Client(
            url=self.bao.addr, token=login["auth"]["client_token"], timeout=5
        )

    def token(self, user: hvac.Client, role: str = "full") -> str:
        return str(user.read(f"identity/oidc/token/{self.role(role)}")["data"]["token"])

    def rotate(self) -> None:
        """Sign with a key made after now: OpenBao publishes its next key ahead of time,
        so it takes two rotations to sign with one no earlier key set held."""
        for _ in range(2):
            self.bao.client().write(f"identity/oidc/key/{self.key}/rotate", verification_ttl="24h")

    def config(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "audience": AUDIENCE,
            "jwks_uri": self.jwks_uri,
            "algorithms": ["RS256"],
            "required_acr": ["eidas2", "eidas3"],
            "mfa_amr": ["mfa"],
            "leeway_seconds": 0,
        }


@pytest.fixture(scope="module")
def second_bao() -> Iterator[devstack.OpenBao]:
    bao = devstack.start_openbao(
        Path(tempfile.mkdtemp(prefix="vault-service-idp-")), persistent=False
    )
    try:
        yield bao
    finally:
        bao.stop()


def _headers(token: str, purpose: str = "follow_up") -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "X-Purpose": purpose}


async def _code(http: httpx.AsyncClient, base: str, token: str, *, nir: bool = False) -> str:
    if nir:
        r = await http.post(
            base + "/v1/records/search/nir", json={"nir": NIR}, headers=_headers(token)
        )
    else:
        r = await http.get(base + "/v1/caseload", headers=_headers(token))
    if r.status_code == 200:
        return "ok"
    return str(r.json()["code"])


async def test_external_tokens_through_the_running_service(
    stack: Stack, world: World, client: Any, second_bao: devstack.OpenBao
) -> None:
    provider = Provider(stack.bao)
    elsewhere = Provider(second_bao)  # a real provider the service is not configured for
    alice_sub, alice = await asyncio.to_thread(provider.user, "alice")
    bob_sub, bob = await asyncio.to_thread(provider.user, "bob")
    _, carol = await asyncio.to_thread(elsewhere.user, "carol")
    counsellor = await world.counsellor()
    auditor = await world.account(Role.AUDITOR, None)

    # The link: asked by one admin, approved by a second, shown in `accounts list`.
    dsn_a, admin_a = await _login(stack, world)
    dsn_b, admin_b = await _login(stack, world)
    env_a = _env(stack, VAULT_SERVICE_ADMIN_DATABASE_URL=dsn_a)
    env_b = _env(stack, VAULT_SERVICE_ADMIN_DATABASE_URL=dsn_b)
    link = ["--issuer", provider.issuer, "--subject", alice_sub]
    asked = _ok(await asyncio.to_thread(_cli, env_a, "accounts", "link", str(counsellor.id), *link))
    self_approved = await asyncio.to_thread(_cli, env_a, "accounts", "approve", asked["request_id"])
    assert self_approved.returncode != 0
    assert "four_eyes_required" in self_approved.stderr
    _ok(await asyncio.to_thread(_cli, env_b, "accounts", "approve", asked["request_id"]))
    again = await asyncio.to_thread(_cli, env_a, "accounts", "link", str(counsellor.id), *link)
    assert "identity_already_linked" in again.stderr
    listed = _ok(await asyncio.to_thread(_cli, _env(stack), "accounts", "list", "--json"))
    mine = next(a for a in listed if a["id"] == str(counsellor.id))
    assert mine["external_identities"] == [{"issuer": provider.issuer, "subject": alice_sub}]

    issuers = json.dumps([provider.config()])
    async with serve_processes(stack, 1, oidc_issuers=issuers) as served:
        http, base = served.http, served.bases[0]
        full = await asyncio.to_thread(provider.token, alice, "full")
        password = await asyncio.to_thread(provider.token, alice, "password")
        # A linked account reads its caseload with the provider's token.
        r = await http.get(base + "/v1/caseload", headers=_headers(full))
        assert r.status_code == 200, r.text
        # MFA: the NIR lookup needs it; the password-only token reads the caseload only.
        assert await _code(http, base, full, nir=True) == "ok"
        assert await _code(http, base, password) == "ok"
        r = await http.post(
            base + "/v1/records/search/nir", json={"nir": NIR}, headers=_headers(password)
        )
        assert r.status_code == 401
        assert r.json()["code"] == "token_assurance_insufficient"
        assert "insufficient_user_authentication" in r.headers["www-authenticate"]
        # Each refusal with its own code.
        low = await asyncio.to_thread(provider.token, alice, "low")
        assert await _code(http, base, low) == "token_assurance_insufficient"
        unlinked = await asyncio.to_thread(provider.token, bob, "full")
        assert await _code(http, base, unlinked) == "identity_not_linked"
        foreign = await asyncio.to_thread(elsewhere.token, carol, "full")
        assert await _code(http, base, foreign) == "token_issuer_unknown"
        other = await asyncio.to_thread(provider.token, alice, "other")
        assert await _code(http, base, other) == "token_audience"
        short = await asyncio.to_thread(provider.token, alice, "short")
        await asyncio.sleep(2.2)
        assert await _code(http, base, short) == "token_expired"

        # Unlinked under four-eyes: the same identity is refused on its next request.
        asked = _ok(
            await asyncio.to_thread(_cli, env_a, "accounts", "unlink", str(counsellor.id), *link)
        )
        _ok(await asyncio.to_thread(_cli, env_b, "accounts", "approve", asked["request_id"]))
        assert await _code(http, base, full) == "identity_not_linked"
    listed = _ok(await asyncio.to_thread(_cli, _env(stack), "accounts", "list", "--json"))
    mine = next(a for a in listed if a["id"] == str(counsellor.id))
    assert mine["external_identities"] == []

    # The access log: every refusal whose signature verified, with its actor.
    await _integrated(world.owner)
    by_account = await _events(client, auditor, actor_id=str(counsellor.id))
    refused = sorted(e["refusal_code"] for e in by_account if e["outcome"] == "refused")
    assert refused == [
        "token_assurance_insufficient",  # acr below the issuer's floor
        "token_assurance_insufficient",  # password only, on the NIR lookup
        "token_audience",
        "token_expired",
    ]
    assert sum(1 for e in by_account if e["outcome"] == "allowed") >= 3
    # An identity linked to no account (bob; alice after the unlink): its own id.
    for sub in (bob_sub, alice_sub):
        events = await _events(
            client, auditor, actor_id=str(external_actor_id(provider.issuer, sub))
        )
        assert [(e["outcome"], e["refusal_code"]) for e in events] == [
            ("refused", "identity_not_linked")
        ]
    # Linking and unlinking are admin acts, one entry each, naming the account only.
    acts_a = await _events(client, auditor, actor_id=str(admin_a))
    acts_b = await _events(client, auditor, actor_id=str(admin_b))
    assert [(e["action"], e["outcome"], e["refusal_code"]) for e in acts_a] == [
        ("account.request_link", "allowed", None),
        ("account.approve", "refused", "four_eyes_required"),
        ("account.request_link", "refused", "identity_already_linked"),
        ("account.request_unlink", "allowed", None),
    ]
    assert [(e["action"], e["outcome"]) for e in acts_b] == [
        ("account.approve", "allowed"),
        ("account.approve", "allowed"),
    ]
    for entry in acts_a + acts_b:
        assert alice_sub not in json.dumps(entry)
        if entry["outcome"] == "allowed":
            assert entry["record_ids"] == [str(counsellor.id)]


async def test_provider_down_known_keys_keep_working(
    stack: Stack, world: World, second_bao: devstack.OpenBao
) -> None:
    provider = Provider(second_bao)
    subject, alice = await asyncio.to_thread(provider.user, "alice")
    counsellor = await world.counsellor()
    await world.owner.execute(
        "INSERT INTO external_identities (issuer, subject, account_id) VALUES ($1, $2, $3)",
        provider.issuer,
        subject,
        counsellor.id,
    )
    issuers = json.dumps([provider.config()])
    async with serve_processes(stack, 1, oidc_issuers=issuers) as served:
        http, base = served.http, served.bases[0]
        known = await asyncio.to_thread(provider.token, alice)
        assert await _code(http, base, known) == "ok"  # the key set is fetched now
        await asyncio.to_thread(provider.rotate)
        rotated = await asyncio.to_thread(provider.token, alice)
        second_bao.stop()
        # The provider is gone: the key already known keeps verifying, the new kid is
        # refused with its own code, and our own tokens are untouched.
        assert await _code(http, base, known) == "ok"
        assert await _code(http, base, rotated) == "token_unknown_key"
        assert await _code(http, base, counsellor.token) == "ok"
        assert await _code(http, base, known, nir=True) == "ok"
