"""A real ATProto network on loopback for tests: a PLC directory and a PDS.

Both are the reference TypeScript servers (``testnet/plc.mjs``, ``testnet/pds.mjs``),
run as separate node processes so a test can stop and restart the PDS (same port,
same data dir) while the in-memory PLC keeps its state. Each process runs in its
own process group and watches its stdin pipe, so nothing outlives the test run.

Records and blobs are plain JSON here (``dict``), exactly as they travel over
XRPC; ``Account.login()`` gives an ``atproto.AsyncClient`` when the SDK is wanted.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from atproto import AsyncClient

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTNET_DIR = REPO_ROOT / "testnet"
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "testnet-install"

#: Admin password of the test PDS (``Basic admin:<this>`` for admin XRPCs).
ADMIN_PASSWORD = "admin-pass"

_BOOT_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 15.0
_LOG_TAIL_CHARS = 6000


class TestNetworkError(RuntimeError):
    """The test network could not be installed or started (message has node's stderr)."""


def ensure_installed() -> None:
    """Run ``scripts/testnet-install`` (a no-op when node_modules matches the lockfile)."""
    if shutil.which("node") is None:
        raise TestNetworkError("`node` not found on PATH; the test network needs Node >= 20")
    proc = subprocess.run([str(INSTALL_SCRIPT)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise TestNetworkError(
            f"{INSTALL_SCRIPT} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )


# Servers we started; killed at interpreter exit if stop() never ran.
_live: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        if proc.poll() is None:  # not yet reaped, so its pid/pgid is still ours
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _live.clear()


class _NodeService:
    """One node server process: spawn, wait for its JSON ready line, stop by process group.

    Uses ``subprocess.Popen`` with files for stdout/stderr (not asyncio pipes) so it is
    independent of any event loop and node can never block on a full pipe.
    """

    def __init__(self, name: str, script: str, workdir: Path) -> None:
        self.name = name
        self.script = script
        self.stdout_path = workdir / f"{name}.out"
        self.stderr_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self, args: list[str], timeout: float = _BOOT_TIMEOUT_S) -> dict[str, Any]:
        """Spawn the script and return its ready JSON (``url``, ``port``, ...)."""
        if self.running:
            raise TestNetworkError(f"{self.name} is already running")
        env = dict(os.environ)
        if level := os.environ.get("ATNET_LOG"):  # e.g. ATNET_LOG=debug: server logs to <name>.log
            env.update(LOG_ENABLED="true", LOG_LEVEL=level)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "ab") as err:
            err.write(f"--- {time.strftime('%H:%M:%S')} starting {self.script} {args}\n".encode())
            err.flush()
            self.proc = subprocess.Popen(
                ["node", self.script, "--watch-stdin", *args],
                cwd=TESTNET_DIR,
                env=env,
                stdin=subprocess.PIPE,  # node exits when this closes (i.e. when we die)
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        _live.add(self.proc)
        deadline = time.monotonic() + timeout
        while True:
            if info := self._ready_info():
                self.info = info
                return info
            if self.proc.poll() is not None:
                self._forget()
                raise TestNetworkError(
                    f"{self.name} exited with {self.proc.returncode} before it was ready:\n"
                    + self.log_tail()
                )
            if time.monotonic() > deadline:
                await self.stop()
                raise TestNetworkError(f"{self.name} not ready after {timeout:.0f}s:\n" + self.log_tail())
            await asyncio.sleep(0.05)

    def _ready_info(self) -> dict[str, Any] | None:
        """The first complete stdout line that is a JSON object with a ``url``."""
        *complete, _partial = self.stdout_path.read_text(errors="replace").split("\n")
        for line in complete:
            with contextlib.suppress(ValueError):
                info = json.loads(line)
                if isinstance(info, dict) and "url" in info:
                    return info
        return None

    async def stop(self) -> None:
        """SIGTERM the process group (clean shutdown), SIGKILL it if it lingers."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + _STOP_TIMEOUT_S
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._forget()

    def _forget(self) -> None:
        assert self.proc is not None
        if self.proc.stdin:
            self.proc.stdin.close()
        _live.discard(self.proc)

    def log_tail(self) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no stderr captured)"
        return text[-_LOG_TAIL_CHARS:] or "(stderr empty)"


@dataclass(frozen=True)
class RecordRef:
    """What createRecord/putRecord return: the record's AT-URI and CID."""

    uri: str
    cid: str

    @property
    def rkey(self) -> str:
        return self.uri.rsplit("/", 1)[1]


@dataclass
class Account:
    """An account on the test PDS, with thin XRPC helpers that log in lazily."""

    did: str
    handle: str
    password: str
    pds_url: str
    _access_jwt: str | None = field(default=None, repr=False, compare=False)

    async def login(self, password: str | None = None) -> AsyncClient:
        """A logged-in ``atproto.AsyncClient``; close it with ``await client.request.close()``."""
        client = AsyncClient(base_url=self.pds_url)
        await client.login(self.handle, password or self.password, fetch_bsky_profile=False)
        return client

    async def app_password(self, name: str | None = None) -> str:
        """Create an app password (``com.atproto.server.createAppPassword``) and return it."""
        out = await self.call(
            "com.atproto.server.createAppPassword",
            json={"name": name or f"test-{secrets.token_hex(4)}"},
        )
        return str(out["password"])

    async def upload_blob(self, data: bytes, mime_type: str) -> dict[str, Any]:
        """Upload bytes; returns the blob ref JSON to embed in a record.

        The PDS only sniffs a few binary types, so the Content-Type must be explicit.
        """
        out = await self.call(
            "com.atproto.repo.uploadBlob", content=data, headers={"Content-Type": mime_type}
        )
        return dict(out["blob"])

    async def get_blob(self, cid: str) -> bytes:
        """Fetch a blob back through ``com.atproto.sync.getBlob`` (public, no auth)."""
        async with httpx.AsyncClient(base_url=self.pds_url) as http:
            resp = await http.get(
                "/xrpc/com.atproto.sync.getBlob", params={"did": self.did, "cid": cid}
            )
        _raise_for_xrpc(resp)
        return resp.content

    async def create_record(
        self,
        collection: str,
        record: dict[str, Any],
        rkey: str | None = None,
        validate: bool | None = None,
    ) -> RecordRef:
        """``com.atproto.repo.createRecord``; ``$type`` defaults to the collection.

        ``validate=None`` lets the PDS accept lexicons it doesn't know (``dev.atrun.*``).
        """
        body = self._write_body(collection, record, rkey, validate)
        out = await self.call("com.atproto.repo.createRecord", json=body)
        return RecordRef(uri=out["uri"], cid=out["cid"])

    async def put_record(
        self,
        collection: str,
        rkey: str,
        record: dict[str, Any],
        validate: bool | None = None,
    ) -> RecordRef:
        """``com.atproto.repo.putRecord``: create or replace the record at ``rkey``."""
        body = self._write_body(collection, record, rkey, validate)
        out = await self.call("com.atproto.repo.putRecord", json=body)
        return RecordRef(uri=out["uri"], cid=out["cid"])

    async def delete_record(self, collection: str, rkey: str) -> None:
        """``com.atproto.repo.deleteRecord``."""
        await self.call(
            "com.atproto.repo.deleteRecord",
            json={"repo": self.did, "collection": collection, "rkey": rkey},
        )

    async def get_record(self, collection: str, rkey: str) -> dict[str, Any]:
        """``com.atproto.repo.getRecord``: returns ``{"uri", "cid", "value"}``."""
        async with httpx.AsyncClient(base_url=self.pds_url) as http:
            resp = await http.get(
                "/xrpc/com.atproto.repo.getRecord",
                params={"repo": self.did, "collection": collection, "rkey": rkey},
            )
        _raise_for_xrpc(resp)
        return dict(resp.json())

    async def call(self, nsid: str, **request: Any) -> dict[str, Any]:
        """POST an authenticated XRPC procedure (httpx kwargs: json=, content=, headers=).

        Logs in again once if the cached access token is rejected.
        """
        extra_headers = request.pop("headers", {})
        for attempt in range(2):
            if self._access_jwt is None:
                self._access_jwt = await self._create_session()
            headers = {**extra_headers, "Authorization": f"Bearer {self._access_jwt}"}
            async with httpx.AsyncClient(base_url=self.pds_url, timeout=30) as http:
                resp = await http.post(f"/xrpc/{nsid}", headers=headers, **request)
            if attempt == 0 and _xrpc_error(resp) in _AUTH_ERRORS:
                self._access_jwt = None
                continue
            _raise_for_xrpc(resp)
            return dict(resp.json()) if resp.content else {}
        raise AssertionError("unreachable")

    async def _create_session(self) -> str:
        async with httpx.AsyncClient(base_url=self.pds_url) as http:
            resp = await http.post(
                "/xrpc/com.atproto.server.createSession",
                json={"identifier": self.did, "password": self.password},
            )
        _raise_for_xrpc(resp)
        return str(resp.json()["accessJwt"])

    def _write_body(
        self, collection: str, record: dict[str, Any], rkey: str | None, validate: bool | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "repo": self.did,
            "collection": collection,
            "record": {"$type": collection, **record},
        }
        if rkey is not None:
            body["rkey"] = rkey
        if validate is not None:
            body["validate"] = validate
        return body


_AUTH_ERRORS = frozenset({"ExpiredToken", "InvalidToken", "AuthenticationRequired"})


class XrpcError(RuntimeError):
    """A non-2xx XRPC response (``error`` is the XRPC error name, if any)."""

    def __init__(self, status: int, error: str | None, message: str) -> None:
        super().__init__(f"HTTP {status} {error}: {message}")
        self.status = status
        self.error = error


def _xrpc_error(resp: httpx.Response) -> str | None:
    try:
        return resp.json().get("error")
    except ValueError:
        return None


def _raise_for_xrpc(resp: httpx.Response) -> None:
    if resp.is_success:
        return
    try:
        body = resp.json()
    except ValueError:
        body = {"message": resp.text}
    raise XrpcError(resp.status_code, body.get("error"), body.get("message", ""))


class TestNetwork:
    """PLC directory + PDS on 127.0.0.1, each a node process. Use ``async with`` or start/stop."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, workdir: Path | None = None, keep: bool = False) -> None:
        """``workdir`` holds logs and PDS data (default: a fresh temp dir, removed on stop
        unless ``keep`` or env ``ATNET_KEEP=1``)."""
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="at-rund-atnet-"))
        self.keep = keep or bool(os.environ.get("ATNET_KEEP"))
        self.pds_data_dir = self.workdir / "pds"
        self._plc = _NodeService("plc", "plc.mjs", self.workdir)
        self._pds = _NodeService("pds", "pds.mjs", self.workdir)
        self._pds_port: int | None = None

    @property
    def plc_url(self) -> str:
        """``http://localhost:PORT`` (what the PDS uses as ``didPlcUrl``)."""
        if "url" not in self._plc.info:
            raise TestNetworkError("PLC has not been started")
        return str(self._plc.info["url"])

    @property
    def pds_url(self) -> str:
        """``http://localhost:PORT``: the PDS's public URL, as in DID documents."""
        return f"http://localhost:{self.pds_port}"

    @property
    def pds_port(self) -> int:
        if self._pds_port is None:
            raise TestNetworkError("PDS has not been started")
        return self._pds_port

    @property
    def pds_did(self) -> str:
        """The PDS's service DID (``did:web:localhost``)."""
        return str(self._pds.info["did"])

    @property
    def firehose_url(self) -> str:
        """WebSocket URL of ``com.atproto.sync.subscribeRepos`` on the PDS."""
        return f"ws://127.0.0.1:{self.pds_port}/xrpc/com.atproto.sync.subscribeRepos"

    @property
    def pds_running(self) -> bool:
        return self._pds.running

    async def start(self) -> None:
        """Boot PLC, then the PDS pointing at it. Raises TestNetworkError with node's stderr."""
        try:
            await self._plc.start([])
            await self.start_pds()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop both processes and remove the work dir (unless kept)."""
        try:
            await self._pds.stop()
        finally:
            await self._plc.stop()
            if self._own_workdir and not self.keep:
                shutil.rmtree(self.workdir, ignore_errors=True)

    async def stop_pds(self) -> None:
        """Stop only the PDS (clean SIGTERM); its port and data dir are reused by start_pds()."""
        await self._pds.stop()

    async def start_pds(self) -> None:
        """(Re)start the PDS on the same port and data dir as before (a free port the first time)."""
        port = self._pds_port or 0
        info = await self._pds.start(
            [
                "--port", str(port),
                "--data-dir", str(self.pds_data_dir),
                "--plc-url", self.plc_url,
            ]
        )  # fmt: skip
        self._pds_port = int(info["port"])

    async def create_account(self, handle_prefix: str = "alice", password: str | None = None) -> Account:
        """Create an account with handle ``<prefix>-<random>.test`` (invites are off)."""
        handle = f"{handle_prefix}-{secrets.token_hex(4)}.test"
        password = password or secrets.token_urlsafe(12)
        async with httpx.AsyncClient(base_url=self.pds_url, timeout=30) as http:
            resp = await http.post(
                "/xrpc/com.atproto.server.createAccount",
                json={
                    "handle": handle,
                    "email": f"{handle.removesuffix('.test')}@example.com",
                    "password": password,
                },
            )
        _raise_for_xrpc(resp)
        out = resp.json()
        return Account(
            did=out["did"],
            handle=out["handle"],
            password=password,
            pds_url=self.pds_url,
            _access_jwt=out["accessJwt"],
        )

    def logs(self) -> str:
        """Tails of the PLC and PDS stderr logs, for failure messages."""
        return f"== plc ==\n{self._plc.log_tail()}\n== pds ==\n{self._pds.log_tail()}"

    async def __aenter__(self) -> TestNetwork:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
