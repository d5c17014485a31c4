"""The Vault/OpenBao adapter: the only module that talks to Vault."""

from vault_service.kms.vault import (
    BRANCH_KEK,
    CHECKPOINT_KEY,
    INDEX_KEY,
    NATIONAL_INDEX_KEY,
    SERVICE_KEYS,
    TOKEN_KEY,
    TransitKeyAdmin,
    TransitKeyInfo,
    VaultKms,
    wrapped_version,
)

__all__ = [
    "BRANCH_KEK",
    "CHECKPOINT_KEY",
    "INDEX_KEY",
    "NATIONAL_INDEX_KEY",
    "SERVICE_KEYS",
    "TOKEN_KEY",
    "TransitKeyAdmin",
    "TransitKeyInfo",
    "VaultKms",
    "wrapped_version",
]
