"""Typed settings, read once from the environment; missing secrets fail at start-up.

One group per owner (the database, Vault, tokens, budgets, rules, ...), each a nested
struct; every variable keeps its flat `VAULT_SERVICE_*` name, so nothing a deployment
sets changed with the grouping.

There is no default for anything that is a secret or an address of a dependency:
a service that starts with a made-up signing key or a guessed database is worse
than one that refuses to start.
"""

from __future__ import annotations

import ipaddress
import os
import zoneinfo
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Final, TypeVar
from urllib.parse import parse_qsl, urlsplit

import msgspec

from vault_service.errors import BODY_REASONS, ConfigurationError, validation_reason
from vault_service.settings.console import ConsoleSignIn, parse_console_signin
from vault_service.settings.hours import parse_working_hours
from vault_service.settings.issuers import IssuerConfig, parse_issuers

PREFIX = "VAULT_SERVICE_"

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Budget = Annotated[int, msgspec.Meta(ge=0, le=10_000_000)]
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def _database_tls_or_local(dsn: str) -> bool:
    """A unix socket or loopback, or TLS that checks the server's name and CA."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return False
    query = dict(parse_qsl(parts.query))
    host = query.get("host") or parts.hostname or ""
    if host.startswith("/") or host in _LOOPBACK:
        return True
    return query.get("sslmode") == "verify-full"


def _tls_or_loopback(url: str) -> bool:
    """https anywhere, plain http only to a loopback host (parsed: not a prefix test,
    which `http://localhost.evil.example` would pass)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.scheme == "https" and parts.hostname:
        return True
    return parts.scheme == "http" and parts.hostname in _LOOPBACK


def _named(prefix: str) -> Callable[[str], str]:
    """A group's fields keep the flat `VAULT_SERVICE_*` names a deployment sets."""
    return lambda name: prefix + name


class _Group(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One owner's settings: a nested struct whose fields are named, in the environment,
    exactly as before the grouping (`VAULT_SERVICE_` + the field's encoded name)."""


class DatabaseSettings(_Group, frozen=True, rename=_named("db_")):
    """The service's own PostgreSQL login (vault_service_app) and its pool."""

    url: str = msgspec.field(name="database_url")
    pool_min: PositiveInt = 2
    pool_max: PositiveInt = 10
    statement_timeout_ms: PositiveInt = 5000


class VaultSettings(_Group, frozen=True, rename=_named("vault_")):
    """The service's own Vault identity (policy vault-service): a token, or an AppRole."""

    addr: str
    token: str | None = None
    role_id: str | None = None
    secret_id_file: str | None = None
    cacert: str | None = None
    transit_mount: str = "transit"
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=30)] = 5.0
    retries: Annotated[int, msgspec.Meta(ge=0, le=5)] = 2


class TokenSettings(_Group, frozen=True):
    """Our own tokens (auth/tokens.py) and the external providers trusted (auth/oidc.py)."""

    issuer: str = msgspec.field(name="jwt_issuer")
    audience: str = msgspec.field(name="jwt_audience")
    # Our own tokens live minutes; the cap is enforced on issue and on verify.
    max_lifetime_seconds: Annotated[int, msgspec.Meta(ge=60, le=3600)] = msgspec.field(
        default=3600, name="jwt_max_lifetime_seconds"
    )
    leeway_seconds: Annotated[int, msgspec.Meta(ge=0, le=60)] = msgspec.field(
        default=30, name="jwt_leeway_seconds"
    )
    cache_size: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = msgspec.field(
        default=10_000, name="token_cache_size"
    )
    # External identity providers (JSON list, see vault_service/settings/issuers.py).
    oidc_issuers: tuple[IssuerConfig, ...] = ()


class AccountSettings(_Group, frozen=True):
    """The account gate (auth/accounts.py) and the restricted period of new accounts."""

    cache_seconds: Annotated[float, msgspec.Meta(ge=0, le=10)] = msgspec.field(
        default=2.0, name="account_cache_seconds"
    )
    new_account_restriction_hours: Annotated[float, msgspec.Meta(ge=0, le=720)] = 24.0

    @property
    def restriction_seconds(self) -> float:
        return self.new_account_restriction_hours * 3600


