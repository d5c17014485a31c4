"""Account state and token revocation, checked on every request.

The state of an account (and whether a token id is revoked) is read from
PostgreSQL and cached for at most `account_cache_seconds`. Every process also
LISTENs on `vault_service_accounts`: a suspension, role change or revocation
NOTIFYs the account id and every replica drops its cached entry at once. While
the listener connection is down the cache is bypassed (fail closed: correct and
slower, never stale).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import asyncpg
import structlog

from vault_service.auth.oidc import ExternalClaims, external_actor_id
from vault_service.auth.permissions import Role, scopes_for
from vault_service.auth.principal import Principal, VerifiedActor
from vault_service.auth.tokens import Claims
from vault_service.errors import Unauthenticated

log = structlog.get_logger(__name__)

CHANNEL: Final = "vault_service_accounts"
SELECT_ACCOUNT_STATE: Final = """
SELECT a.state, a.role, a.structure_id, a.tokens_valid_after, a.activated_at,
       EXISTS (SELECT 1 FROM revoked_tokens r WHERE r.jti = $2) AS revoked
FROM accounts a WHERE a.id = $1
"""
SELECT_LINKED_ACCOUNT: Final = """
SELECT account_id FROM external_identities WHERE issuer = $1 AND subject = $2
"""


@dataclass(frozen=True, slots=True)
class _State:
    state: str
    role: str
    structure_id: uuid.UUID | None
    tokens_valid_after: float
    revoked: bool
    activated_at: float
    fetched_at: float


class AccountGate:
    def __init__(
        self, pool: asyncpg.Pool, dsn: str, cache_seconds: float, restriction_seconds: float = 0
    ) -> None:
        self._pool = pool
        self._restriction = restriction_seconds
        self._dsn = dsn
        self._ttl = cache_seconds
        self._cache: dict[tuple[uuid.UUID, uuid.UUID], _State] = {}
        # (issuer, subject) -> account: dropped with the account's NOTIFY (an unlink).
        self._links: dict[tuple[str, str], uuid.UUID] = {}
        self._link_generation = 0  # bumped by every account NOTIFY
        # Bumped by every NOTIFY for an account: a state read while a change was being
        # announced is used for that one request but never cached.
        self._generation: dict[uuid.UUID, int] = {}
        self._listener: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._ttl > 0:
            self._task = asyncio.create_task(self._listen_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()

    async def _listen_forever(self) -> None:
        while True:
            try:
                conn = await asyncpg.connect(self._dsn)
                closed = asyncio.Event()
                conn.add_termination_listener(lambda _conn, ev=closed: ev.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                self._listener = conn
                self._cache.clear()  # anything cached while deaf may be stale
                self._links.clear()
                await closed.wait()
            except asyncio.CancelledError:
                raise
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("account_listener_down", error=type(exc).__name__)
            self._listener = None
            self._cache.clear()
            self._links.clear()
            await asyncio.sleep(1)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        text = str(payload)
        if text.startswith("jti:"):
            # One token revoked, its account perhaps unknown: drop its cached states.
            try:
                jti = uuid.UUID(text[4:])
            except ValueError:
                return
            for key in [k for k in self._cache if k[1] == jti]:
                self._generation[key[0]] = self._generation.get(key[0], 0) + 1
                del self._cache[key]
            return
        try:
            account = uuid.UUID(text)
        except ValueError:
            return
        self._generation[account] = self._generation.get(account, 0) + 1
        self._link_generation += 1
        for key in [k for k in self._cache if k[0] == account]:
            del self._cache[key]
        for link in [k for k, v in self._links.items() if v == account]:
            del self._links[link]

    def _caching(self) -> bool:
        return self._ttl > 0 and self._listener is not None and not self._listener.is_closed()

    async def _state(self, account_id: uuid.UUID, jti: uuid.UUID) -> _State | None:
        now = time.monotonic()
        key = (account_id, jti)
        cached = self._cache.get(key)
        if cached is not None and now - cached.fetched_at < self._ttl and self._caching():
            return cached
        generation = self._generation.get(account_id, 0)
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(SELECT_ACCOUNT_STATE, account_id, jti)
        if row is None:
            return None
        state = _State(
            row["state"],
            row["role"],
            row["structure_id"],
            row["tokens_valid_after"].timestamp(),
            bool(row["revoked"]),
            row["activated_at"].timestamp() if row["activated_at"] else 0.0,
            now,
        )
        if self._caching() and self._generation.get(account_id, 0) == generation:
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = state
        return state

    async def principal(self, claims: Claims) -> Principal:
        state = await self._state(claims.sub, claims.jti)
        if state is None or state.state != "active":
            raise Unauthenticated(reason="account_inactive")
        if state.revoked or claims.iat <= state.tokens_valid_after:
            raise Unauthenticated(reason="token_revoked")
        if state.role != claims.role or state.structure_id != claims.structure:
            # The role or structure changed since issue: the token no longer describes
            # the account, so it is refused rather than trusted for either side.
            raise Unauthenticated(reason="token_stale")
        return Principal(
            account_id=claims.sub,
            role=Role(state.role),
            structure_id=state.structure_id,
            scopes=frozenset(claims.scope.split()),
            jti=claims.jti,
            expires_at=claims.exp,
            restricted=time.time() < state.activated_at + self._restriction,
            # Our own tokens are issued to an account by an admin's command or a
            # front-end's server trusted as such, never against a bare password.
            mfa=True,
        )

    async def _linked(self, issuer: str, subject: str) -> uuid.UUID | None:
        key = (issuer, subject)
        if self._caching():
            found = self._links.get(key)
            if found is not None:
                return found
        generation = self._link_generation
        async with self._pool.acquire() as conn:
            account: uuid.UUID | None = await conn.fetchval(SELECT_LINKED_ACCOUNT, issuer, subject)
        # Only links are cached (never "not linked"), and not while a change was announced.
        if account is not None and self._caching() and self._link_generation == generation:
            if len(self._links) > 100_000:
                self._links.clear()
            self._links[key] = account
        return account

    async def external_actor(self, issuer: str, subject: str, jti: uuid.UUID) -> VerifiedActor:
        """Whom a refusal of a signed external token names: its linked account, or the
        external identity itself."""
        account_id = await self._linked(issuer, subject)
        if account_id is None:
            return VerifiedActor(external_actor_id(issuer, subject), None, None, jti)
        state = await self._state(account_id, jti)
        return VerifiedActor(
            account_id, state.role if state else None, state.structure_id if state else None, jti
        )

    async def external_principal(
        self, claims: ExternalClaims, mfa_of: Callable[[ExternalClaims], bool]
    ) -> Principal:
        """The account an external identity is linked to, as a principal; a refusal
        (ExternalRefusal) names the actor it is logged under. The role,
        structure and scopes are the account's: an external token carries none of ours."""
        account_id = await self._linked(claims.issuer, claims.subject)
        jti = claims.token_id()
        if account_id is None:
            actor = VerifiedActor(external_actor_id(claims.issuer, claims.subject), None, None, jti)
            raise ExternalRefusal("identity_not_linked", actor)
        state = await self._state(account_id, jti)
        actor = VerifiedActor(
            account_id,
            state.role if state else None,
            state.structure_id if state else None,
            jti,
        )
        if state is None or state.state != "active":
            raise ExternalRefusal("account_inactive", actor)
        if state.revoked or claims.iat <= state.tokens_valid_after:
            raise ExternalRefusal("token_revoked", actor)
        try:
            mfa = mfa_of(claims)
        except Unauthenticated as exc:
            raise ExternalRefusal(exc.reason, actor) from None
        role = Role(state.role)
        return Principal(
            account_id=account_id,
            role=role,
            structure_id=state.structure_id,
            scopes=frozenset(str(p) for p in scopes_for(role)),
            jti=jti,
            expires_at=claims.exp,
            restricted=time.time() < state.activated_at + self._restriction,
            mfa=mfa,
        )


class ExternalRefusal(Unauthenticated):
    """An external token refused after its signature verified, with its actor."""

    def __init__(self, reason: str, actor: VerifiedActor) -> None:
        super().__init__(reason=reason)
        self.actor = actor
