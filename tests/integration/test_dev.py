"""`vault-service dev`, the first of README's two commands, as someone trying the
service runs it: its own embedded PostgreSQL and OpenBao in a fresh data directory,
demo accounts and youth, the API up; then the analyst it seeds asks for last year's
statistics (the demo youth entered over the last 18 months, and the service's own
first rebuild seals the closed year) and a counsellor reads their caseload."""

from __future__ import annotations

import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from vault_service.dev import embedded as devstack

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "vault-service")


def _env_of(data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    for line in (data_dir / "env").read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0]
    return env


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [CLI, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_dev_serves_demo_data_and_last_years_statistics() -> None:
    port = devstack.free_port()
    with tempfile.TemporaryDirectory(prefix="vault-service-dev-") as tmp:
        data_dir = Path(tmp) / "dev"
        log_path = Path(tmp) / "dev.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_SERVICE_")}
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [CLI, "dev", "--data-dir", str(data_dir), "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            with httpx.Client(base_url=base, timeout=10) as http:
                while True:
                    assert proc.poll() is None, log_path.read_text()[-4000:]
                    assert time.monotonic() < deadline, log_path.read_text()[-4000:]
                    try:
                        if http.get("/health/ready").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    time.sleep(0.5)
                cli_env = _env_of(data_dir)
                accounts = json.loads(_cli(cli_env, "accounts", "list", "--json"))
                by_role: dict[str, list[dict[str, str]]] = {}
                for account in (a for a in accounts if a["state"] == "active"):
                    by_role.setdefault(account["role"], []).append(account)
                assert {"counsellor", "supervisor", "admin", "auditor", "analyst"} <= set(by_role)

                counsellor = by_role["counsellor"][0]
                token = _cli(cli_env, "tokens", "issue", "--subject", counsellor["id"]).strip()
                r = http.get(
                    "/v1/caseload",
                    headers={"Authorization": f"Bearer {token}", "X-Purpose": "follow_up"},
                )
                assert r.status_code == 200, r.text
                assert r.json()["items"], "the demo counsellor has youth"

                analyst = by_role["analyst"][0]
                token = _cli(cli_env, "tokens", "issue", "--subject", analyst["id"]).strip()
                headers = {"Authorization": f"Bearer {token}", "X-Purpose": "statistics"}
                last_year = datetime.datetime.now(datetime.UTC).year - 1
                while True:  # the service's first round seals last year soon after start
                    r = http.get("/v1/stats", params={"group_by": "region,sex"}, headers=headers)
                    if r.status_code != 409:
                        break
                    assert time.monotonic() < deadline, r.text
                    time.sleep(0.5)
                assert r.status_code == 200, r.text
                doc = r.json()
                assert (doc["since"], doc["until"]) == (f"{last_year}-01", f"{last_year}-12")
                [total] = [c for c in doc["cells"] if c["region"] == "*" and c["sex"] == "*"]
                assert total["count"] >= 10, "demo youth entered last year"
                assert {c["region"] for c in doc["cells"]} >= {"Corse", "Île-de-France", "*"}
                for cell in doc["cells"]:
                    assert cell["count"] is None or cell["count"] == 0 or cell["count"] >= 10
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
