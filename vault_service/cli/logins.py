"""The credentials a command runs on, read through the settings: each belongs to one
owner (docs/operator.md, "Who holds which credential")."""

from __future__ import annotations

from vault_service.errors import ConfigurationError, VaultServiceError
from vault_service.settings import Logins

__all__ = ["ADMIN_LOGIN_MISSING", "admin_login"]

ADMIN_LOGIN_MISSING = "set VAULT_SERVICE_ADMIN_DATABASE_URL to your own admin login"


def admin_login(
    text: str = ADMIN_LOGIN_MISSING, error: type[VaultServiceError] = ConfigurationError
) -> str:
    """The admin's OWN database login: the database takes the actor from it, so
    four-eyes holds even against someone who has the service's credentials."""
    dsn = Logins.from_env().admin
    if not dsn:
        raise error(text)
    return dsn