class ServerSettings(_Group, frozen=True):
    """The HTTP server: where it listens, what it trusts of its proxies and browsers."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    cors_origins: tuple[str, ...] = ()
    # Proxies (addresses or networks) whose X-Forwarded-For is believed: the client
    # fingerprint in the access log then uses the address they saw, not their own.
    trusted_proxies: tuple[str, ...] = ()
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=4 * 1024 * 1024)] = 256 * 1024
    log_level: str = "INFO"


class KeySettings(_Group, frozen=True, rename=_named("branch_key_")):
    """The key hierarchy's cache of branch keys (crypto/keys.py)."""

    # Bounded: revoking the service's Vault access must bite within minutes.
    ttl_seconds: Annotated[float, msgspec.Meta(gt=0, le=900)] = 300.0
    max_uses: Annotated[int, msgspec.Meta(ge=1)] = 1_000_000


class RecordSettings(_Group, frozen=True):
    """Case records: page caps, custody (break-the-glass, transfers), honeytokens."""

    search_page_max: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20
    caseload_page_max: Annotated[int, msgspec.Meta(ge=1, le=200)] = 50
    break_glass_minutes: Annotated[int, msgspec.Meta(ge=1, le=240)] = 30
    break_glass_daily_limit: Annotated[int, msgspec.Meta(ge=0, le=100)] = 5
    # Days a cross-structure transfer request waits for the receiving structure's
    # acceptance; past them it can only be asked again.
    transfer_acceptance_days: Annotated[int, msgspec.Meta(ge=1, le=90)] = 14
    # How often each process reloads the honeytokens' tags (records/honeytokens.py): a
    # canary planted since is not recognised before.
    honeytoken_reload_seconds: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 30.0


class LogSettings(_Group, frozen=True):
    """The access log (audit/): checkpoints, witnesses, integration, anonymous refusals."""

    # The checkpoint origin line (C2SP tlog-checkpoint) and cadence.
    origin: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9.-]{1,100}/[a-z0-9./-]{1,100}$")] = (
        msgspec.field(default="vault-service.example/access-log", name="audit_origin")
    )
    checkpoint_interval_seconds: Annotated[float, msgspec.Meta(ge=0.5, le=300)] = 5.0
    # Witnesses cosigning each checkpoint (audit/witness.py, C2SP tlog-witness): a
    # comma-separated list of `URL|verifier key`, the URL the witness's submission
    # prefix (https, or http to a loopback host), the key as `vault-service witness
    # keygen` prints it.
    witnesses: tuple[str, ...] = msgspec.field(default=(), name="audit_witnesses")
    # Which process integrates the access log into its Merkle tree (one leader among
    # those that may): every replica by default; false on replicas that leave it to a
    # dedicated `vault-service audit integrate`.
    integrator: bool = msgspec.field(default=True, name="audit_integrator")
    # Refusals of requests with no verified actor (access/anonymous.py): counted per
    # client, action and code, one entry per key and window, at most this many keys.
    anonymous_refusal_window_seconds: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 60.0
    anonymous_refusal_keys_max: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 50


