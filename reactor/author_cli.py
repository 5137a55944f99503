"""Author-side commands: `seal` secrets for a runner, `grant` it write access, `verify` a result.

They talk to the network as an author would (the runner's PDS for its
declaration, the author's PDS for a session), never to a local at-rund store.
Passwords are read from the environment when possible and never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
from typing import Any, AsyncIterator, Awaitable

import httpx
import structlog
from atproto_crypto.verify import verify_signature
from pydantic import ValidationError

from reactor.config import ENV_PREFIX, ConfigError, load_config
from reactor.declaration import DeclarationError, fetch_declaration
from reactor.identity import IdentityError, IdentityResolver
from reactor.logs import configure_logging
from reactor.records import GRANT_NSID, RESULT_NSID, Grant, Invocation, Result, SealedSecret, now_datetime
from reactor.records import signing_payload
from reactor.sealed import Scrubber, SecretsError, seal_json, seal_secrets
from reactor.store import Store
from reactor.writers.repo import at_uri, get_record
from reactor.writers.session import jwt_claims
from reactor.xrpc import XrpcClient, XrpcError

PASSWORD_ENV = ENV_PREFIX + "AUTHOR_PASSWORD"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_APP_PASSWORD_SCOPES = frozenset({"com.atproto.appPass", "com.atproto.appPassPrivileged"})


class Failed(Exception):
    """A one-line reason for exit 1 (or `code`)."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def add_author_commands(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
                        common_parent: argparse.ArgumentParser) -> None:
    """Register `seal`, `grant` and `verify` on `at-rund`'s subparsers (each sets `handler`)."""
    def add(name: str, handler: Any, help: str) -> argparse.ArgumentParser:
        command = subparsers.add_parser(name, parents=[common_parent], help=help, description=help)
        command.set_defaults(handler=handler)
        return command

    def runner_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--runner", required=True, metavar="DID", help="the runner's DID")
        command.add_argument("--encryption-key", metavar="DID_KEY",
                             help="the runner's encryptionKey (skips reading its dev.atrun.runner/self)")
        command.add_argument("--plc-url", help="PLC directory for DID resolution (default: config atproto.plc_url)")

    seal = add("seal", cmd_seal, "seal secrets to a runner; prints a bundle `secrets` entry (JSON)")
    runner_options(seal)
    seal.add_argument("values", nargs="+", metavar="NAME=VALUE",
                      help="a secret; a bare NAME takes its value from the environment variable NAME")

    grant = add("grant", cmd_grant, "let a runner write results into your repo (dev.atrun.grant/<runner DID>)")
    runner_options(grant)
    grant.add_argument("--pds", required=True, metavar="URL", help="your PDS")
    grant.add_argument("--identifier", required=True, metavar="HANDLE_OR_DID", help="your handle or DID")
    grant.add_argument("--password", help=f"an app password you created for this runner (or ${PASSWORD_ENV})")

    verify = add("verify", cmd_verify, "check a dev.atrun.result's signature and the records it names")
    verify.add_argument("uri", metavar="AT_URI", help="at://<did>/dev.atrun.result/<rkey>")
    verify.add_argument("--plc-url", help="PLC directory for DID resolution (default: config atproto.plc_url)")


def _run(args: argparse.Namespace, work: Awaitable[str | None]) -> int:
    if not structlog.is_configured():  # keep stdout for the command's own output
        configure_logging("console", "warning")
    try:
        line = asyncio.run(work)  # type: ignore[arg-type]
    except Failed as error:
        name = getattr(args, "command", None)
        print(f"at-rund {name}: {error}" if name else f"at-rund: {error}", file=sys.stderr)
        return error.code
    if line:
        print(line)
    return EXIT_OK


def cmd_seal(args: argparse.Namespace) -> int:
    return _run(args, _seal(args))


def cmd_grant(args: argparse.Namespace) -> int:
    return _run(args, _grant(args))


def cmd_verify(args: argparse.Namespace) -> int:
    return _run(args, _verify(args))


# ---------------------------------------------------------------------------- plumbing


def _plc_url(args: argparse.Namespace) -> str:
    if getattr(args, "plc_url", None):
        return str(args.plc_url)
    env = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}  # not a config key
    try:
        return load_config(getattr(args, "config", None), env).atproto.plc_url
    except ConfigError as error:
        raise Failed(f"config error: {error}", EXIT_USAGE) from None


class _Net:
    """An XRPC client and an identity resolver with a throwaway in-memory cache."""

    def __init__(self, xrpc: XrpcClient, identity: IdentityResolver) -> None:
        self.xrpc = xrpc
        self.identity = identity

    async def pds(self, did: str) -> str:
        try:
            pds = (await self.identity.resolve(did)).pds
        except IdentityError as error:
            raise Failed(str(error)) from None
        if not pds:
            raise Failed(f"{did} has no PDS endpoint")
        return pds

    async def encryption_key(self, args: argparse.Namespace) -> str:
        if args.encryption_key:
            return str(args.encryption_key)
        try:
            return (await fetch_declaration(self.xrpc, self.identity, args.runner)).encryption_key
        except (DeclarationError, IdentityError) as error:
            raise Failed(f"runner's encryption key: {error}") from None


@contextlib.asynccontextmanager
async def _network(plc_url: str) -> AsyncIterator[_Net]:
    store = await Store.open(":memory:")
    xrpc = XrpcClient()
    try:
        yield _Net(xrpc, IdentityResolver(store, plc_url))
    except (XrpcError, httpx.HTTPError) as error:
        raise Failed(f"network: {str(error)[:200] or type(error).__name__}") from None
    finally:
        await xrpc.aclose()
        await store.close()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


# ---------------------------------------------------------------------------- seal


