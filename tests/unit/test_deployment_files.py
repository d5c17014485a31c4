"""The deployment files say what infra/README.md claims they say.

No Docker, no network: docker-compose.yml, the collector configuration, the
OpenBao policies, roles.sql, pg_hba.conf, the Caddyfile and the Dockerfile are
read as text or YAML and checked for the properties the security model relies
on (least-privilege policies, TLS with pinned CAs, nothing published but the
proxy, hardened containers). Nothing here imports vault_service.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE_FILE = ROOT / "docker-compose.yml"

# The service's transit keys and their types. They are written out here on
# purpose, since this module imports nothing from the package; the kms tests
# compare vault_service.kms.SERVICE_KEYS with the deployment.
SERVICE_KEYS: dict[str, str] = {
    "vault-service-branch-kek": "aes256-gcm96",
    "vault-service-index": "aes256-gcm96",
    "vault-service-national-index": "aes256-gcm96",
    "vault-service-token": "ed25519",
    "vault-service-checkpoint": "ed25519",
}
APP_REPLICAS = ("app1", "app2")
PROXY = "proxy"
ROLES = (
    "vault_service_owner",
    "vault_service_app",
    "vault_service_auditor",
    "vault_service_retention",
)
# The admins' own logins, members of this group (docs/admin.md: the DBA creates one
# per person); pg_hba.conf admits them by membership.
ADMIN_GROUP = "+vault_service_admin"

# Service-level keys of the Compose specification (compose-spec.json). A key
# outside this set is a typo that `docker compose` would reject.
COMPOSE_SERVICE_KEYS = frozenset(
    """
    annotations attach blkio_config build cap_add cap_drop cgroup cgroup_parent command
    configs container_name cpu_count cpu_percent cpu_period cpu_quota cpu_rt_period
    cpu_rt_runtime cpu_shares cpus cpuset credential_spec depends_on deploy develop
    device_cgroup_rules devices dns dns_opt dns_search domainname entrypoint env_file
    environment expose extends external_links extra_hosts gpus group_add healthcheck
    hostname image init ipc isolation label_file labels links logging mac_address
    mem_limit mem_reservation mem_swappiness memswap_limit models network_mode networks
    oom_kill_disable oom_score_adj pid pids_limit platform ports post_start pre_stop
    privileged profiles provider pull_policy pull_refresh_after read_only restart
    runtime scale secrets security_opt shm_size stdin_open stop_grace_period
    stop_signal storage_opt sysctls tmpfs tty ulimits use_api_socket user userns_mode
    uts volumes volumes_from working_dir
    """.split()  # noqa: SIM905 - a word list reads better than 95 quoted strings
)
HEALTHCHECK_KEYS = frozenset(
    {"disable", "interval", "retries", "test", "timeout", "start_period", "start_interval"}
)
DEPENDS_ON_CONDITIONS = frozenset(
    {"service_started", "service_healthy", "service_completed_successfully"}
)


# --- helpers ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """{dependency: condition}, from either form of depends_on."""
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in raw.items()}


def volume_specs(service: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(type, source, target) of each mount, short or long syntax."""
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            yield entry["type"], entry.get("source", ""), entry["target"]
            continue
        parts = entry.split(":")
        source, target = parts[0], parts[1]
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        yield kind, source, target


def mounted_under(service: dict[str, Any], path: str) -> bool:
    target_path = PurePosixPath(path)
    return any(
        target_path == PurePosixPath(target) or PurePosixPath(target) in target_path.parents
        for _, _, target in volume_specs(service)
    )


def environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(item.split("=", 1) for item in raw)
    return {key: str(value) for key, value in raw.items()}


