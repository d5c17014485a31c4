"""Settings fail fast; the record schema is the one source of the encryption plan."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from vault_service.errors import ConfigurationError
from vault_service.records import schema as record_schema
from vault_service.settings import Settings

BASE = {
    "VAULT_SERVICE_DATABASE_URL": "postgresql://app@db/vault_service?sslmode=verify-full",
    "VAULT_SERVICE_VAULT_ADDR": "https://vault.internal:8200",
    "VAULT_SERVICE_VAULT_TOKEN": "s.token",
    "VAULT_SERVICE_JWT_ISSUER": "https://vault-service.example",
    "VAULT_SERVICE_JWT_AUDIENCE": "vault-service",
}
ROOT = Path(__file__).resolve().parents[2]


def test_settings_load() -> None:
    s = Settings.from_env(
        {**BASE, "VAULT_SERVICE_CORS_ORIGINS": "https://a.example, https://b.example"}
    )
    assert s.server.cors_origins == ("https://a.example", "https://b.example")
    assert s.tokens.max_lifetime_seconds <= 3600


@pytest.mark.parametrize(
    "missing",
    [
        "VAULT_SERVICE_DATABASE_URL",
        "VAULT_SERVICE_VAULT_ADDR",
        "VAULT_SERVICE_VAULT_TOKEN",
        "VAULT_SERVICE_JWT_ISSUER",
        "VAULT_SERVICE_JWT_AUDIENCE",
    ],
)
def test_settings_refuse_to_start_without_secrets_or_urls(missing: str) -> None:
    env = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(ConfigurationError):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("VAULT_SERVICE_VAULT_ADDR", "http://vault.internal:8200"),  # plain HTTP off loopback
        ("VAULT_SERVICE_VAULT_ADDR", "http://localhost.evil.example:8200"),
        ("VAULT_SERVICE_CORS_ORIGINS", "http://127.0.0.1.evil.example"),
        ("VAULT_SERVICE_DATABASE_URL", "postgresql://app@db/vault_service"),  # no TLS
        ("VAULT_SERVICE_DATABASE_URL", "postgresql://app@db/vault_service?sslmode=require"),
        ("VAULT_SERVICE_BRANCH_KEY_TTL_SECONDS", "86400"),
        ("VAULT_SERVICE_CORS_ORIGINS", "*"),
        ("VAULT_SERVICE_JWT_MAX_LIFETIME_SECONDS", "7200"),
        ("VAULT_SERVICE_PORT", "not-a-port"),
        ("VAULT_SERVICE_VAULT_CACERT", "/nonexistent/ca.pem"),
        ("VAULT_SERVICE_WORKING_HOURS", "fri-mon 07:00-20:00"),
        ("VAULT_SERVICE_WORKING_HOURS", "mon-fri 20:00-07:00"),
        ("VAULT_SERVICE_WORKING_HOURS", "lun-ven 07:00-20:00"),
        ("VAULT_SERVICE_WORKING_HOURS", "mon-fri 07:00-24:30"),
        ("VAULT_SERVICE_WORKING_TIME_ZONE", "Europe/Atlantis"),
        ("VAULT_SERVICE_WORKING_TIME_ZONE", "../../etc/passwd"),
        ("VAULT_SERVICE_ANONYMOUS_REFUSAL_KEYS_MAX", "0"),
    ],
)
def test_settings_refuse_unsafe_values(key: str, value: str) -> None:
    with pytest.raises(ConfigurationError):
        Settings.from_env({**BASE, key: value})


def test_packaged_schema_is_the_repository_schema() -> None:
    assert (
        record_schema.SCHEMA_PATH.read_bytes()
        == (ROOT / "schemas" / "case_record.schema.json").read_bytes()
    )


def test_encryption_plan_comes_from_the_schema() -> None:
    raw = json.loads((ROOT / "schemas" / "case_record.schema.json").read_text())
    plan = record_schema.load()
    expected = {n for n, p in raw["properties"].items() if p["x-encrypted"]}
    assert set(plan.encrypted) == expected
    assert {f.name for f in plan.fields.values() if not f.encrypted} == {
        "programme_kind",
        "pathway_status",
    }
    indexes = {f.index.name: f.index for f in plan.indexed if f.index}
    assert indexes["nir"].restricted and indexes["nir"].national
    assert indexes["ft_id"].national and not indexes["ft_id"].restricted
    assert not indexes["birth_name"].national


def test_generated_types_validate_like_the_schema() -> None:
    plan = record_schema.load()
    full = (ROOT / "tests" / "fixtures" / "full_record.json").read_bytes()
    value = msgspec.json.decode(full, type=plan.create_type)
    assert msgspec.json.decode(msgspec.json.encode(value)) == json.loads(full)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(
            b'{"birth_name":"A","first_names":["B"],"birth_date":"2004-01-01","sex":"F","unknown":1}',
            type=plan.create_type,
        )
    with pytest.raises(msgspec.ValidationError):  # `$` must not accept a trailing newline
        msgspec.json.decode(b'{"ft_id":"1234567A\\n"}', type=plan.patch_type)
    assert msgspec.json.decode(b'{"email":null}', type=plan.patch_type).email is None
    with pytest.raises(msgspec.ValidationError):  # required properties cannot be removed
        msgspec.json.decode(b'{"birth_name":null}', type=plan.patch_type)


@pytest.mark.parametrize(
    "mutation",
    [
        lambda s: s["properties"]["email"].update({"x-encrypted": False}),
        lambda s: s["properties"]["email"].update({"x-mask": "clear"}),
        lambda s: s["properties"]["email"].pop("x-sensitivity"),
        lambda s: s["properties"]["email"].pop("maxLength"),
        lambda s: s["properties"]["email"].update({"oneOf": []}),
        lambda s: s.update({"additionalProperties": True}),
    ],
)
def test_schema_slips_refuse_to_load(mutation) -> None:  # type: ignore[no-untyped-def]
    raw = json.loads((ROOT / "schemas" / "case_record.schema.json").read_text())
    mutation(raw)
    with pytest.raises(ConfigurationError):
        record_schema.build(raw)


def test_working_hours_are_read_as_written() -> None:
    from vault_service.settings.hours import parse_working_hours

    week = parse_working_hours("mon-fri 07:00-20:00")
    assert (week.days, week.start, week.end) == ((1, 2, 3, 4, 5), "07:00", "20:00")
    odd = parse_working_hours(" Mon-Wed,sat 08:30-24:00 ")
    assert (odd.days, odd.start, odd.end) == ((1, 2, 3, 6), "08:30", "24:00")


_ISSUER = {
    "issuer": "https://sso.example-ml.fr/realms/ml",
    "audience": "console-client",
    "jwks_uri": "https://sso.example-ml.fr/realms/ml/keys",
    "algorithms": ["RS256"],
}
_CONSOLE = {
    "issuer": "https://sso.example-ml.fr/realms/ml",
    "client_id": "console-client",
    "authorization_endpoint": "https://sso.example-ml.fr/realms/ml/auth",
    "token_endpoint": "https://sso.example-ml.fr/realms/ml/token",
    "scope": "openid mfa",
}


def test_console_sign_in_loads_and_names_its_origin() -> None:
    settings = Settings.from_env(
        {
            **BASE,
            "VAULT_SERVICE_OIDC_ISSUERS": json.dumps([_ISSUER]),
            "VAULT_SERVICE_CONSOLE_OIDC": json.dumps(_CONSOLE),
        }
    )
    assert settings.console.oidc is not None
    assert settings.console.oidc.connect_origin == "https://sso.example-ml.fr"
    assert Settings.from_env(BASE).console.oidc is None


@pytest.mark.parametrize(
    "change",
    [
        {"issuer": "https://other.example/realms/ml"},  # not a configured issuer
        {"client_id": "another-client"},  # not that issuer's audience
        {"token_endpoint": "http://sso.example-ml.fr/token"},  # plain HTTP off loopback
        {"authorization_endpoint": "https://user:pw@sso.example-ml.fr/auth"},
        {"authorization_endpoint": "https://sso.example-ml.fr/auth#x"},
        {"scope": "profile"},  # not an OpenID request
        {"scope": "openid <script>"},
        {"client_id": "a b"},
        {"extra": "member"},
    ],
)
def test_console_sign_in_refuses_what_would_not_work_or_leak(change: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        Settings.from_env(
            {
                **BASE,
                "VAULT_SERVICE_OIDC_ISSUERS": json.dumps([_ISSUER]),
                "VAULT_SERVICE_CONSOLE_OIDC": json.dumps({**_CONSOLE, **change}),
            }
        )
