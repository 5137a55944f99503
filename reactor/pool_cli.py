"""`at-rund pool status|warm|drain`: talk to the running server's admin routes on loopback."""

from __future__ import annotations

import argparse
import json
from typing import Any

import httpx

from reactor.api.admin import read_admin_token
from reactor.config import Config


def add_pool_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]", common: argparse.ArgumentParser,
                      handler_for: Any) -> None:
    pool = sub.add_parser("pool", help="the running server's sandbox pool", description="the sandbox pool")
    pool_sub = pool.add_subparsers(dest="pool_command", metavar="COMMAND")
    pool_sub.required = True
    status = pool_sub.add_parser("status", parents=[common], help="warm, busy and idle instances per runtime/bundle")
    status.set_defaults(handler=handler_for("status"))
    warm = pool_sub.add_parser("warm", parents=[common], help="pre-warm a runtime or a bundle")
    target = warm.add_mutually_exclusive_group()
    target.add_argument("--runtime", help="runtime name (default deno)")
    target.add_argument("--bundle", metavar="AT_URI", help="a dev.atrun.bundle record")
    warm.add_argument("--count", type=int, default=1)
    warm.set_defaults(handler=handler_for("warm"))
    drain = pool_sub.add_parser("drain", parents=[common], help="stop taking work and finish in-flight calls")
    drain.add_argument("--timeout", type=float, default=30.0)
    drain.set_defaults(handler=handler_for("drain"))


def call_pool(config: Config, action: str, args: argparse.Namespace) -> dict[str, Any]:
    token = read_admin_token(config.home)
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
    url = f"http://{host}:{config.port}/admin/pool/{action}"
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(timeout=120) as http:
        if action == "status":
            response = http.get(url, headers=headers)
        else:
            body = {k: v for k, v in vars(args).items() if k in ("runtime", "bundle", "count", "timeout") and v}
            response = http.post(url, headers=headers, json=body)
    payload = response.json()
    if response.status_code != 200:
        raise RuntimeError(f"{payload.get('error')}: {payload.get('message')}")
    return payload


def print_json(payload: dict[str, Any]) -> None:
    print(json.dumps(payload, indent=2, sort_keys=True))