def strip_hash_comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def policy_blocks(text: str) -> dict[str, str]:
    """{path: block body} of an OpenBao/Vault policy.

    The policies use only `path "..." { ... }` blocks, holding `capabilities = [...]`
    and, in key-admin.hcl, `allowed_parameters = { ... }`; braces are matched so
    that a nested block stays inside its path.
    """
    text = strip_hash_comments(text)
    blocks: dict[str, str] = {}
    for match in re.finditer(r'path\s+"([^"]+)"\s*\{', text):
        depth, i = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        path = match.group(1)
        assert path not in blocks, f"path {path} appears twice"
        blocks[path] = text[match.end() : i - 1]
    return blocks


def capabilities(body: str) -> set[str]:
    match = re.search(r"capabilities\s*=\s*\[([^\]]*)\]", body)
    assert match, "a path block without capabilities"
    return set(re.findall(r'"([^"]+)"', match.group(1)))


def policy(name: str) -> dict[str, set[str]]:
    text = (INFRA / "openbao" / name).read_text(encoding="utf-8")
    return {path: capabilities(body) for path, body in policy_blocks(text).items()}


# --- docker-compose.yml ------------------------------------------------------------
def test_compose_parses_as_compose_spec(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the Compose spec has no version key"
    top_level = {"name", "services", "networks", "volumes", "secrets", "configs"}
    assert {key for key in compose if not key.startswith("x-")} <= top_level
    for name, service in compose["services"].items():
        unknown = set(service) - COMPOSE_SERVICE_KEYS
        assert not unknown, f"{name}: unknown keys {sorted(unknown)}"
        assert service.get("image") or service.get("build"), f"{name}: no image"
        if "healthcheck" in service:
            assert set(service["healthcheck"]) <= HEALTHCHECK_KEYS, name


def test_depends_on_names_existing_services(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dependency, condition in depends_on(service).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert condition in DEPENDS_ON_CONDITIONS, f"{name}: {condition}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"


def test_depends_on_has_no_cycle(services: dict[str, dict[str, Any]]) -> None:
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, f"dependency cycle: {' -> '.join((*trail, name))}"
        if name not in done:
            for dependency in depends_on(services[name]):
                visit(dependency, (*trail, name))
            done.add(name)

    for name in services:
        visit(name, ())


def test_bind_mounts_and_build_files_exist(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in services.items():
        for kind, source, _ in volume_specs(service):
            if kind == "bind":
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            elif kind == "volume":
                assert source in declared_volumes, f"{name} uses undeclared volume {source}"
        build = service.get("build")
        if build:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            assert context.is_dir(), name
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
            assert (context / (dockerfile or "Dockerfile")).is_file(), name


def test_env_files_and_config_files_exist(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    for name, service in services.items():
        env_files = service.get("env_file") or []
        for entry in [env_files] if isinstance(env_files, str) else env_files:
            path = entry if isinstance(entry, str) else entry["path"]
            assert (ROOT / path).is_file(), f"{name}: env_file {path} missing"
    for section in ("configs", "secrets"):
        for name, spec in (compose.get(section) or {}).items():
            if "file" in spec:
                assert (ROOT / spec["file"]).is_file(), f"{section}.{name} missing"


def test_every_named_volume_is_used(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    used = {
        source
        for service in services.values()
        for kind, source, _ in volume_specs(service)
        if kind == "volume"
    }
    assert set(compose.get("volumes") or {}) == used


@pytest.mark.parametrize("replica", APP_REPLICAS)
def test_replica_environment(services: dict[str, dict[str, Any]], replica: str) -> None:
    service = services[replica]
    env = environment(service)
    assert service["command"] == ["serve"]

    dsn = env["VAULT_SERVICE_DATABASE_URL"]
    assert dsn.startswith("postgresql://vault_service_app@postgres:")
    query = dict(part.split("=", 1) for part in dsn.split("?", 1)[1].split("&"))
    assert query["sslmode"] == "verify-full"
    assert mounted_under(service, query["sslrootcert"]), "sslrootcert is not mounted"
    userinfo = dsn.split("//", 1)[1].split("@", 1)[0]
    assert ":" not in userinfo, "no password in the DSN: asyncpg reads PGPASSFILE"
    assert mounted_under(service, env["PGPASSFILE"])

    assert env["VAULT_SERVICE_VAULT_ADDR"].startswith("https://")
    assert mounted_under(service, env["VAULT_SERVICE_VAULT_CACERT"])
    assert env["VAULT_SERVICE_VAULT_ROLE_ID"]
    assert mounted_under(service, env["VAULT_SERVICE_VAULT_SECRET_ID_FILE"])
    assert "VAULT_SERVICE_VAULT_TOKEN" not in env, "replicas log in with AppRole"
    assert env["VAULT_SERVICE_VAULT_TRANSIT_MOUNT"] == "transit"

    assert env["VAULT_SERVICE_JWT_ISSUER"].startswith("https://")
    assert env["VAULT_SERVICE_JWT_AUDIENCE"]
    assert all(o.startswith("https://") for o in env["VAULT_SERVICE_CORS_ORIGINS"].split(","))
    assert env["VAULT_SERVICE_HOST"] == "0.0.0.0"
    assert env["VAULT_SERVICE_PORT"] == "8000"

    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "https://otel-collector:4318"
    assert mounted_under(service, env["OTEL_EXPORTER_OTLP_CERTIFICATE"])
    assert env["OTEL_SERVICE_NAME"] == "vault-service"
    assert f"service.instance.id={replica}" in env["OTEL_RESOURCE_ATTRIBUTES"]


@pytest.mark.parametrize("replica", APP_REPLICAS)
def test_replicas_hold_no_owner_or_root_credentials(
    services: dict[str, dict[str, Any]], replica: str
) -> None:
    service = services[replica]
    assert "VAULT_SERVICE_MIGRATIONS_DATABASE_URL" not in environment(service)
    sources = {source for _, source, _ in volume_specs(service)}
    assert not sources & {"pg-owner-credentials", "pg-bootstrap", "openbao-init-secrets"}
    assert depends_on(service)["migrate"] == "service_completed_successfully"
    assert depends_on(service)["openbao-init"] == "service_completed_successfully"


def test_demo_unseal_material_is_mounted_by_openbao_init_only(
    services: dict[str, dict[str, Any]],
) -> None:
    holders = {
        name
        for name, service in services.items()
        for _, source, _ in volume_specs(service)
        if source == "openbao-init-secrets"
    }
    assert holders == {"openbao-init"}


def test_migrate_uses_the_owner_role(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["migrate"])
    dsn = env["VAULT_SERVICE_MIGRATIONS_DATABASE_URL"]
    assert dsn.startswith("postgresql://vault_service_owner@postgres:")
    assert "sslmode=verify-full" in dsn
    assert depends_on(services["migrate"])["postgres"] == "service_healthy"


def test_only_the_proxy_publishes_ports(services: dict[str, dict[str, Any]]) -> None:
    publishing = {name for name, service in services.items() if service.get("ports")}
    assert publishing == {PROXY}
    for name, service in services.items():
        assert service.get("network_mode") != "host", name


def test_backend_network_is_internal(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert compose["networks"]["backend"]["internal"] is True
    for name in (*APP_REPLICAS, "postgres", "openbao", "otel-collector", "migrate"):
        assert services[name]["networks"] == ["backend"], name


def test_every_container_is_hardened(services: dict[str, dict[str, Any]]) -> None:
    # Capabilities a container may add back after dropping them all: CHOWN for the
    # one-shots that hand a file to another uid, NET_BIND_SERVICE for Caddy's binary.
    allowed_caps = {"CHOWN", "NET_BIND_SERVICE"}
    for name, service in services.items():
        assert service.get("read_only") is True, f"{name}: root fs writable"
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("cap_drop") == ["ALL"], name
        assert set(service.get("cap_add", [])) <= allowed_caps, name
        assert not service.get("privileged"), name
        restart = service.get("restart")
        assert restart in {"no", "unless-stopped", "always", "on-failure"}, name


def test_long_running_services_have_health_checks(services: dict[str, dict[str, Any]]) -> None:
    # The replicas use the image's HEALTHCHECK (checked below with the Dockerfile);
    # the collector image has no shell to run one.
    for name in ("postgres", "openbao", PROXY):
        assert services[name]["healthcheck"]["test"], name
    for name in APP_REPLICAS:
        assert not services[name].get("healthcheck", {}).get("disable"), name


def test_postgres_serves_tls_with_the_repository_hba(services: dict[str, dict[str, Any]]) -> None:
    service = services["postgres"]
    settings = dict(
        arg.split("=", 1) for arg in service["command"] if "=" in arg and not arg.startswith("-")
    )
    assert settings["ssl"] == "on"
    assert settings["password_encryption"] == "scram-sha-256"
    assert mounted_under(service, settings["ssl_cert_file"])
    assert mounted_under(service, settings["ssl_key_file"])
    assert mounted_under(service, settings["hba_file"])
    mounts = {source: target for _, source, target in volume_specs(service)}
    assert mounts["./infra/postgres/pg_hba.conf"] == settings["hba_file"]
    assert mounts["./infra/postgres/init-roles.sh"].startswith("/docker-entrypoint-initdb.d/")
    # roles.sql must not sit in the initdb directory itself: it is run by
    # init-roles.sh, with the passwords in psql's environment.
    assert not mounts["./infra/postgres/roles.sql"].startswith("/docker-entrypoint-initdb.d/")


def test_openbao_runs_the_repository_config(services: dict[str, dict[str, Any]]) -> None:
    service = services["openbao"]
    mounts = {source: target for _, source, target in volume_specs(service)}
    assert mounts["./infra/openbao/config.hcl"].startswith("/openbao/config/")
    config = strip_hash_comments((INFRA / "openbao" / "config.hcl").read_text(encoding="utf-8"))
    assert re.search(r"^\s*ui\s*=\s*false", config, re.MULTILINE)
    assert re.search(r'storage\s+"raft"', config)
    assert not re.search(r"tls_disable\s*=\s*(true|1|\"true\")", config)
    for key in ("tls_cert_file", "tls_key_file"):
        path = re.search(rf'{key}\s*=\s*"([^"]+)"', config)
        assert path, key
        assert mounted_under(service, path.group(1)), key


def test_otel_collector_gets_its_config(services: dict[str, dict[str, Any]]) -> None:
    mounts = {source: target for _, source, target in volume_specs(services["otel-collector"])}
    assert mounts["./infra/otel/collector.yaml"] == "/etc/otelcol-contrib/config.yaml"


# --- OpenTelemetry collector -------------------------------------------------------
@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    data = yaml.safe_load((INFRA / "otel" / "collector.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_collector_pipelines_reference_defined_components(collector: dict[str, Any]) -> None:
    pipelines = collector["service"]["pipelines"]
    assert {"traces", "metrics", "logs"} <= set(pipelines)
    for name, pipeline in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in collector[kind], f"{name}: {kind[:-1]} {component} undefined"
        processors = pipeline["processors"]
        assert processors[0] == "memory_limiter", name
        assert processors[-1] == "batch", name
        assert "attributes/scrub" in processors, name


def test_collector_receives_otlp_over_tls(collector: dict[str, Any]) -> None:
    protocols = collector["receivers"]["otlp"]["protocols"]
    assert protocols["http"]["endpoint"].endswith(":4318")
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    for protocol in ("http", "grpc"):
        assert protocols[protocol]["tls"]["cert_file"], protocol


def test_collector_scrubs_urls_statements_and_end_users(collector: dict[str, Any]) -> None:
    actions = collector["processors"]["attributes/scrub"]["actions"]
    assert all(action["action"] == "delete" for action in actions)
    keys = {action["key"] for action in actions if "key" in action}
    patterns = [re.compile(action["pattern"]) for action in actions if "pattern" in action]
    assert {"http.url", "url.full", "url.query", "db.statement.parameters"} <= keys
    for attribute in ("enduser.id", "enduser.role", "http.request.header.authorization"):
        assert any(p.search(attribute) for p in patterns), attribute
    for kept in ("http.route", "http.response.status_code"):
        assert kept not in keys
        assert not any(p.search(kept) for p in patterns), kept


# --- OpenBao policies --------------------------------------------------------------
def test_service_policy_grants_exactly_what_the_service_uses() -> None:
    expected = {
        "transit/datakey/wrapped/vault-service-branch-kek": {"update"},
        "transit/decrypt/vault-service-branch-kek": {"update"},
        "transit/rewrap/vault-service-branch-kek": {"update"},
        "transit/hmac/vault-service-index": {"update"},
        "transit/hmac/vault-service-national-index": {"update"},
        "transit/sign/vault-service-token": {"update"},
        "transit/sign/vault-service-checkpoint": {"update"},
        "vault-service-anchor/data/checkpoints": {"read", "update"},
    } | {f"transit/keys/{name}": {"read"} for name in SERVICE_KEYS}
    assert policy("vault-service.hcl") == expected


def test_service_policy_reaches_nothing_dangerous() -> None:
    text = strip_hash_comments(
        (INFRA / "openbao" / "vault-service.hcl").read_text(encoding="utf-8")
    )
    for path, caps in policy("vault-service.hcl").items():
        assert not re.search(r"[*+]", path), f"glob in {path}"
        for word in ("export", "backup", "restore", "rotate", "config", "trim", "plaintext"):
            assert word not in path, path
        assert not caps & {"delete", "sudo", "create", "list"}, path
    assert "allowed_parameters" not in text
    assert "denied_parameters" not in text


def test_key_admin_policy_cannot_export_backup_or_delete() -> None:
    blocks = policy_blocks((INFRA / "openbao" / "key-admin.hcl").read_text(encoding="utf-8"))
    granted = {path: capabilities(body) for path, body in blocks.items()}
    for path, caps in granted.items():
        assert path.startswith("transit/keys"), path
        for word in ("export", "backup", "restore", "trim"):
            assert word not in path, path
        assert not caps & {"delete", "sudo"}, path
        if path.endswith("/config"):
            # Config may never switch on exportable, plaintext backup or deletion.
            allowed = re.search(r"allowed_parameters\s*=\s*\{([^}]*)\}", blocks[path])
            assert allowed, f"{path}: config without allowed_parameters"
            names = set(re.findall(r'"([^"]+)"\s*=', allowed.group(1)))
            assert names <= {
                "min_decryption_version",
                "min_encryption_version",
                "auto_rotate_period",
            }, path
    # It can rotate every service key.
    for name in SERVICE_KEYS:
        assert granted[f"transit/keys/{name}/rotate"] == {"update"}


def test_init_script_creates_the_keys_and_writes_both_policies() -> None:
    script = (INFRA / "openbao" / "init.sh").read_text(encoding="utf-8")
    created = dict(re.findall(r"^ensure_key\s+(\S+)\s+(\S+)\s*$", script, re.MULTILINE))
    assert created == SERVICE_KEYS
    assert re.search(r"policy write vault-service .*vault-service\.hcl", script)
    assert re.search(r"policy write key-admin .*key-admin\.hcl", script)
    assert "token_policies=vault-service" in script
    # The anchor exists before the service runs: its policy cannot create it.
    assert "secrets enable -path=vault-service-anchor -version=2" in script
    assert "kv put -mount=vault-service-anchor -cas=0 checkpoints" in script


# --- PostgreSQL -------------------------------------------------------------------
def test_roles_sql_creates_the_four_roles_without_passwords() -> None:
    sql = (INFRA / "postgres" / "roles.sql").read_text(encoding="utf-8")
    code = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    for role in ROLES:
        assert re.search(rf"CREATE ROLE {role}\b", code), role
    for role in ROLES[1:]:
        attributes = re.search(rf"ALTER ROLE {role}\s+([A-Z ]+);", code)
        assert attributes, role
        words = set(attributes.group(1).split())
        assert {"LOGIN", "NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE", "NOINHERIT"} <= words
    # A password may only come from a psql variable (:'name'), never a literal.
    assert not re.search(r"PASSWORD\s+'", code, re.IGNORECASE)
    assert not re.search(r"PASSWORD\s+E?'", code, re.IGNORECASE)
    assert re.search(r"REVOKE ALL ON DATABASE vault_service FROM PUBLIC", code)
    assert re.search(r"REVOKE ALL ON SCHEMA public FROM PUBLIC", code)
    assert re.search(r"GRANT CONNECT ON DATABASE vault_service", code)
    assert re.search(r"CREATE DATABASE vault_service OWNER vault_service_owner", code)


def test_admin_logins_that_the_admin_guide_describes_can_connect() -> None:
    """The admin guide (docs/admin.md) tells the DBA to create each admin's login IN
    ROLE vault_service_admin and to run `vault-service accounts ...` on it over TLS:
    the group must exist before the migrations grant it the account functions, must
    not log in itself, must be allowed to connect, and pg_hba.conf must admit its
    members."""
    guide = (ROOT / "docs" / "admin.md").read_text(encoding="utf-8")
    assert re.search(r"CREATE ROLE \w+ LOGIN IN ROLE vault_service_admin", guide)
    assert "VAULT_SERVICE_ADMIN_DATABASE_URL=postgresql://" in guide
    sql = (INFRA / "postgres" / "roles.sql").read_text(encoding="utf-8")
    code = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    assert re.search(r"CREATE ROLE vault_service_admin\b", code)
    attributes = re.search(r"ALTER ROLE vault_service_admin\s+([A-Z ]+);", code)
    assert attributes
    assert {"NOLOGIN", "NOSUPERUSER", "NOCREATEDB", "NOCREATEROLE"} <= set(
        attributes.group(1).split()
    )
    connect = re.search(r"GRANT CONNECT ON DATABASE vault_service\s+TO ([^;]+);", code)
    assert connect
    assert "vault_service_admin" in {r.strip() for r in connect.group(1).split(",")}
    hba = pg_hba_lines()
    admitted = [f for f in hba if f[2] == ADMIN_GROUP]
    assert admitted == [["hostssl", "vault_service", ADMIN_GROUP, "samenet", "scram-sha-256"]]
    # Before the catch-all rejects, or it would never match.
    assert hba.index(admitted[0]) < hba.index(["local", "all", "all", "reject"])


def pg_hba_lines() -> list[list[str]]:
    return [
        line.split()
        for line in strip_hash_comments(
            (INFRA / "postgres" / "pg_hba.conf").read_text(encoding="utf-8")
        ).splitlines()
        if line.strip()
    ]


def test_pg_hba_allows_only_tls_and_scram() -> None:
    lines = pg_hba_lines()
    for fields in lines:
        kind, method = fields[0], fields[-1]
        assert method not in {"trust", "password", "md5", "ident"}, fields
        if kind == "local":
            assert method in {"peer", "reject"}, fields
        elif method != "reject":
            assert kind == "hostssl", fields
            assert method == "scram-sha-256", fields
            assert fields[1] == "vault_service" and fields[2] in {*ROLES, ADMIN_GROUP}, fields
    accepted_network_roles = {f[2] for f in lines if f[0] == "hostssl" and f[-1] != "reject"}
    assert accepted_network_roles == {*ROLES, ADMIN_GROUP}
    assert ["hostssl", "all", "postgres", "all", "reject"] in lines
    assert lines[-1] == ["host", "all", "all", "all", "reject"]


# --- Caddy --------------------------------------------------------------------------
def test_caddyfile_balances_both_replicas_behind_tls() -> None:
    caddyfile = strip_hash_comments((INFRA / "proxy" / "Caddyfile").read_text(encoding="utf-8"))
    upstreams = re.search(r"reverse_proxy\s+([^{\n]+)\{", caddyfile)
    assert upstreams
    assert set(upstreams.group(1).split()) == {f"{name}:8000" for name in APP_REPLICAS}
    assert re.search(r"health_uri\s+/health/ready", caddyfile)
    assert re.search(r"header_up\s+X-Request-Id\s+\{http\.request\.uuid\}", caddyfile)
    assert re.search(r"tls\s+internal", caddyfile)
    assert re.search(r"max_size\s+\d+", caddyfile)
    assert re.search(r"Strict-Transport-Security\s+\"max-age=\d+", caddyfile)
    assert re.search(r"X-Content-Type-Options\s+\"nosniff\"", caddyfile)
    assert re.search(r"X-Frame-Options\s+\"DENY\"", caddyfile)


def test_proxy_publishes_the_caddyfile_site(services: dict[str, dict[str, Any]]) -> None:
    caddyfile = (INFRA / "proxy" / "Caddyfile").read_text(encoding="utf-8")
    ports = services[PROXY]["ports"]
    assert ports == ["127.0.0.1:8443:8443"]
    assert re.search(r"^\S+:8443 \{", caddyfile, re.MULTILINE)


# --- Image --------------------------------------------------------------------------
def test_dockerfile_builds_a_non_root_image_without_dev_extras() -> None:
    dockerfile = "\n".join(
        line
        for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("#")
    )
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", dockerfile, re.MULTILINE)
    assert len(stages) >= 2, "multi-stage build"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", dockerfile, re.MULTILINE)
    assert base
    assert base.group(1).startswith("python:3.11-slim")
    # Dependencies from the hashed lock, then the package alone.
    assert re.search(r"pip install --require-hashes -r requirements-runtime\.lock", dockerfile)
    assert re.search(r"pip install --no-deps \.\s*$", dockerfile, re.MULTILINE)
    assert not re.search(r"pip install[^\n]*\[(dev|test|lint)", dockerfile)
    user = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert user
    assert user[-1].split(":")[0] not in {"0", "root"}
    assert re.search(r'^ENTRYPOINT \["vault-service"\]', dockerfile, re.MULTILINE)
    assert re.search(r'^CMD \["serve"\]', dockerfile, re.MULTILINE)
    healthcheck = re.search(r"^HEALTHCHECK .*?CMD (.+)$", dockerfile, re.MULTILINE | re.DOTALL)
    assert healthcheck
    assert "urllib" in healthcheck.group(1)
    assert "/health/live" in healthcheck.group(1)


def test_dockerignore_is_an_allow_list() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert "!vault_service/" in lines
    assert "!pyproject.toml" in lines
    assert "!requirements-runtime.lock" in lines


# --- Shell scripts -----------------------------------------------------------------
SCRIPTS = sorted(INFRA.rglob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_scripts_are_posix_and_stop_on_errors(script: Path) -> None:
    text = script.read_text(encoding="utf-8")
    assert text.startswith("#!/bin/sh\n")
    # init-roles.sh may be sourced by the postgres entrypoint: no `set -u` there.
    expected = "set -e" if script.name == "init-roles.sh" else "set -eu"
    assert re.search(rf"^{expected}$", text, re.MULTILINE), script.name
    shell = shutil.which("dash") or shutil.which("sh")
    assert shell
    result = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_compose_mounts_every_infra_script(services: dict[str, dict[str, Any]]) -> None:
    mounted = {
        (ROOT / source).resolve()
        for service in services.values()
        for kind, source, _ in volume_specs(service)
        if kind == "bind"
    }
    for script in SCRIPTS:
        assert script.resolve() in mounted or script.parent.resolve() in mounted, script


def test_replicas_trust_exactly_the_proxy(services: dict[str, dict[str, Any]]) -> None:
    """The access log's client fingerprint uses X-Forwarded-For only from a trusted
    proxy: the replicas must name the proxy's fixed back-end address, and only it."""
    address = services[PROXY]["networks"]["backend"]["ipv4_address"]
    for name in APP_REPLICAS:
        assert services[name]["environment"]["VAULT_SERVICE_TRUSTED_PROXIES"] == address, name
