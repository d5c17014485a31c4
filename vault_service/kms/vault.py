"""Vault/OpenBao transit through hvac, off the event loop, with bounded retries.

hvac is synchronous: every call runs in a small dedicated thread pool so a slow
Vault never blocks the event loop, and the pool's size bounds how many Vault
calls one process can have in flight. Any failure (network, timeout, sealed,
permission) becomes `KmsUnavailable`: the caller fails closed. Error text from
hvac is never logged or returned (it can echo request paths and bodies); only
the exception class name is.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import functools
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import hvac
import hvac.exceptions
import requests
import structlog
from opentelemetry import metrics

from vault_service.errors import KmsUnavailable
from vault_service.settings import VaultSettings

log = structlog.get_logger(__name__)
_meter = metrics.get_meter("vault_service.kms")
_calls = _meter.create_counter("vault_service.kms.calls", description="Vault API calls")
_failures = _meter.create_counter("vault_service.kms.failures", description="failed Vault calls")

# Transit keys (policy in infra/openbao/vault-service.hcl grants exactly these).
BRANCH_KEK: Final = "vault-service-branch-kek"  # wraps per-structure branch keys
INDEX_KEY: Final = "vault-service-index"  # HMAC root of per-structure blind-index keys
NATIONAL_INDEX_KEY: Final = "vault-service-national-index"  # NIR and France Travail id
TOKEN_KEY: Final = "vault-service-token"  # noqa: S105 - a key name, not a secret; Ed25519, signs our JWTs
CHECKPOINT_KEY: Final = "vault-service-checkpoint"  # Ed25519, signs access-log checkpoints
SERVICE_KEYS: Final[dict[str, str]] = {
    BRANCH_KEK: "aes256-gcm96",
    INDEX_KEY: "aes256-gcm96",
    NATIONAL_INDEX_KEY: "aes256-gcm96",
    TOKEN_KEY: "ed25519",
    CHECKPOINT_KEY: "ed25519",
}

# The checkpoint signer's anchor outside PostgreSQL (audit/checkpoints.py): KV version
# 2, one secret, {origin: {"size", "root"}}, written with check-and-set.
ANCHOR_MOUNT: Final = "vault-service-anchor"
ANCHOR_PATH: Final = "checkpoints"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Anchors:
    """The last (size, root) signed for each log origin, and the secret's version (the
    check-and-set a write must name)."""

    heads: dict[str, tuple[int, bytes]]
    version: int


# Errors worth one more try: the network or a Vault that is briefly unavailable.
_RETRYABLE = (
    requests.ConnectionError,
    requests.Timeout,
    hvac.exceptions.VaultDown,
    hvac.exceptions.InternalServerError,
    hvac.exceptions.BadGateway,
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True, slots=True)
class TransitKeyInfo:
    """What `transit/keys/<name>` says of a key: never key material."""

    name: str
    key_type: str
    latest_version: int
    min_decryption_version: int
    min_encryption_version: int
    created: dict[int, datetime.datetime]


_FRACTION = re.compile(r"(\.\d{1,6})\d*")


def _creation_time(info: Any) -> datetime.datetime:
    """Symmetric keys give a Unix time per version, asymmetric ones an RFC 3339 string
    (nanoseconds, which fromisoformat does not take before Python 3.12)."""
    if isinstance(info, dict):
        text = _FRACTION.sub(r"\1", str(info["creation_time"])).replace("Z", "+00:00")
        return datetime.datetime.fromisoformat(text).astimezone(datetime.UTC)
    return datetime.datetime.fromtimestamp(int(info), datetime.UTC)


def _key_info(name: str, data: dict[str, Any]) -> TransitKeyInfo:
    return TransitKeyInfo(
        name=name,
        key_type=str(data["type"]),
        latest_version=int(data["latest_version"]),
        min_decryption_version=int(data.get("min_decryption_version") or 1),
        min_encryption_version=int(data.get("min_encryption_version") or 0),
        created={int(v): _creation_time(info) for v, info in data["keys"].items()},
    )


def wrapped_version(wrapped: str) -> int:
    """The transit key version a 'vault:v<N>:...' value was wrapped under."""
    prefix, version, _ = wrapped.split(":", 2)
    if prefix != "vault" or not version.startswith("v"):
        raise ValueError("not a transit blob")
    return int(version[1:])


def _vault_blob(value: str) -> tuple[int, bytes]:
    """Split transit's 'vault:v<N>:<base64>' into its key version and bytes."""
    prefix, version, payload = value.split(":", 2)
    if prefix != "vault" or not version.startswith("v"):
        raise ValueError("not a transit blob")
    return int(version[1:]), base64.b64decode(payload, validate=True)


