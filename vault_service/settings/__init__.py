"""Typed settings, read once from the environment; missing secrets fail at start-up.

There is no default for anything that is a secret or an address of a dependency:
a service that starts with a made-up signing key or a guessed database is worse
than one that refuses to start.
"""

from __future__ import annotations

import ipaddress
import os
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated
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


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    database_url: str
    vault_addr: str
    vault_token: str | None = None
    vault_role_id: str | None = None
    vault_secret_id_file: str | None = None
    vault_cacert: str | None = None
    vault_transit_mount: str = "transit"
    vault_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=30)] = 5.0
    vault_retries: Annotated[int, msgspec.Meta(ge=0, le=5)] = 2
    jwt_issuer: str
    jwt_audience: str
    # Our own tokens live minutes; the cap is enforced on issue and on verify.
    jwt_max_lifetime_seconds: Annotated[int, msgspec.Meta(ge=60, le=3600)] = 3600
    jwt_leeway_seconds: Annotated[int, msgspec.Meta(ge=0, le=60)] = 30
    token_cache_size: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 10_000
    account_cache_seconds: Annotated[float, msgspec.Meta(ge=0, le=10)] = 2.0
    cors_origins: tuple[str, ...] = ()
    # Proxies (addresses or networks) whose X-Forwarded-For is believed: the client
    # fingerprint in the access log then uses the address they saw, not their own.
    trusted_proxies: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000
    workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    db_pool_min: PositiveInt = 2
    db_pool_max: PositiveInt = 10
    db_statement_timeout_ms: PositiveInt = 5000
    # Bounded: revoking the service's Vault access must bite within minutes.
    branch_key_ttl_seconds: Annotated[float, msgspec.Meta(gt=0, le=900)] = 300.0
    branch_key_max_uses: Annotated[int, msgspec.Meta(ge=1)] = 1_000_000
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=4 * 1024 * 1024)] = 256 * 1024
    search_page_max: Annotated[int, msgspec.Meta(ge=1, le=100)] = 20
    caseload_page_max: Annotated[int, msgspec.Meta(ge=1, le=200)] = 50
    log_level: str = "INFO"
    new_account_restriction_hours: Annotated[float, msgspec.Meta(ge=0, le=720)] = 24.0
    break_glass_minutes: Annotated[int, msgspec.Meta(ge=1, le=240)] = 30
    break_glass_daily_limit: Annotated[int, msgspec.Meta(ge=0, le=100)] = 5
    # Access log: the checkpoint origin line (C2SP tlog-checkpoint) and cadence.
    audit_origin: Annotated[
        str, msgspec.Meta(pattern=r"^[a-z0-9.-]{1,100}/[a-z0-9./-]{1,100}$")
    ] = "vault-service.example/access-log"
    checkpoint_interval_seconds: Annotated[float, msgspec.Meta(ge=0.5, le=300)] = 5.0
    # Witnesses cosigning each checkpoint (audit/witness.py, C2SP tlog-witness): a
    # comma-separated list of `URL|verifier key`, the URL the witness's submission
    # prefix (https, or http to a loopback host), the key as `vault-service witness
    # keygen` prints it.
    audit_witnesses: tuple[str, ...] = ()
    # Record budgets (access/budgets.py): distinct records per fixed UTC window. Records
    # are full views (encrypted fields returned); summaries are masked views (caseload,
    # search, a supervisor's view). A counsellor with 150 youth reading them all twice a
    # day counts 150 a day (re-reading a counted record is free). Halved while an
    # account is restricted. 0 refuses every such read for the role.
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
    # whatever it returns (differencing many tables is how suppressed cells leak).
    budget_stats_hour: Budget = 60
    # Access-volume queries (GET /v1/audit/volume) per auditor and hour: each one groups
    # up to 93 days of the access log, so each counts, whatever it returns.
    budget_volume_hour: Budget = 60
    # Days a cross-structure transfer request waits for the receiving structure's
    # acceptance; past them it can only be asked again.
    transfer_acceptance_days: Annotated[int, msgspec.Meta(ge=1, le=90)] = 14
    # Budget refusals (429) of one account in an hour after which the service suspends
    # it by itself (access/defence.py); the first refusal of an hour raises an alert.
    suspend_after_refusals_hour: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 10
    # Anomaly rules (alerts/rules.py): how often the leader evaluates them, and their
    # thresholds.
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
    # How often each process reloads the honeytokens' tags (records/honeytokens.py): a
    # canary planted since is not recognised before.
    honeytoken_reload_seconds: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 30.0
    # Alerts POSTed there (Standard Webhooks signatures) when set, with the secret
    # (`whsec_...`) read from a file: https, or http to a loopback host only.
    alert_webhook_url: str | None = None
    alert_webhook_secret_file: str | None = None
    # Refusals of requests with no verified actor (access/anonymous.py): counted per
    # client, action and code, one entry per key and window, at most this many keys.
    anonymous_refusal_window_seconds: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 60.0
    anonymous_refusal_keys_max: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 50
    # Which process integrates the access log into its Merkle tree (one leader among
    # those that may): every replica by default; false on replicas that leave it to a
    # dedicated `vault-service audit integrate`.
    audit_integrator: bool = True
    # Record retention (the i-Milo decree): a record is readable until the youth's
    # birthday of this age, or the end of the programme running then when that is
    # later; `retention run` then anonymises it (the record key and every ciphertext
    # destroyed, the `internal` codes kept) and purges those codes this many days on.
    retention_age_years: Annotated[int, msgspec.Meta(ge=16, le=30)] = 26
    retention_programme_end: bool = True
    retention_purge_after_days: Annotated[int, msgspec.Meta(ge=0, le=36_500)] = 1826
    retention_batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    # Key rotation policy (`vault-service keys status`): a key whose latest version is
    # older than this many days is due for rotation; 0 means never by age. The
    # blind-index roots rotate only as a planned re-indexing, so not by age.
    rotation_kek_days: Annotated[int, msgspec.Meta(ge=0, le=3650)] = 365
    rotation_branch_days: Annotated[int, msgspec.Meta(ge=0, le=3650)] = 365
    rotation_token_key_days: Annotated[int, msgspec.Meta(ge=0, le=3650)] = 90
    rotation_checkpoint_key_days: Annotated[int, msgspec.Meta(ge=0, le=3650)] = 365
    rotation_index_key_days: Annotated[int, msgspec.Meta(ge=0, le=3650)] = 0
    # Rows rewrapped per transaction by `keys rotate`: each batch holds its row locks
    # for one Vault round trip, and is one access-log entry.
    rotation_batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    # `keys rotate records` re-seals at most this many records a second (0: no limit),
    # so that the service keeps serving reads meanwhile (bench/keys.py measures both).
    rotation_records_per_second: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 2500
    # The BI lane (vault_service/stats/): cells counting fewer than this many youth
    # are suppressed, with complements; how often a rebuild looks for a closed year to
    # seal (seconds, 0: only by `vault-service stats refresh`); records decrypted per
    # batch; days after a year closes before it is sealed (late data entry of December
    # counts: a sealed year never changes).
    stats_k: Annotated[int, msgspec.Meta(ge=10, le=1000)] = 10
    stats_refresh_seconds: Annotated[float, msgspec.Meta(ge=0, le=604_800)] = 3600.0
    stats_batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1000
    stats_seal_after_days: Annotated[int, msgspec.Meta(ge=0, le=366)] = 31
    # Seconds the joint check of a year's tables may take before every table with a
    # suppressed cell is refused instead (vault_service/stats/joint.py).
    stats_audit_seconds: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 1800.0
    # `vault-service import`: records per batch (one transaction, one access-log entry
    # naming every record it created; the entry schema caps record_ids at 10,000).
    import_batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1000
    # Processes that check and seal an import's lines (1: the importing process itself);
    # each has the service's configuration and its own Vault and database sessions.
    import_workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    # Records sealed a second at most by an import (0: no limit): an import while the
    # service serves shares the machine with it (bench/imports.py measures both).
    import_records_per_second: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    # External identity providers (JSON list, see vault_service/settings/issuers.py).
    oidc_issuers: tuple[IssuerConfig, ...] = ()
    # The console's sign-in with one of those providers (JSON object, see
    # vault_service/settings/console.py); none: auditors paste a token.
    console_oidc: ConsoleSignIn | None = None

    def __post_init__(self) -> None:
        if not self.vault_token and not (self.vault_role_id and self.vault_secret_id_file):
            raise ConfigurationError(
                "Vault authentication missing: set VAULT_SERVICE_VAULT_TOKEN or "
                "VAULT_SERVICE_VAULT_ROLE_ID and VAULT_SERVICE_VAULT_SECRET_ID_FILE"
            )
        if self.vault_secret_id_file and not Path(self.vault_secret_id_file).is_file():
            raise ConfigurationError("VAULT_SERVICE_VAULT_SECRET_ID_FILE does not name a file")
        if self.vault_cacert and not Path(self.vault_cacert).is_file():
            raise ConfigurationError("VAULT_SERVICE_VAULT_CACERT does not name a file")
        if not _database_tls_or_local(self.database_url):
            raise ConfigurationError(
                "VAULT_SERVICE_DATABASE_URL must use sslmode=verify-full outside loopback"
            )
        if not _tls_or_loopback(self.vault_addr):
            # Plain HTTP only on loopback (the dev server); anything else must be TLS.
            raise ConfigurationError("VAULT_SERVICE_VAULT_ADDR must be https outside loopback")
        if any(i.issuer == self.jwt_issuer for i in self.oidc_issuers):
            raise ConfigurationError(
                "an external OIDC issuer may not reuse VAULT_SERVICE_JWT_ISSUER"
            )
        if self.db_pool_min > self.db_pool_max:
            raise ConfigurationError("db_pool_min is larger than db_pool_max")
        if (self.alert_webhook_url is None) != (self.alert_webhook_secret_file is None):
            raise ConfigurationError("the alert webhook needs both its URL and its secret file")
        if self.alert_webhook_url is not None and not _tls_or_loopback(self.alert_webhook_url):
            raise ConfigurationError("VAULT_SERVICE_ALERT_WEBHOOK_URL must be https")
        try:
            parse_working_hours(self.working_hours)
            zoneinfo.ZoneInfo(self.working_time_zone)
        except (ValueError, zoneinfo.ZoneInfoNotFoundError) as exc:
            raise ConfigurationError(
                f"VAULT_SERVICE_WORKING_HOURS or _WORKING_TIME_ZONE: {exc}"
            ) from None
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ConfigurationError("VAULT_SERVICE_TRUSTED_PROXIES: not an address") from None
        for witness in self.audit_witnesses:
            url, _, vkey = witness.partition("|")
            if not vkey or not _tls_or_loopback(url):
                raise ConfigurationError(
                    "VAULT_SERVICE_AUDIT_WITNESSES: each is https-URL|verifier-key"
                )
        for origin in self.cors_origins:
            if origin == "*" or not _tls_or_loopback(origin):
                raise ConfigurationError("CORS origins must be explicit https origins")
        if self.console_oidc is not None:
            self._check_console_oidc(self.console_oidc)

    def _check_console_oidc(self, signin: ConsoleSignIn) -> None:
        # The page's ID token must be one the service accepts: a configured issuer,
        # whose audience is the console's client (an ID token's `aud`).
        issuer = next((i for i in self.oidc_issuers if i.issuer == signin.issuer), None)
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
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        raw: dict[str, object] = {}
        for field in msgspec.structs.fields(cls):
            value = env.get(PREFIX + field.name.upper())
            if value is None or value == "":
                continue
            if field.name in ("cors_origins", "trusted_proxies", "audit_witnesses"):
                raw[field.name] = [v.strip() for v in value.split(",") if v.strip()]
            elif field.name == "oidc_issuers":
                raw[field.name] = parse_issuers(value)
            elif field.name == "console_oidc":
                raw[field.name] = parse_console_signin(value)
            else:
                raw[field.name] = value
        try:
            # strict=False lets msgspec parse "8000" into an int, "2.5" into a float.
            return msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            # The setting's name and a stable reason: msgspec's own text can quote the
            # value, and a value here can be a DSN with its password or a token.
            reason, path = validation_reason(exc)
            name = PREFIX + path.removeprefix("$.").split(".")[0].split("[")[0].upper()
            where = name if path.startswith("$.") else "the settings"
            raise ConfigurationError(f"invalid settings: {where}: {BODY_REASONS[reason]}") from None
