"""One error base with stable codes; mapped once to RFC 9457 problem details in app.py.

An error's message is for operators and must never carry a personal value, a token,
a key or SQL text: the public `detail` is a fixed sentence per class unless a caller
passes a safe one explicitly.
"""

from __future__ import annotations

import re
from typing import ClassVar

import asyncpg
import msgspec


class VaultServiceError(Exception):
    """Base of every error the service raises on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None):
        self.detail = detail or self.title
        self.headers = headers or {}
        super().__init__(self.detail)


class InternalError(VaultServiceError):
    """Something that cannot happen did: 500, with nothing of it in the answer."""


class ConfigurationError(VaultServiceError):
    code = "configuration_error"
    title = "The service is not configured correctly"


class BadRequest(VaultServiceError):
    status = 400
    code = "bad_request"
    title = "The request is malformed"


class InvalidBody(BadRequest):
    code = "invalid_body"
    title = "The request body does not match the schema"


def invalid_body(exc: msgspec.ValidationError | msgspec.DecodeError) -> InvalidBody:
    """A body error that names the rule and the path, never a value.

    msgspec's messages quote offending values in single quotes (`Invalid enum value
    'DUPONT ...'`) and name an unknown field, which is client input too; both are cut.
    Field names from the schema and types stay, in backticks."""
    if not isinstance(exc, msgspec.ValidationError):  # malformed JSON (its parent class)
        return InvalidBody("the body is not a JSON object of the expected shape")
    rule, _, where = str(exc).partition(" - at `")
    if rule.startswith("Object contains unknown field"):
        rule = "the body contains a property the schema does not define"
    rule = _QUOTED.sub("'…'", rule)
    path = where.rstrip("`")
    return InvalidBody((rule + (f" (at {path})" if path else ""))[:300])


_QUOTED = re.compile(r"'[^']*'")


class InvalidParameter(BadRequest):
    code = "invalid_parameter"
    title = "A query or path parameter is invalid"


class PurposeRequired(BadRequest):
    code = "purpose_required"
    title = "X-Purpose header missing or not in the allowed list"


class Unauthenticated(VaultServiceError):
    status = 401
    code = "unauthenticated"
    title = "A valid bearer token is required"

    def __init__(self, detail: str | None = None, *, reason: str = "invalid_token") -> None:
        # reason is a stable sub-code (e.g. "token_expired"); it is what tests and
        # clients switch on, never a library's message.
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        self.reason = reason


class AssuranceInsufficient(Unauthenticated):
    """A token that verified, for a route whose permission needs a second factor the
    token does not show (RFC 9470 step-up: the client signs in again, with MFA)."""

    def __init__(self) -> None:
        super().__init__(reason="token_assurance_insufficient")
        self.headers = {
            "WWW-Authenticate": 'Bearer error="insufficient_user_authentication", '
            'error_description="a second factor is required"'
        }


class Forbidden(VaultServiceError):
    status = 403
    code = "forbidden"
    title = "The caller's role does not allow this action"


class PurposeNotAllowed(Forbidden):
    code = "purpose_not_allowed"
    title = "This purpose is not allowed for the caller's role"


class NotFound(VaultServiceError):
    status = 404
    code = "not_found"
    title = "No such resource"


class Conflict(VaultServiceError):
    status = 409
    code = "conflict"
    title = "The request conflicts with the current state"


class IdempotencyKeyReused(VaultServiceError):
    status = 422
    code = "idempotency_key_reused"
    title = "This Idempotency-Key was already used with a different request"


class PreconditionFailed(VaultServiceError):
    status = 412
    code = "precondition_failed"
    title = "The record changed since it was read; fetch it again"


class PreconditionRequired(VaultServiceError):
    status = 428
    code = "precondition_required"
    title = "If-Match is required to update a record"


class PayloadTooLarge(VaultServiceError):
    status = 413
    code = "payload_too_large"
    title = "The request body is too large"


class KmsUnavailable(VaultServiceError):
    """Vault/OpenBao could not be reached or refused: fail closed, never plaintext."""

    status = 503
    code = "kms_unavailable"
    title = "The key service is unavailable; try again later"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": "5"})


class DatabaseUnavailable(VaultServiceError):
    """PostgreSQL refused the connection, dropped it or is shutting down: fail closed
    with a code that says so, rather than a bare internal error."""

    status = 503
    code = "database_unavailable"
    title = "The database is unavailable; try again later"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": "5"})


# What a database restart raises in a request (found by tests/stack/test_faults.py,
# which saw them answer 500 internal_error): lost or refused connections, and the
# server's own shutdown and start-up refusals.
DATABASE_GONE: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,  # includes ConnectionDoesNotExistError
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    ConnectionError,  # refused or reset sockets
)


class DecryptionFailed(VaultServiceError):
    """A ciphertext did not authenticate: tampered, moved to another record or field, or
    wrapped under another key. Never returns partial or guessed data."""

    status = 500
    code = "decryption_failed"
    title = "A stored value failed its integrity check"


class RecordIntegrityFailed(DecryptionFailed):
    """Every field opened, but the record as a whole is not what the service wrote: an
    older ciphertext swapped in, a clear field edited, another referent or structure
    written by someone holding the database. Nothing of it is served."""

    code = "record_integrity"
    title = "The record failed its integrity check"


class AuditUnavailable(VaultServiceError):
    status = 503
    code = "audit_unavailable"
    title = "The access log could not record this access; nothing was returned"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": "5"})