class BudgetSettings(_Group, frozen=True):
    """Record budgets (access/budgets.py): distinct records per fixed UTC window.

    Records are full views (encrypted fields returned); summaries are masked views
    (caseload, search, a supervisor's view). A counsellor with 150 youth reading them
    all twice a day counts 150 a day (re-reading a counted record is free). Halved
    while an account is restricted. 0 refuses every such read for the role."""

    budget_counsellor_hour: Budget = 200
    budget_counsellor_day: Budget = 600
    budget_supervisor_hour: Budget = 100
    budget_supervisor_day: Budget = 300
    budget_auditor_hour: Budget = 0
    budget_auditor_day: Budget = 0
    budget_analyst_hour: Budget = 0
    budget_analyst_day: Budget = 0
    summary_budget_counsellor_hour: Budget = 2000
    summary_budget_supervisor_hour: Budget = 5000
    summary_budget_auditor_hour: Budget = 0
    summary_budget_analyst_hour: Budget = 0
    # Every account of one structure together (many usurped accounts reading at once).
    budget_structure_hour: Budget = 3000
    # Stricter: records read under break-the-glass, and NIR lookups (each one counts).
    budget_break_glass_day: Budget = 10
    budget_nir_hour: Budget = 20
    budget_nir_day: Budget = 60
    # Distinct records one supervisor may transfer or assign in an hour.
    budget_transfer_hour: Budget = 20
    # Statistics queries (GET /v1/stats) per analyst and hour: each query counts,
    # whatever it returns.
    budget_stats_hour: Budget = 60
    # Access-volume queries (GET /v1/audit/volume) per auditor and hour: each one groups
    # up to 93 days of the access log, so each counts, whatever it returns.
    budget_volume_hour: Budget = 60
    # Budget refusals (429) of one account in an hour after which the service suspends
    # it by itself (access/defence.py); the first refusal of an hour raises an alert.
    suspend_after_refusals_hour: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 10

    def record_hour(self, role: str) -> int:
        return int(getattr(self, f"budget_{role}_hour"))

    def record_day(self, role: str) -> int:
        return int(getattr(self, f"budget_{role}_day"))

    def summary_hour(self, role: str) -> int:
        return int(getattr(self, f"summary_budget_{role}_hour"))


class RuleSettings(_Group, frozen=True):
    """Anomaly rules (alerts/rules.py): how often the leader evaluates them, and their
    thresholds; working hours for the off-hours rule."""

    anomaly_interval_seconds: Annotated[float, msgspec.Meta(ge=0.2, le=300)] = 30.0
    anomaly_not_found_5min: Annotated[int, msgspec.Meta(ge=1)] = 20
    anomaly_new_account_records_hour: Annotated[int, msgspec.Meta(ge=1)] = 50
    # Reads outside working hours: the schedule (vault_service/settings/hours.py) in
    # the structure's time zone, or this one when the structure has none.
    working_hours: str = "mon-fri 07:00-20:00"
    working_time_zone: str = "Europe/Paris"
    anomaly_off_hours_records_hour: Annotated[int, msgspec.Meta(ge=1)] = 20
    # An account (a structure) reading this many times its own mean over the active
    # hours of the last 14 days, and at least the minimum, once it has that many
    # hours of history.
    anomaly_baseline_factor: Annotated[float, msgspec.Meta(ge=1.0, le=1000)] = 5.0
    anomaly_baseline_min_records: Annotated[int, msgspec.Meta(ge=1)] = 30
    anomaly_structure_baseline_min_records: Annotated[int, msgspec.Meta(ge=1)] = 300
    anomaly_baseline_min_hours: Annotated[int, msgspec.Meta(ge=1, le=336)] = 10
    # One admin requesting or approving this many account creations, reactivations and
    # role changes in an hour; this many records given to one account in an hour
    # (referent changes, temporary assignments, pending transfers to it).
    anomaly_account_changes_hour: Annotated[int, msgspec.Meta(ge=1)] = 5
    anomaly_custody_to_account_hour: Annotated[int, msgspec.Meta(ge=1)] = 10


class WebhookSettings(_Group, frozen=True, rename=_named("alert_webhook_")):
    """Alerts POSTed there (Standard Webhooks signatures) when set, with the secret
    (`whsec_...`) read from a file: https, or http to a loopback host only."""

    url: str | None = None
    secret_file: str | None = None


class RetentionSettings(_Group, frozen=True, rename=_named("retention_")):
    """Record retention (the i-Milo decree): a record is readable until the youth's
    birthday of this age, or the end of the programme running then when that is
    later; `retention run` then anonymises it (the record key and every ciphertext
    destroyed, the `internal` codes kept) and purges those codes this many days on."""

    age_years: Annotated[int, msgspec.Meta(ge=16, le=30)] = 26
    programme_end: bool = True
    purge_after_days: Annotated[int, msgspec.Meta(ge=0, le=36_500)] = 1826
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500


