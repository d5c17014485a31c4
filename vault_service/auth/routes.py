"""Public key discovery for the service's own tokens."""

from __future__ import annotations

from typing import Any

from litestar import Request, get

from vault_service.auth.tokens import SigningKeys


@get("/.well-known/jwks.json", opt={"public": True, "exclude_from_auth": True})
async def jwks(request: Request[Any, Any, Any]) -> dict[str, Any]:
    keys: SigningKeys = request.app.state.signing_keys
    return keys.jwks()
