"""The external OpenID Connect providers a deployment trusts, as configured
(`VAULT_SERVICE_OIDC_ISSUERS`): checked when the settings are read, so a service with
an unsafe provider does not start. The verifier is vault_service/auth/oidc.py.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

import msgspec

from vault_service.errors import ConfigurationError

__all__ = [
    "ENV_VAR",
    "SUPPORTED_ALGORITHMS",
    "InvalidIssuerConfig",
    "IssuerConfig",
    "parse_issuers",
    "url_allowed",
]

ENV_VAR: Final = "VAULT_SERVICE_OIDC_ISSUERS"
SUPPORTED_ALGORITHMS: Final = frozenset({"RS256", "PS256", "ES256", "EdDSA"})
_LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})
_MAX_LIFETIME_CAP: Final = 86400
_MAX_LEEWAY: Final = 60
_MAX_ISSUER_LENGTH: Final = 300  # external_identities.issuer CHECK (length(issuer) <= 300)


class InvalidIssuerConfig(ConfigurationError, ValueError):
    """An issuer entry is invalid. Also a ValueError so that msgspec, decoding the
    JSON list, reports it with its position (`- at $[1]`) instead of a value."""


def url_allowed(url: str, *, allow_query: bool) -> bool:
    """https, or plain http to a loopback host (tests and local dev); no credentials,
    no fragment, nothing that urlsplit would silently strip (tabs, newlines)."""
    if not url.isascii() or not url.isprintable() or " " in url:
        return False
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        return False
    if parts.username is not None or parts.password is not None or parts.fragment:
        return False
    if parts.query and not allow_query:
        return False
    if not parts.hostname:
        return False
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS


class IssuerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One trusted external OpenID Connect provider."""

    issuer: str
    audience: str
    jwks_uri: str
    algorithms: tuple[str, ...]
    # Every token of this issuer: `acr` one of these (when any), all these `amr` members.
    required_acr: tuple[str, ...] = ()
    required_amr: tuple[str, ...] = ()
    # What counts as multi-factor, for routes whose permission needs it: an `acr` among
    # `mfa_acr`, or every member of `mfa_amr` (when configured) in `amr`.
    mfa_acr: tuple[str, ...] = ()
    mfa_amr: tuple[str, ...] = ("mfa",)
    max_lifetime_seconds: int = 3600
    leeway_seconds: int = 30

    def __post_init__(self) -> None:
        # Messages name the rule, never the value: a misconfigured URL may carry a secret.
        if not url_allowed(self.issuer, allow_query=False):
            raise InvalidIssuerConfig("issuer must be an https URL without query or fragment")
        if len(self.issuer) > _MAX_ISSUER_LENGTH:
            raise InvalidIssuerConfig("issuer must be at most 300 characters")
        if not url_allowed(self.jwks_uri, allow_query=True):
            raise InvalidIssuerConfig("jwks_uri must be an https URL without credentials")
        if not self.audience:
            raise InvalidIssuerConfig("audience must not be empty")
        if not self.algorithms:
            raise InvalidIssuerConfig("algorithms must not be empty")
        if not SUPPORTED_ALGORITHMS.issuperset(self.algorithms):
            # Never HS*: the IdP's "secret" would be a public key; never none.
            raise InvalidIssuerConfig("algorithms must be among RS256, PS256, ES256, EdDSA")
        if len(set(self.algorithms)) != len(self.algorithms):
            raise InvalidIssuerConfig("algorithms must not repeat")
        if not all((*self.required_acr, *self.required_amr, *self.mfa_acr, *self.mfa_amr)):
            raise InvalidIssuerConfig("acr and amr entries must not be empty")
        if not 1 <= self.max_lifetime_seconds <= _MAX_LIFETIME_CAP:
            raise InvalidIssuerConfig("max_lifetime_seconds must be between 1 and 86400")
        if not 0 <= self.leeway_seconds <= _MAX_LEEWAY:
            raise InvalidIssuerConfig("leeway_seconds must be between 0 and 60")


def parse_issuers(json_text: str) -> tuple[IssuerConfig, ...]:
    """Parse `VAULT_SERVICE_OIDC_ISSUERS`: a JSON list of issuer objects."""
    try:
        issuers = msgspec.json.decode(json_text, type=tuple[IssuerConfig, ...])
    except msgspec.ValidationError as exc:
        # msgspec names the field and the rule (and our __post_init__ message), not the value.
        raise ConfigurationError(f"invalid {ENV_VAR}: {exc}") from None
    except msgspec.DecodeError:
        raise ConfigurationError(f"{ENV_VAR} is not valid JSON") from None
    if len({i.issuer for i in issuers}) != len(issuers):
        raise ConfigurationError(f"invalid {ENV_VAR}: an issuer is configured twice")
    return issuers
