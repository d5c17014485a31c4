"""Fault campaign on the stack (tests/stack/conftest.py): each fault under mixed load
through Caddy, then the checks of vault_service.stack.load.check: no acknowledged write
lost, no data answer without its access-log entry, no partial record, no orphan key,
and `vault-service audit verify` over the whole log. Each test prints its figures."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import ssl
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest

from tests.stack.conftest import BRANCH_KEY_TTL
from vault_service.stack import REPLICAS, Stack
from vault_service.stack.load import (
    PURPOSE,
    Accounts,
    Load,
    Tally,
    Verdict,
    check,
    proxy_client,
    record_body,
    replica_rss,
)

pytestmark = pytest.mark.stack
LB_TRY_SECONDS = 5
"""Caddy's lb_try_duration (infra/proxy/Caddyfile): how long it holds a request while
no replica is in rotation."""


def report(name: str, verdict: Verdict, tallies: list[Tally], **extra: object) -> None:
    figures = {
        "fault": name,
        "requests": sum(t.requests for t in tallies),
        "statuses": dict(sum((t.statuses for t in tallies), start=collections.Counter())),
        "error_codes": dict(sum((t.codes for t in tallies), start=collections.Counter())),
        "acknowledged_writes": verdict.acknowledged,
        "lost": verdict.lost,
        "records": verdict.records_in_structure,
        "unreadable": verdict.unreadable,
        "without_index": verdict.without_index,
        "without_log_entry": verdict.without_entry,
        "branch_keys": verdict.branch_keys,
        "data_answers": verdict.data_answers,
        "data_answers_unlogged": verdict.unlogged_answers,
        "log_size_verified": verdict.log_size,
        **extra,
    }
    print("\nFAULT " + json.dumps(figures, default=str))


def assert_clean(verdict: Verdict) -> None:
    assert verdict.lost == 0, verdict
    assert verdict.unlogged_answers == 0, verdict
    assert verdict.unreadable == 0, verdict
    assert verdict.without_index == 0, verdict
    assert verdict.without_entry == 0, verdict
    assert verdict.branch_keys == 1, verdict
    assert verdict.verify_exit == 0, verdict.verify_output
    assert verdict.acknowledged > 0


async def replica_ready(stack: Stack, index: int) -> bool:
    async with httpx.AsyncClient(timeout=3) as http:
        try:
            r = await http.get(stack.state.replica_url(index) + "/health/ready")
        except httpx.TransportError:
            return False
        return r.status_code == 200


async def wait_for(predicate: Callable[[], Awaitable[bool]], limit: float, what: str) -> float:
    t0 = time.monotonic()
    while not await predicate():
        assert time.monotonic() - t0 < limit, f"{what} did not happen in {limit} s"
        await asyncio.sleep(0.25)
    return time.monotonic() - t0


def after(tally: Tally, t: float) -> list[tuple[float, int, str]]:
    return [e for e in tally.timeline if e[0] >= t]


# --- PostgreSQL ---------------------------------------------------------------------------
async def test_postgres_restart_under_load(deployment: Stack, accounts: Accounts) -> None:
    """PostgreSQL crashes (immediate shutdown: recovery from WAL) and comes back; the
    replicas reconnect by themselves, with the same process ids."""
    pids = {n: deployment.state.pids[n] for n in REPLICAS}
    async with Load(deployment, accounts) as load:
        await asyncio.sleep(4)
        down_at = time.monotonic()
        deployment.stop_postgres("immediate")
        await asyncio.sleep(3)
        deployment.start_postgres()
        up_at = time.monotonic()
        recovered = await wait_for(
            lambda: _all_ready(deployment), 60, "both replicas ready after the restart"
        )
        await asyncio.sleep(5)
    assert {n: deployment.state.pids[n] for n in REPLICAS} == pids  # no restart
    tally = load.tally
    # Fail closed while the database is away: no data answer comes back then, and
    # every refusal is a 5xx (503 from Caddy when both replicas are out of rotation).
    # (Sent during the outage but answered after it is fine: Caddy holds a request up
    # to lb_try_duration, 5 s, waiting for a healthy replica.)
    during = [e for e in tally.timeline if down_at <= e[0] and e[3] < up_at]
    assert not [e for e in during if e[1] in (200, 201)], during
    sent_during = [e for e in tally.timeline if down_at <= e[0] < up_at]
    # Refusals say why: 503 database_unavailable from a replica (never a 500
    # internal_error), or Caddy's own 502/503 once it has no replica in rotation.
    refusals = collections.Counter((e[1], e[2]) for e in sent_during if e[1] not in (200, 201))
    assert refusals, "no request met the outage"
    assert set(refusals) <= {(503, "database_unavailable"), (503, ""), (502, "")}, refusals
    assert [e for e in after(tally, up_at + recovered) if e[1] in (200, 201)], "no recovery"
    verdict = await check(deployment, accounts, [tally])
    report(
        "postgres restart (immediate)",
        verdict,
        [tally],
        answered_during_outage=len(during),
        sent_during_outage=len(sent_during),
        sent_during_outage_served_after=sum(1 for e in sent_during if e[1] in (200, 201)),
        seconds_to_ready=round(recovered, 1),
    )
    assert_clean(verdict)


async def _all_ready(stack: Stack) -> bool:
    return all([await replica_ready(stack, i) for i in range(len(REPLICAS))])


# --- OpenBao --------------------------------------------------------------------------------
async def test_openbao_stopped_then_sealed(deployment: Stack, accounts: Accounts) -> None:
    """OpenBao stops: each replica serves from its cached keys until their TTL, then
    answers 503 kms_unavailable; a restarted OpenBao is sealed (still 503) until
    openbao-init unseals it, and the replicas serve again without a restart. Then the
    same with `bao operator seal` on a running OpenBao."""
    pids = {n: deployment.state.pids[n] for n in REPLICAS}
    direct = deployment.state.replica_url(0)
    figures: dict[str, object] = {}
    tallies: list[Tally] = []
    for fault in ("stopped", "sealed"):
        # Straight to a replica (what the service answers) and through Caddy (what a
        # client sees once the health checks take the replicas out of rotation).
        async with (
            Load(deployment, accounts, base=direct, write_share=0.2, seed=2) as at_replica,
            Load(deployment, accounts, write_share=0.2, seed=3) as at_proxy,
        ):
            await asyncio.sleep(3)  # keys cached
            if fault == "stopped":
                deployment.stop_openbao()
            else:
                deployment.seal_openbao()
            # From the moment OpenBao stopped answering: a key fetched while the stop
            # or the seal was under way is good for its whole TTL.
            fault_at = time.monotonic()
            await asyncio.sleep(BRANCH_KEY_TTL + 12)
            # A key whose load was answered just before the fault is cached from the
            # moment the replica's event loop gets to it: on this busy machine, up to a
            # few seconds later.
            expired_at = fault_at + BRANCH_KEY_TTL + 5
            if fault == "stopped":
                deployment.start_openbao()  # comes back sealed (Shamir seal)
                await asyncio.sleep(4)
            sealed_until = time.monotonic()
            deployment.openbao_init()  # what `docker compose up -d` does: unseal
            unsealed_at = time.monotonic()
            recovered = await wait_for(
                lambda: _all_ready(deployment), 60, "replicas ready after the unseal"
            )
            await asyncio.sleep(6)  # Caddy's health checks put them back
        served_cached = [
            e for e in at_replica.tally.timeline if fault_at <= e[0] < expired_at and e[1] == 200
        ]
        late = [e for e in at_replica.tally.timeline if expired_at <= e[0] and e[3] < sealed_until]
        assert served_cached, f"{fault}: nothing served from cached keys"
        assert late, f"{fault}: no request after the keys' TTL"
        # Past the TTL: nothing but 503 kms_unavailable from the replica itself.
        seen = collections.Counter((e[1], e[2]) for e in late)
        offsets = [round(e[0] - fault_at, 2) for e in late if e[1] != 503]
        assert set(seen) == {(503, "kms_unavailable")}, (fault, seen, offsets)
        # Through the proxy: never a data answer past the TTL, only 503s. Caddy holds a
        # request up to lb_try_duration (5 s) while no replica is in rotation, so the
        # proxy's few workers send a request about every 5 s: what counts is an answer
        # that came back past the TTL, to a request sent early enough (5 s of holding,
        # 1 s of margin) to be answered before the unseal. Requests sent past the TTL
        # and answered before the unseal missed that window depending on the phase of
        # the 5 s cycle (the test failed on timing alone in CI).
        late_proxy = [
            e
            for e in at_proxy.tally.timeline
            if expired_at <= e[3] and e[0] < sealed_until - LB_TRY_SECONDS - 1
        ]
        seen = collections.Counter((e[1], e[2]) for e in late_proxy)
        assert late_proxy and all(e[1] in (502, 503) for e in late_proxy), seen
        # Recovered, through the proxy, without restarting a replica.
        back = [
            e for e in at_proxy.tally.timeline if e[0] > unsealed_at + recovered and e[1] == 200
        ]
        assert back, f"{fault}: no data answer through the proxy after the unseal"
        assert {n: deployment.state.pids[n] for n in REPLICAS} == pids
        # Through the proxy, Caddy's health checks take both replicas out as soon as
        # their readiness sees OpenBao gone (docs/reliability.md, "Capacity": a known weakness).
        proxy_after = [e for e in at_proxy.tally.timeline if fault_at <= e[0] < sealed_until]
        first_refusal = min((e[0] for e in proxy_after if e[1] >= 500), default=None)
        figures[fault] = {
            "proxy_served_after_fault": sum(1 for e in proxy_after if e[1] in (200, 201)),
            "proxy_first_refusal_after_s": (
                round(first_refusal - fault_at, 1) if first_refusal is not None else None
            ),
            "served_from_cache_after_fault": len(served_cached),
            "refused_after_ttl": len(late),
            "proxy_refusals_after_ttl": len(late_proxy),
            "seconds_to_ready_after_unseal": round(recovered, 1),
        }
        tallies += [at_replica.tally, at_proxy.tally]
    verdict = await check(deployment, accounts, tallies)
    report("openbao stopped, then sealed", verdict, tallies, **figures)
    assert_clean(verdict)


# --- a replica killed ---------------------------------------------------------------------
async def test_replica_killed_mid_write(deployment: Stack, accounts: Accounts) -> None:
    """kill -9 of app1 (granian and its worker) while every worker writes: the other
    replica keeps serving through Caddy; no partial record, no orphan key; the log has
    neither gap nor duplicate."""
    async with Load(deployment, accounts, write_share=1.0, seed=4) as load:
        await asyncio.sleep(4)
        killed_at = time.monotonic()
        deployment.kill_replica(0)
        await asyncio.sleep(10)
    tally = load.tally
    later = after(tally, killed_at + 2)
    created_after = [e for e in later if e[1] == 201]
    failed_after = [e for e in later if e[1] != 201]
    # Requests in flight on app1 when it died: Caddy answers 502 (they were never
    # acknowledged, and the checks below show that none left a partial record).
    failed_at_kill = [e for e in tally.timeline if e[1] != 201]
    deployment.start_replica(0)  # for the tests that follow
    assert created_after, "the surviving replica served nothing"
    # Caddy retries connection failures on the other replica (lb_try_duration). On this
    # overloaded machine a health probe of the survivor can time out (health_timeout
    # 2 s) and leave Caddy with no replica for a moment: at most 2% of the requests
    # after the kill may fail, and the figure is printed.
    assert len(failed_after) <= max(2, len(later) // 50), failed_after
    verdict = await check(deployment, accounts, [tally])
    report(
        "kill -9 of one replica",
        verdict,
        [tally],
        failed_around_the_kill=len(failed_at_kill),
        failed_after_the_kill=len(failed_after),
        created_after_kill=len(created_after),
    )
    assert_clean(verdict)


# --- slow clients and oversized bodies ----------------------------------------------------
async def _slow_header(stack: Stack) -> float:
    """Sends a request line and then one header byte a second: Caddy's read_header
    time-out (10 s) must close the connection. Returns how long it stayed open."""
    context = ssl.create_default_context(cafile=str(stack.state.proxy_ca))
    reader, writer = await asyncio.open_connection(
        "localhost", stack.state.ports.proxy, ssl=context, server_hostname="localhost"
    )
    t0 = time.monotonic()
    try:
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n")
        await writer.drain()
        while time.monotonic() - t0 < 40:
            writer.write(b"X")
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                data = await asyncio.wait_for(reader.read(1024), timeout=1)
                if data == b"" or data.startswith(b"HTTP/1.1 408"):
                    break
                if data:
                    break
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return time.monotonic() - t0


async def test_slow_clients_and_oversized_bodies(deployment: Stack, accounts: Accounts) -> None:
    """50 slow-header connections and 20 oversized bodies at once, while the load goes
    on: the load sees no error, Caddy closes the slow connections on its time-out,
    bodies over the proxy's cap get 413 from Caddy, bodies over the service's cap 413
    payload_too_large, and neither replica's memory moves by more than 64 MiB."""
    token = next(iter(accounts.counsellors.values()))
    headers = {"Authorization": f"Bearer {token}", **PURPOSE, "Content-Type": "application/json"}
    before = replica_rss(deployment)
    async with Load(deployment, accounts, seed=5) as load:
        await asyncio.sleep(2)
        baseline = Tally(latencies=list(load.tally.latencies))
        slow = [asyncio.create_task(_slow_header(deployment)) for _ in range(50)]
        async with proxy_client(deployment, timeout=60) as api:
            filler = json.dumps(record_body(load.rng))[:-1]
            over_proxy = (filler + ', "x": "' + "a" * (2 * 2**20) + '"}').encode()
            over_service = (filler + ', "x": "' + "a" * (512 * 2**10) + '"}').encode()
            answers = await asyncio.gather(
                *(
                    api.post("/v1/records", content=body, headers=headers)
                    for body in [over_proxy] * 10 + [over_service] * 10
                ),
                return_exceptions=True,
            )
        held = await asyncio.gather(*slow)
        during_start = len(baseline.latencies)
        await asyncio.sleep(1)
    tally = load.tally
    after_rss = replica_rss(deployment)
    statuses = [a.status_code if isinstance(a, httpx.Response) else repr(a) for a in answers]
    # Over Caddy's cap: 413 from Caddy, or 502 when Caddy had begun to stream the body
    # to a replica before it hit the cap (seen once in three runs; Caddy 2.6). Either
    # way nothing is stored (the checks below).
    assert set(statuses[:10]) <= {413, 502} and 413 in statuses[:10], statuses
    assert statuses[10:] == [413] * 10, statuses
    codes = {a.json().get("code") for a in answers[10:] if isinstance(a, httpx.Response)}
    assert codes == {"payload_too_large"}
    assert max(held) < 20, held  # read_header 10 s, plus scheduling on a busy machine
    errors = {k: n for k, n in tally.statuses.items() if not k.endswith(("200", "201"))}
    assert not errors and tally.transport_errors == 0, (errors, tally.transport_errors)
    growth = {n: (after_rss[n] - before[n]) / 2**20 for n in before}
    assert all(g < 64 for g in growth.values()), growth
    verdict = await check(deployment, accounts, [tally])
    lat = sorted(tally.latencies[during_start:]) or [0.0]
    base = sorted(baseline.latencies) or [0.0]
    report(
        "slow clients and oversized bodies",
        verdict,
        [tally],
        slow_connections=len(held),
        slow_connection_closed_after_s=round(max(held), 1),
        oversized_bodies=len(answers),
        oversized_statuses=dict(collections.Counter(statuses)),
        rss_growth_mib={n: round(g, 1) for n, g in growth.items()},
        p50_ms_before=round(base[len(base) // 2] * 1000, 1),
        p50_ms_during=round(lat[len(lat) // 2] * 1000, 1),
    )
    assert_clean(verdict)


def test_the_proxy_hold_the_tests_assume_is_the_caddyfiles() -> None:
    from pathlib import Path

    caddyfile = Path(__file__).parents[2] / "infra" / "proxy" / "Caddyfile"
    assert f"lb_try_duration {LB_TRY_SECONDS}s" in caddyfile.read_text()
