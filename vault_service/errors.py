"""One error base with stable codes; mapped once to RFC 9457 problem details in app.py.

An error's message is for operators and must never carry a personal value, a token,
a key or SQL text: the public `detail` is a fixed sentence per class unless a caller
passes a safe one explicitly.
"""

from __future__ import annotations

import re
from typing import ClassVar, Final

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
    """A body error built from the field path and a stable reason, never from the text."""
    if not isinstance(exc, msgspec.ValidationError):  # malformed JSON (its parent class)
        return InvalidBody("the body is not a JSON object of the expected shape")
    reason, path = validation_reason(exc)
    return InvalidBody(f"{BODY_REASONS[reason]} (at {path})")


def validation_reason(exc: msgspec.ValidationError) -> tuple[str, str]:
    """A key of `BODY_REASONS` and a JSON path (`$.a.b[0]`) for a validation error.

    msgspec's messages quote offending values (`Invalid enum value "DUP'ONT ..."`, in
    single or double quotes as the value needs) and name unknown fields, which are
    client input too: no part of a message is kept. It is only matched against
    msgspec's templates to pick a reason; the path is kept only if it is made of
    field names and list indexes."""
    message, _, where = str(exc).partition(" - at `")
    path = where[:-1] if where.endswith("`") else "$"
    if not _SAFE_PATH.fullmatch(path):
        path = "$"  # never happens with the schema's Structs; refuse to guess
    for template, name in _TEMPLATES:
        matched = template.match(message)
        if matched:
            if name == "required" and _SAFE_NAME.fullmatch(matched.group(1)):
                # A required property's name comes from the schema, not the client.
                path = f"{path}.{matched.group(1)}"
            return name, path
    return "invalid_value", path


# The reasons a body is refused: stable sentences, the key is what tests switch on.
BODY_REASONS: Final = {
    "required": "a required property is missing",
    "unknown_property": "the body contains a property the schema does not define",
    "not_allowed": "the value is not one of the allowed values",
    "pattern": "the value does not match the expected pattern",
    "length": "the value is too short or too long",
    "range": "the value is out of range",
    "type": "the value has the wrong type",
    "format": "the value is not in the expected format",
    "invalid_value": "the value is invalid",
}
# msgspec's message templates (its _core.c), most specific first.
_TEMPLATES: Final = (
    (re.compile(r"Object missing required field `([^`]*)`"), "required"),
    (re.compile(r"Object contains unknown field"), "unknown_property"),
    (re.compile(r"Invalid enum value"), "not_allowed"),
    (re.compile(r"Expected `[a-z]+` matching regex"), "pattern"),
    (re.compile(r"Expected `[a-z]+` of (?:length|at (?:least|most))"), "length"),
    (re.compile(r"Expected `[a-z]+` (?:>=|<=|>|<|that is a multiple)"), "range"),
    (re.compile(r"(?:Integer|Number) value out of range"), "range"),
    (re.compile(r"Expected `[a-z |]+`, got `[a-z]+`"), "type"),
    (re.compile(r"Invalid (?:RFC3339|ISO8601|UUID|base64|decimal)"), "format"),
)
_SAFE_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
# Struct fields by name, list items by index; msgspec writes a dict key as `[...]`.
_SAFE_PATH: Final = re.compile(r"\$(?:\.[a-z][a-z0-9_]{0,63}|\[\d{1,9}\]|\[\.\.\.\])*")


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


class StatsUnprotectable(VaultServiceError):
    """A statistics table that cannot be published with its margins without letting
    a suppressed count be recomputed: nothing is returned (vault_service/stats/)."""

    status = 422
    code = "stats_unprotectable"
    title = "This table cannot be published without revealing a small cell"

    def __init__(self) -> None:
        super().__init__("group by fewer dimensions or ask for a longer period")


class StatsNotSealed(VaultServiceError):
    """A closed year whose tables are not computed: the rebuild has not run since it
    closed, or it held no record (vault_service/stats/)."""

    status = 409
    code = "stats_not_sealed"
    title = "This year's statistics are not computed yet"

    def __init__(self) -> None:
        super().__init__("the tables of a year are computed at the first rebuild after it closes")


class AuditUnavailable(VaultServiceError):
    status = 503
    code = "audit_unavailable"
    title = "The access log could not record this access; nothing was returned"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": "5"})
