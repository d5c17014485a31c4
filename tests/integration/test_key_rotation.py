"""Signing-key rotation: new tokens get the new kid; old tokens keep verifying while
their key version is live; raising min_decryption_version retires them."""

from __future__ import annotations

import pytest

from tests.conftest import Stack, World
from vault_service.auth.permissions import Role
from vault_service.auth.tokens import SigningKeys, TokenIssuer, TokenVerifier
from vault_service.errors import Unauthenticated
from vault_service.kms import BRANCH_KEK, TOKEN_KEY, VaultKms

pytestmark = pytest.mark.integration


async def test_token_key_rotation_keeps_old_tokens_verifiable(stack: Stack, world: World) -> None:
    settings = stack.settings()
    kms = VaultKms(settings.vault)
    try:
        keys = SigningKeys(kms)
        await keys.refresh()
        issuer, verifier = TokenIssuer(settings, kms, keys), TokenVerifier(settings, keys)
        c = await world.counsellor()
        old = await issuer.issue(c.id, Role.COUNSELLOR, c.structure_id, 600)
        old_kid = keys.latest.kid
        # The key admin rotates (the service's own policy cannot: checked below).
        stack.bao.client().secrets.transit.rotate_key(name=TOKEN_KEY)
        await keys.refresh()
        assert keys.latest.kid != old_kid
        assert {old_kid, keys.latest.kid} <= set(keys.by_kid)
        new = await issuer.issue(c.id, Role.COUNSELLOR, c.structure_id, 600)
        assert (await verifier.verify(old)).sub == c.id
        assert (await verifier.verify(new)).sub == c.id
        assert {k["kid"] for k in keys.jwks()["keys"]} >= {old_kid, keys.latest.kid}
        # Retire the old version: its tokens stop verifying.
        stack.bao.client().secrets.transit.update_key_configuration(
            name=TOKEN_KEY, min_decryption_version=keys.latest.version
        )
        await keys.refresh()
        with pytest.raises(Unauthenticated) as info:
            await TokenVerifier(settings, keys).verify(old)
        assert info.value.reason == "token_unknown_key"
        # A verifier that had cached the old token drops it once its key is retired.
        with pytest.raises(Unauthenticated):
            await verifier.verify(old)
    finally:
        # The session's other tests hold tokens of the first version.
        stack.bao.client().secrets.transit.update_key_configuration(
            name=TOKEN_KEY, min_decryption_version=1
        )
        kms.close()


def test_service_policy_cannot_rotate_or_export(stack: Stack) -> None:
    import hvac.exceptions

    client = stack.bao.client(token=stack.service_token)
    for attempt in (
        lambda: client.secrets.transit.rotate_key(name=TOKEN_KEY),
        lambda: client.secrets.transit.export_key(name=BRANCH_KEK, key_type="encryption-key"),
        lambda: client.secrets.transit.update_key_configuration(
            name=BRANCH_KEK, deletion_allowed=True
        ),
        lambda: client.secrets.transit.delete_key(name=BRANCH_KEK),
        lambda: client.secrets.transit.backup_key(name=BRANCH_KEK),
    ):
        with pytest.raises(hvac.exceptions.Forbidden):
            attempt()