def _secret_values(pairs: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            if name not in os.environ:
                raise Failed(f"{name}: no '=' and no environment variable of that name", EXIT_USAGE)
            value = os.environ[name]
        values[name] = value
    return values


async def _seal(args: argparse.Namespace) -> str:
    values = _secret_values(args.values)
    key = args.encryption_key
    if not key:
        async with _network(_plc_url(args)) as net:
            key = await net.encryption_key(args)
    try:
        entry = SealedSecret(runner=args.runner, box=seal_secrets(key, values))
    except (SecretsError, ValueError) as error:
        # pydantic's message would quote the input; keep only the first line's gist
        raise Failed(_first_line(error, Scrubber(values)), EXIT_USAGE) from None
    return json.dumps(entry.to_json())


def _first_line(error: Exception, scrub: Scrubber) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "input"
        return scrub(f"{where}: {first['msg']}")
    return scrub(str(error).splitlines()[0] if str(error) else type(error).__name__)


# ---------------------------------------------------------------------------- grant


async def _grant(args: argparse.Namespace) -> str:
    password = args.password or os.environ.get(PASSWORD_ENV)
    if not password:
        raise Failed(f"an app password is required (--password or ${PASSWORD_ENV})", EXIT_USAGE)
    scrub = Scrubber([password])
    needs_plc = not args.encryption_key
    async with _network(_plc_url(args) if needs_plc else "http://plc.invalid") as net:
        key = await net.encryption_key(args)
        try:
            session = await net.xrpc.procedure(args.pds, "com.atproto.server.createSession",
                                               {"identifier": args.identifier, "password": password})
        except XrpcError as error:
            raise Failed(scrub(f"login failed: {error.error} ({error.status})")) from None
        if not isinstance(session, dict) or not isinstance(session.get("did"), str) \
                or not isinstance(session.get("accessJwt"), str):
            raise Failed("login failed: the PDS returned no session")
        if jwt_claims(session["accessJwt"]).get("scope") not in _APP_PASSWORD_SCOPES:
            raise Failed("that is not an app password: create one for this runner "
                         "(Settings → App passwords) so it can be revoked on its own")
        did = session["did"]
        try:
            record = Grant(runner=args.runner, created_at=now_datetime(),
                           box=seal_json(key, {"identifier": did, "password": password})).to_record_json()
        except (ValidationError, ValueError) as error:
            raise Failed(_first_line(error, scrub), EXIT_USAGE) from None
        try:
            await net.xrpc.procedure(args.pds, "com.atproto.repo.putRecord",
                                     {"repo": did, "collection": GRANT_NSID, "rkey": args.runner, "record": record},
                                     token=session["accessJwt"])
        except XrpcError as error:
            raise Failed(scrub(f"putRecord failed: {error}")[:300]) from None
    return f"granted {args.runner}: {at_uri(did, GRANT_NSID, args.runner)}"


# ---------------------------------------------------------------------------- verify


def _parse_at_uri(uri: str) -> tuple[str, str, str]:
    parts = uri.removeprefix("at://").split("/") if uri.startswith("at://") else []
    if len(parts) != 3 or not all(parts) or not parts[0].startswith("did:"):
        raise Failed(f"{uri[:200]!r} is not an at://<did>/<collection>/<rkey> URI", EXIT_USAGE)
    return parts[0], parts[1], parts[2]


async def _fetch(net: _Net, uri: str, what: str) -> tuple[str, dict[str, Any]]:
    did, collection, rkey = _parse_at_uri(uri)
    found = await get_record(net.xrpc, await net.pds(did), did, collection, rkey)
    if found is None:
        raise Failed(f"{what} {uri} not found")
    return found.cid, found.value


async def _verify(args: argparse.Namespace) -> str:
    _, collection, _ = _parse_at_uri(args.uri)
    if collection != RESULT_NSID:
        raise Failed(f"{args.uri} is not a {RESULT_NSID} record", EXIT_USAGE)
    async with _network(_plc_url(args)) as net:
        _, value = await _fetch(net, args.uri, "result")
        try:
            result = Result.model_validate(value)
        except ValidationError as error:
            raise Failed(f"not a valid {RESULT_NSID}: {_first_line(error, Scrubber())}") from None
        try:
            declaration = await fetch_declaration(net.xrpc, net.identity, result.runner)
        except (DeclarationError, IdentityError) as error:
            raise Failed(f"runner declaration: {error}") from None
        try:
            good = verify_signature(declaration.signing_key, signing_payload(value), result.sig)
        except Exception:  # noqa: BLE001 - a malformed key or signature is simply "does not verify"
            good = False
        if not good:
            raise Failed(f"signature does not verify with {result.runner}'s signingKey")
        invocation_cid, invocation_value = await _fetch(net, result.invocation.uri, "invocation")
        if invocation_cid != result.invocation.cid:
            raise Failed(f"invocation {result.invocation.uri} is now {invocation_cid}, "
                         f"the result answers {result.invocation.cid}")
        try:
            invocation = Invocation.model_validate(invocation_value)
        except ValidationError:
            raise Failed(f"{result.invocation.uri} is not a valid dev.atrun.invocation") from None
        if invocation.runner != result.runner:
            raise Failed(f"the invocation asked {invocation.runner}, but {result.runner} answered")
        if (invocation.bundle.uri, invocation.bundle.cid) != (result.bundle.uri, result.bundle.cid):
            raise Failed("the result names a different bundle version than the invocation")
        bundle_cid, _ = await _fetch(net, result.bundle.uri, "bundle")
        if bundle_cid != result.bundle.cid:
            raise Failed(f"bundle {result.bundle.uri} is now {bundle_cid}, the result names {result.bundle.cid}")
    return "ok"