class RotationSettings(_Group, frozen=True, rename=_named("rotation_")):
    """Key rotation policy (`vault-service keys status`): a key whose latest version is
    older than this many days is due for rotation; 0 means never by age. The
    blind-index roots rotate only as a planned re-indexing, so not by age."""

    kek_days: Annotated[int, msgspec.Meta(ge=0, le=3650)] = 365
    branch_days: Annotated[int, msgspec.Meta(ge=0, le=3650)] = 365
    token_key_days: Annotated[int, msgspec.Meta(ge=0, le=3650)] = 90
    checkpoint_key_days: Annotated[int, msgspec.Meta(ge=0, le=3650)] = 365
    index_key_days: Annotated[int, msgspec.Meta(ge=0, le=3650)] = 0
    # Rows rewrapped per transaction by `keys rotate`: each batch holds its row locks
    # for one Vault round trip, and is one access-log entry.
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    # `keys rotate records` re-seals at most this many records a second (0: no limit),
    # so that the service keeps serving reads meanwhile (bench/keys.py measures both).
    records_per_second: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 2500


class StatsSettings(_Group, frozen=True, rename=_named("stats_")):
    """The BI lane (vault_service/stats/): cells counting fewer than `k` youth are
    suppressed, with complements; how often a rebuild looks for a closed year to seal
    (seconds, 0: only by `vault-service stats refresh`); records decrypted per batch;
    days after a year closes before it is sealed (late data entry of December counts:
    a sealed year never changes)."""

    k: Annotated[int, msgspec.Meta(ge=10, le=1000)] = 10
    refresh_seconds: Annotated[float, msgspec.Meta(ge=0, le=604_800)] = 3600.0
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1000
    seal_after_days: Annotated[int, msgspec.Meta(ge=0, le=366)] = 31
    # Seconds the joint check of a year's tables may take before every table with a
    # suppressed cell is refused instead (vault_service/stats/joint.py).
    audit_seconds: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 1800.0


class ImportSettings(_Group, frozen=True, rename=_named("import_")):
    """`vault-service import`."""

    # Records per batch (one transaction, one access-log entry naming every record it
    # created; the entry schema caps record_ids at 10,000).
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1000
    # Processes that check and seal an import's lines (1: the importing process itself);
    # each has the service's configuration and its own Vault and database sessions.
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    # Records sealed a second at most by an import (0: no limit): an import while the
    # service serves shares the machine with it (bench/imports.py measures both).
    records_per_second: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0


class ConsoleSettings(_Group, frozen=True):
    """The auditor console."""

    # Its sign-in with one of the OIDC providers (JSON object, see
    # vault_service/settings/console.py); none: auditors paste a token.
    oidc: ConsoleSignIn | None = msgspec.field(default=None, name="console_oidc")


