"""The console's OpenID Connect sign-in: which provider and client the page uses.

Authorization code with PKCE (S256), for a public client: the page makes the verifier,
opens the provider's authorization endpoint in a pop-up, gets the code back on its
own callback page and exchanges it at the token endpoint; the ID token it receives is
the bearer it sends the service, verified there like any external token
(`VAULT_SERVICE_OIDC_ISSUERS`, linked account, second factor for auditor routes).
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

import msgspec

from vault_service.errors import ConfigurationError

ENV_VAR = "VAULT_SERVICE_CONSOLE_OIDC"


class ConsoleSignIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    issuer: str
    client_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[\w.~-]+$")]
    authorization_endpoint: str
    token_endpoint: str
    # What the page asks for: `openid` and the provider's scopes that put the claims
    # the service needs (a second factor in `amr` or `acr`).
    scope: Annotated[str, msgspec.Meta(pattern=r"^openid( [\w.:-]{1,64}){0,8}$")] = "openid"

    @property
    def connect_origin(self) -> str:
        """The origin the page's CSP must let it reach: the token endpoint's."""
        parts = urlsplit(self.token_endpoint)
        return f"{parts.scheme}://{parts.netloc}"


def parse_console_signin(json_text: str) -> ConsoleSignIn:
    try:
        return msgspec.json.decode(json_text, type=ConsoleSignIn)
    except msgspec.ValidationError as exc:
        # msgspec names the field and the rule, not the value.
        raise ConfigurationError(f"invalid {ENV_VAR}: {exc}") from None
    except msgspec.DecodeError:
        raise ConfigurationError(f"{ENV_VAR} is not a JSON object") from None


__all__ = ["ENV_VAR", "ConsoleSignIn", "parse_console_signin"]
