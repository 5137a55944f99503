"""`at-rund` command line. Errors go to stderr as one line; exit 2 for bad config or usage."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Coroutine, Sequence

from reactor.config import Config, ConfigError, default_config_path, load_config
from reactor.keys import KeyFileError, RunnerKeys, ensure_keys
from reactor.logs import configure_logging

EXIT_ERROR = 1
EXIT_USAGE = 2


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


def _load(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.config)
    except ConfigError as error:
        raise CliError(f"config error: {error}", EXIT_USAGE) from None


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.config).expanduser() if args.config else default_config_path()
    home = path.parent
    for sub in ("", "runtimes", "bundles", "keys"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(resources.files("reactor.defaults").joinpath("config.toml").read_text())
        print(f"wrote {path}")
    else:
        print(f"kept {path}")
    config = _load(args)
    created = ensure_keys(config.keys_dir)
    for key_file in created:
        print(f"generated {key_file}")
    if not created:
        print(f"kept keys in {config.keys_dir}")
    _print_keys(RunnerKeys.load(config.keys_dir))
    return 0


def _print_keys(keys: RunnerKeys) -> None:
    print(f"encryptionKey {keys.encryption_did_key}")
    print(f"signingKey    {keys.signing_did_key}")


def cmd_keys(args: argparse.Namespace) -> int:
    config = _load(args)
    try:
        keys = RunnerKeys.load(config.keys_dir)
    except KeyFileError as error:
        raise CliError(str(error)) from None
    if args.json:
        print(json.dumps({"encryptionKey": keys.encryption_did_key, "signingKey": keys.signing_did_key}))
    else:
        _print_keys(keys)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from reactor.daemon import Daemon

    config = _load(args)
    if args.port is not None:
        config = config.model_copy(update={"port": args.port})
    fmt = "console" if args.dev else config.observability.log_format
    configure_logging(fmt, config.observability.log_level)
    if not (config.keys_dir / "signing.secp256k1").exists():
        if not args.dev:
            raise CliError(f"no runner keys in {config.keys_dir}: run `at-rund init` first")
        ensure_keys(config.keys_dir)
    path = Path(args.config).expanduser() if args.config else None
    _run_loop(Daemon(config, dev=args.dev, config_path=path).run())
    return 0


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop when installed (faster sockets and timers on the hot paths), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def cmd_runtime_list(args: argparse.Namespace) -> int:
    from reactor.sandboxing import enabled_runtimes

    config = _load(args)
    rows = enabled_runtimes(config)
    if args.json:
        print(json.dumps([row.model_dump(mode="json") for row in rows]))
        return 0
    for row in rows:
        state = "available" if row.available else f"unavailable ({row.reason})"
        print(f"{row.name:<10} {row.source:<10} {', '.join(row.mime_types):<62} {state}")
    return 0


def cmd_access_list(args: argparse.Namespace) -> int:
    from reactor.follows import access_report
    from reactor.store import StoreError

    config = _load(args)
    try:
        report = asyncio.run(access_report(config))
    except StoreError as error:
        raise CliError(str(error)) from None
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print("\n".join(report.lines()))
    return 0


def _pool_handler(action: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        import httpx

        from reactor.pool_cli import call_pool, print_json

        config = _load(args)
        try:
            print_json(call_pool(config, action, args))
        except FileNotFoundError:
            raise CliError(f"no admin token in {config.home}: is `at-rund serve` running with this config?") from None
        except httpx.HTTPError as error:
            raise CliError(f"cannot reach the server on port {config.port}: {error}") from None
        except RuntimeError as error:
            raise CliError(str(error)) from None
        return 0

    return handler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="at-rund", description="Social cloud hosting for the AT Protocol.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="config file (default: ~/.at-rund/config.toml, or $AT_RUND_CONFIG)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, handler: Callable[[argparse.Namespace], int], help: str,
            parent: argparse._SubParsersAction = sub) -> argparse.ArgumentParser:  # type: ignore[type-arg]
        command = parent.add_parser(name, parents=[common], help=help, description=help)
        command.set_defaults(handler=handler)
        return command

    add("init", cmd_init, "create ~/.at-rund with a config, directories and the runner keys")
    serve = add("serve", cmd_serve, "run the reactor and its HTTP endpoint")
    serve.add_argument("--dev", action="store_true", help="readable logs, relaxed sandbox checks")
    serve.add_argument("--port", type=int, help="override the configured port")
    keys = add("keys", cmd_keys, "print the runner's public keys as did:key strings")
    keys.add_argument("--json", action="store_true")
    runtime = sub.add_parser("runtime", help="bundle runtimes", description="bundle runtimes")
    runtime_sub = runtime.add_subparsers(dest="runtime_command", metavar="COMMAND")
    runtime_sub.required = True
    runtime_list = add("list", cmd_runtime_list, "list runtimes and whether each is available here", runtime_sub)
    runtime_list.add_argument("--json", action="store_true")
    access = sub.add_parser("access", help="who may use this runner", description="who may use this runner")
    access_sub = access.add_subparsers(dest="access_command", metavar="COMMAND")
    access_sub.required = True
    access_list = add("list", cmd_access_list,
                      "print the effective access set and where each entry came from "
                      "(follows, allowlist, blocklist)", access_sub)
    access_list.add_argument("--json", action="store_true")
    from reactor.author_cli import add_author_commands
    from reactor.pool_cli import add_pool_commands

    add_author_commands(sub, common)
    add_pool_commands(sub, common, _pool_handler)
    return parser


def _version() -> str:
    from reactor import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except CliError as error:
        print(f"at-rund: {error}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