# Values that are not one string: comma-separated lists, and JSON documents.
_LISTS: Final = frozenset({"cors_origins", "trusted_proxies", "audit_witnesses"})
_PARSERS: Final[Mapping[str, Callable[[str], object]]] = {
    "oidc_issuers": parse_issuers,
    "console_oidc": parse_console_signin,
}


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The service's settings, one group per owner, read once by `from_env`."""

    database: DatabaseSettings
    vault: VaultSettings
    tokens: TokenSettings
    accounts: AccountSettings = msgspec.field(default_factory=AccountSettings)
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    keys: KeySettings = msgspec.field(default_factory=KeySettings)
    records: RecordSettings = msgspec.field(default_factory=RecordSettings)
    log: LogSettings = msgspec.field(default_factory=LogSettings)
    budgets: BudgetSettings = msgspec.field(default_factory=BudgetSettings)
    rules: RuleSettings = msgspec.field(default_factory=RuleSettings)
    webhook: WebhookSettings = msgspec.field(default_factory=WebhookSettings)
    retention: RetentionSettings = msgspec.field(default_factory=RetentionSettings)
    rotation: RotationSettings = msgspec.field(default_factory=RotationSettings)
    stats: StatsSettings = msgspec.field(default_factory=StatsSettings)
    imports: ImportSettings = msgspec.field(default_factory=ImportSettings)
    console: ConsoleSettings = msgspec.field(default_factory=ConsoleSettings)

    def __post_init__(self) -> None:
        vault, tokens, server = self.vault, self.tokens, self.server
        if not vault.token and not (vault.role_id and vault.secret_id_file):
            raise ConfigurationError(
                "Vault authentication missing: set VAULT_SERVICE_VAULT_TOKEN or "
                "VAULT_SERVICE_VAULT_ROLE_ID and VAULT_SERVICE_VAULT_SECRET_ID_FILE"
            )
        if vault.secret_id_file and not Path(vault.secret_id_file).is_file():
            raise ConfigurationError("VAULT_SERVICE_VAULT_SECRET_ID_FILE does not name a file")
        if vault.cacert and not Path(vault.cacert).is_file():
            raise ConfigurationError("VAULT_SERVICE_VAULT_CACERT does not name a file")
        if not _database_tls_or_local(self.database.url):
            raise ConfigurationError(
                "VAULT_SERVICE_DATABASE_URL must use sslmode=verify-full outside loopback"
            )
        if not _tls_or_loopback(vault.addr):
            # Plain HTTP only on loopback (the dev server); anything else must be TLS.
            raise ConfigurationError("VAULT_SERVICE_VAULT_ADDR must be https outside loopback")
        if any(i.issuer == tokens.issuer for i in tokens.oidc_issuers):
            raise ConfigurationError(
                "an external OIDC issuer may not reuse VAULT_SERVICE_JWT_ISSUER"
            )
        if self.database.pool_min > self.database.pool_max:
            raise ConfigurationError("db_pool_min is larger than db_pool_max")
        webhook = self.webhook
        if (webhook.url is None) != (webhook.secret_file is None):
            raise ConfigurationError("the alert webhook needs both its URL and its secret file")
        if webhook.url is not None and not _tls_or_loopback(webhook.url):
            raise ConfigurationError("VAULT_SERVICE_ALERT_WEBHOOK_URL must be https")
        try:
            parse_working_hours(self.rules.working_hours)
            zoneinfo.ZoneInfo(self.rules.working_time_zone)
        except (ValueError, zoneinfo.ZoneInfoNotFoundError) as exc:
            raise ConfigurationError(
                f"VAULT_SERVICE_WORKING_HOURS or _WORKING_TIME_ZONE: {exc}"
            ) from None
        for proxy in server.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ConfigurationError("VAULT_SERVICE_TRUSTED_PROXIES: not an address") from None
        for witness in self.log.witnesses:
            url, _, vkey = witness.partition("|")
            if not vkey or not _tls_or_loopback(url):
                raise ConfigurationError(
                    "VAULT_SERVICE_AUDIT_WITNESSES: each is https-URL|verifier-key"
                )
        for origin in server.cors_origins:
            if origin == "*" or not _tls_or_loopback(origin):
                raise ConfigurationError("CORS origins must be explicit https origins")
        if self.console.oidc is not None:
            self._check_console_oidc(self.console.oidc)

    def _check_console_oidc(self, signin: ConsoleSignIn) -> None:
        # The page's ID token must be one the service accepts: a configured issuer,
        # whose audience is the console's client (an ID token's `aud`).
        issuer = next((i for i in self.tokens.oidc_issuers if i.issuer == signin.issuer), None)
        if issuer is None or issuer.audience != signin.client_id:
            raise ConfigurationError(
                "VAULT_SERVICE_CONSOLE_OIDC: its issuer must be in VAULT_SERVICE_OIDC_ISSUERS "
                "with the console's client id as audience"
            )
        for url in (signin.authorization_endpoint, signin.token_endpoint):
            parts = urlsplit(url)
            if not _tls_or_loopback(url) or parts.username or parts.password or parts.fragment:
                raise ConfigurationError(
                    "VAULT_SERVICE_CONSOLE_OIDC: endpoints must be https (http only to loopback)"
                )

    @classmethod
    def env_names(cls) -> dict[str, tuple[str, str]]:
        """Every variable the service reads: `VAULT_SERVICE_X` -> (group, encoded name)."""
        names: dict[str, tuple[str, str]] = {}
        for group in msgspec.structs.fields(cls):
            assert isinstance(group.type, type)
            for field in msgspec.structs.fields(group.type):
                names[PREFIX + field.encode_name.upper()] = (group.name, field.encode_name)
        return names

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        raw: dict[str, dict[str, object]] = {f.name: {} for f in msgspec.structs.fields(cls)}
        for variable, (group, name) in cls.env_names().items():
            value = env.get(variable)
            if value is None or value == "":
                continue
            if name in _LISTS:
                raw[group][name] = [v.strip() for v in value.split(",") if v.strip()]
            elif name in _PARSERS:
                raw[group][name] = _PARSERS[name](value)
            else:
                raw[group][name] = value
        try:
            # strict=False lets msgspec parse "8000" into an int, "2.5" into a float.
            return msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            # The setting's name and a stable reason: msgspec's own text can quote the
            # value, and a value here can be a DSN with its password or a token.
            reason, path = validation_reason(exc)
            parts = path.removeprefix("$.").split(".")
            where = (
                PREFIX + parts[1].split("[")[0].upper()
                if path.startswith("$.") and len(parts) > 1
                else "the settings"
            )
            raise ConfigurationError(f"invalid settings: {where}: {BODY_REASONS[reason]}") from None