class VaultKms:
    """Transit operations the service needs, and nothing else.

    `calls` counts every request sent to Vault by this process: the benchmark
    and tests read it to show the hot path makes none.
    """

    def __init__(self, settings: VaultSettings, *, max_threads: int = 4) -> None:
        self._settings = settings
        self._mount = settings.transit_mount
        self._executor = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="kms")
        self._client_lock = threading.Lock()
        self._client: hvac.Client | None = None
        self.calls = 0

    # --- plumbing -----------------------------------------------------------------
    def _new_client(self) -> hvac.Client:
        s = self._settings
        verify: bool | str = s.cacert or True
        client = hvac.Client(url=s.addr, timeout=s.timeout_seconds, verify=verify)
        if s.token:
            client.token = s.token
        else:
            assert s.role_id  # checked by Settings
            assert s.secret_id_file
            secret_id = Path(s.secret_id_file).read_text(encoding="utf-8").strip()
            client.auth.approle.login(role_id=s.role_id, secret_id=secret_id)
        return client

    def _client_or_login(self, *, fresh: bool = False) -> hvac.Client:
        with self._client_lock:
            if self._client is None or fresh:
                self._client = self._new_client()
            return self._client

    def _call_sync(self, operation: str, fn: Callable[[hvac.Client], T]) -> T:
        attempts = self._settings.retries + 1
        relogin_done = self._settings.token is not None
        for attempt in range(attempts):
            self.calls += 1
            _calls.add(1, {"operation": operation})
            try:
                return fn(self._client_or_login())
            except hvac.exceptions.Forbidden:
                # An AppRole token may have expired: log in once more, then give up.
                if not relogin_done:
                    relogin_done = True
                    self._client_or_login(fresh=True)
                    continue
                _failures.add(1, {"operation": operation, "error": "Forbidden"})
                log.error("kms_call_failed", operation=operation, error="Forbidden")
                raise KmsUnavailable() from None
            except _RETRYABLE as exc:
                _failures.add(1, {"operation": operation, "error": type(exc).__name__})
                if attempt + 1 < attempts:
                    time.sleep(min(0.05 * 2**attempt, 0.5))
                    continue
                log.error("kms_call_failed", operation=operation, error=type(exc).__name__)
                raise KmsUnavailable() from None
            except Exception as exc:  # noqa: BLE001 - any other failure also fails closed
                _failures.add(1, {"operation": operation, "error": type(exc).__name__})
                log.error("kms_call_failed", operation=operation, error=type(exc).__name__)
                raise KmsUnavailable() from None
        raise KmsUnavailable()

    async def _call(self, operation: str, fn: Callable[[hvac.Client], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(self._call_sync, operation, fn)
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- operations -------------------------------------------------------------------
    async def generate_wrapped_key(self) -> str:
        """A fresh 256-bit key that Vault returns only wrapped under the branch KEK."""

        def op(c: hvac.Client) -> str:
            r = c.secrets.transit.generate_data_key(
                name=BRANCH_KEK, key_type="wrapped", bits=256, mount_point=self._mount
            )
            return str(r["data"]["ciphertext"])

        return await self._call("datakey", op)

    async def unwrap_key(self, wrapped: str) -> bytes:
        def op(c: hvac.Client) -> bytes:
            r = c.secrets.transit.decrypt_data(
                name=BRANCH_KEK, ciphertext=wrapped, mount_point=self._mount
            )
            return base64.b64decode(r["data"]["plaintext"])

        key = await self._call("decrypt", op)
        if len(key) != 32:
            raise KmsUnavailable()
        return key

    async def rewrap_keys(self, wrapped: Sequence[str]) -> list[str]:
        """Rewrap many branch keys to the KEK's latest version in one request (transit
        batch): the plaintext never leaves Vault. Any item refused fails the whole."""

        def op(c: hvac.Client) -> list[str]:
            r = c.secrets.transit.rewrap_data(
                name=BRANCH_KEK,
                ciphertext=wrapped[0],
                batch_input=[{"ciphertext": w} for w in wrapped],
                mount_point=self._mount,
            )
            results = r["data"]["batch_results"]
            if len(results) != len(wrapped) or any(x.get("error") for x in results):
                raise ValueError("a batch item was refused")
            return [str(x["ciphertext"]) for x in results]

        if not wrapped:
            return []
        return await self._call("rewrap", op)

    async def key_info(self, key_name: str) -> TransitKeyInfo:
        def op(c: hvac.Client) -> TransitKeyInfo:
            r = c.secrets.transit.read_key(name=key_name, mount_point=self._mount)
            return _key_info(key_name, r["data"])

        return await self._call("read_key", op)

    async def derive(self, key_name: str, label: bytes) -> bytes:
        """HMAC-SHA256 of `label` under a non-exportable transit key, version 1 pinned
        so that derived blind-index keys never change under a rotation (a rotation
        of index keys is a re-index, done by `vault-service keys reindex`)."""

        def op(c: hvac.Client) -> bytes:
            r = c.secrets.transit.generate_hmac(
                name=key_name,
                hash_input=_b64(label),
                key_version=1,
                algorithm="sha2-256",
                mount_point=self._mount,
            )
            return _vault_blob(str(r["data"]["hmac"]))[1]

        return await self._call("hmac", op)

    async def sign(self, key_name: str, message: bytes, key_version: int) -> bytes:
        """Ed25519 signature by a transit key; the private key never leaves Vault."""

        def op(c: hvac.Client) -> bytes:
            r = c.secrets.transit.sign_data(
                name=key_name,
                hash_input=_b64(message),
                key_version=key_version,
                mount_point=self._mount,
            )
            version, signature = _vault_blob(str(r["data"]["signature"]))
            if version != key_version or len(signature) != 64:
                raise ValueError("unexpected signature")
            return signature

        return await self._call("sign", op)

    async def public_keys(self, key_name: str) -> tuple[int, dict[int, bytes]]:
        """(latest version, {version: raw Ed25519 public key}) for the versions that
        can still verify (at or above min_decryption_version)."""

        def op(c: hvac.Client) -> tuple[int, dict[int, bytes]]:
            r = c.secrets.transit.read_key(name=key_name, mount_point=self._mount)
            data: dict[str, Any] = r["data"]
            keys = {
                int(version): base64.b64decode(info["public_key"])
                for version, info in data["keys"].items()
                if int(version) >= int(data.get("min_decryption_version", 1))
            }
            return int(data["latest_version"]), keys

        return await self._call("read_key", op)

    async def read_anchors(self) -> Anchors:
        def op(c: hvac.Client) -> Anchors:
            r = c.secrets.kv.v2.read_secret_version(
                path=ANCHOR_PATH, mount_point=ANCHOR_MOUNT, raise_on_deleted_version=True
            )
            heads = {
                origin: (int(head["size"]), base64.b64decode(head["root"]))
                for origin, head in r["data"]["data"].items()
                if isinstance(head, dict)
            }
            return Anchors(heads, int(r["data"]["metadata"]["version"]))

        return await self._call("read_anchor", op)

    async def write_anchor(self, anchors: Anchors, origin: str, size: int, root: bytes) -> bool:
        """Record `origin`'s new head, if nobody wrote since `anchors` was read (False:
        someone did; read again)."""
        heads = {o: {"size": n, "root": _b64(r)} for o, (n, r) in anchors.heads.items()}
        heads[origin] = {"size": size, "root": _b64(root)}

        def op(c: hvac.Client) -> bool:
            try:
                c.secrets.kv.v2.create_or_update_secret(
                    path=ANCHOR_PATH, secret=heads, cas=anchors.version, mount_point=ANCHOR_MOUNT
                )
            except hvac.exceptions.InvalidRequest:
                return False  # check-and-set: the version moved
            return True

        return await self._call("write_anchor", op)

    async def healthy(self) -> bool:
        """An authenticated call the policy allows: `sys/health` needs no token and
        would say "ready" to a service whose Vault access was revoked."""

        def op(c: hvac.Client) -> bool:
            c.secrets.transit.read_key(name=BRANCH_KEK, mount_point=self._mount)
            return True

        try:
            return await self._call("health", op)
        except KmsUnavailable:
            return False


class TransitKeyAdmin:
    """Rotation and retirement of transit keys with a key admin's own token (policy
    `key-admin`: rotate and config, never use a key). The service's token cannot do
    either; the operator's token is never the service's.
    """

    def __init__(self, addr: str, token: str, *, mount: str, cacert: str | None = None) -> None:
        self._client = hvac.Client(url=addr, token=token, verify=cacert or True, timeout=10)
        self._mount = mount

    def _run(self, operation: str, fn: Callable[[], T]) -> T:
        _calls.add(1, {"operation": operation})
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - fail closed, naming only the class
            _failures.add(1, {"operation": operation, "error": type(exc).__name__})
            log.error("kms_call_failed", operation=operation, error=type(exc).__name__)
            raise KmsUnavailable() from None

    async def rotate(self, key_name: str) -> int:
        """A new latest version; returns it."""

        def op() -> int:
            self._client.secrets.transit.rotate_key(name=key_name, mount_point=self._mount)
            r = self._client.secrets.transit.read_key(name=key_name, mount_point=self._mount)
            return int(r["data"]["latest_version"])

        return await asyncio.to_thread(self._run, "rotate", op)

    async def set_min_decryption_version(self, key_name: str, version: int) -> None:
        def op() -> None:
            self._client.secrets.transit.update_key_configuration(
                name=key_name, min_decryption_version=version, mount_point=self._mount
            )

        await asyncio.to_thread(self._run, "config", op)


_KV_UPGRADE_ATTEMPTS: Final = 100


def setup_transit(client: hvac.Client, mount: str = "transit") -> list[str]:
    """Enable transit and create the service's keys (admin token required; idempotent).

    Used by `vault-service vault-setup`, the dev stack and the tests; production runs
    the same through infra/openbao/init.sh with an operator's token.
    """
    created: list[str] = []
    mounts = client.sys.list_mounted_secrets_engines()["data"]
    if f"{mount}/" not in mounts:
        client.sys.enable_secrets_engine("transit", path=mount)
    if f"{ANCHOR_MOUNT}/" not in mounts:
        client.sys.enable_secrets_engine("kv", path=ANCHOR_MOUNT, options={"version": "2"})
    for attempt in range(_KV_UPGRADE_ATTEMPTS):
        try:
            client.secrets.kv.v2.read_secret_version(
                path=ANCHOR_PATH, mount_point=ANCHOR_MOUNT, raise_on_deleted_version=True
            )
        except hvac.exceptions.InvalidPath:
            # Created empty by the operator: the service may update it, never create it.
            client.secrets.kv.v2.create_or_update_secret(
                path=ANCHOR_PATH, secret={}, cas=0, mount_point=ANCHOR_MOUNT
            )
            created.append(f"{ANCHOR_MOUNT}/{ANCHOR_PATH}")
        except hvac.exceptions.InvalidRequest as exc:
            # A kv-v2 mount just enabled on persistent storage upgrades itself for a
            # moment and refuses reads meanwhile ("Upgrading from non-versioned to
            # versioned data"): wait for it, a bounded number of times.
            if "Upgrading" not in str(exc) or attempt == _KV_UPGRADE_ATTEMPTS - 1:
                raise
            time.sleep(0.1)
            continue
        break
    for name, key_type in SERVICE_KEYS.items():
        try:
            client.secrets.transit.read_key(name=name, mount_point=mount)
        except hvac.exceptions.InvalidPath:
            client.secrets.transit.create_key(
                name=name, key_type=key_type, exportable=False, mount_point=mount
            )
            created.append(name)
    return created


def setup_transit_as(addr: str, token: str, *, cacert: str | None, mount: str) -> list[str]:
    """`setup_transit` on an operator's own session (their address, token and CA)."""
    return setup_transit(hvac.Client(url=addr, token=token, verify=cacert or True), mount)
