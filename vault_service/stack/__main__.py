"""`python -m vault_service.stack up|down|status` (what `make stack` / `make stack-down` run)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vault_service.errors import ConfigurationError
from vault_service.stack import REPLICAS, alive, attach, start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vault_service.stack")
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--state-dir", type=Path, default=Path(".stack"))
    parser.add_argument(
        "--proxy-port", type=int, default=8443, help="the proxy's port (compose: 8443)"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="VAULT_SERVICE_X=VALUE",
        help="a setting of the replicas beyond the compose environment (repeatable)",
    )
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("VAULT_SERVICE_"):
            parser.error(f"--env wants VAULT_SERVICE_NAME=VALUE, not {key!r}")
        overrides[key] = value
    try:
        if args.action == "up":
            stack = start(args.state_dir, proxy_port=args.proxy_port, replica_overrides=overrides)
            s = stack.state
            print(f"proxy       {s.proxy_url}  (CA: {s.proxy_ca})")
            for i, name in enumerate(REPLICAS):
                print(f"{name:<11} {s.replica_url(i)}  (logs/{name}.log)")
            print(f"openbao     {s.bao_addr}  (CA: {s.ca})")
            print(f"postgres    localhost:{s.ports.postgres}  (verify-full, CA: {s.ca})")
            print(f"state       {s.root}")
            print(f"try:        curl --cacert {s.proxy_ca} {s.proxy_url}/health/ready")
            print("stop:       make stack-down")
            return 0
        stack = attach(args.state_dir)
        if args.action == "down":
            stack.down()
            print("stack stopped")
        else:
            pids = stack.state.pids.items()
            print(json.dumps({name: alive(pid) for name, pid in pids}, indent=2))
    except (ConfigurationError, FileNotFoundError) as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