_G = TypeVar("_G", bound=msgspec.Struct)


def _read_group(cls: type[_G], environ: Mapping[str, str] | None, prefix: str) -> _G:
    env = os.environ if environ is None else environ
    raw = {
        f.encode_name: env[prefix + f.encode_name.upper()]
        for f in msgspec.structs.fields(cls)
        if env.get(prefix + f.encode_name.upper())
    }
    try:
        return msgspec.convert(raw, cls, strict=False)
    except msgspec.ValidationError as exc:
        reason, path = validation_reason(exc)
        name = prefix + path.removeprefix("$.").split(".")[0].upper()
        raise ConfigurationError(f"invalid settings: {name}: {BODY_REASONS[reason]}") from None


class Logins(_Group, frozen=True):
    """The database logins of the people and jobs that are not the service, each
    belonging to one owner and none of them the service's own: an admin's own login
    (accounts, records, keys, imports, honeytokens, retention: the database takes the
    actor from it), the owner role (migrations, the first two admins), the retention
    role (pruning access-log bodies). Read by the CLI command that needs one."""

    admin: str | None = msgspec.field(default=None, name="admin_database_url")
    owner: str | None = msgspec.field(default=None, name="migrations_database_url")
    retention: str | None = msgspec.field(default=None, name="retention_database_url")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Logins:
        return _read_group(cls, environ, PREFIX)


class OperatorVault(_Group, frozen=True):
    """An operator's or key admin's own Vault session (`vault-setup`, the Vault steps of
    `keys rotate`), from Vault's standard variables: never the service's identity."""

    addr: str | None = msgspec.field(default=None, name="vault_addr")
    token: str | None = msgspec.field(default=None, name="vault_token")
    cacert: str | None = msgspec.field(default=None, name="vault_cacert")
    # The mount `vault-setup` creates the keys in: the service's own setting.
    transit_mount: str = msgspec.field(default="transit", name="vault_service_vault_transit_mount")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorVault:
        return _read_group(cls, environ, "")


def log_level(environ: Mapping[str, str] | None = None) -> str:
    """`VAULT_SERVICE_LOG_LEVEL`, for the CLI's own lines before any settings are read
    (a command like `audit verify` reads no other setting)."""
    env = os.environ if environ is None else environ
    return env.get(PREFIX + "LOG_LEVEL") or ServerSettings().log_level
