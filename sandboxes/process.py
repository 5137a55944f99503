"""One executor process: spawn inside its cgroup, talk JSON lines, cap output, kill everything.

The protocol stream is untrusted (a Python bundle can write to it): replies are matched by `id`,
anything else counts as stray output against the cap, and a line over the cap kills the instance.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from sandboxes.backends.base import Launch
from sandboxes.cgroups import Cgroup

log = structlog.get_logger(__name__)
STDERR_TAIL = 4096
READ_CHUNK = 64 * 1024


class InstanceDied(Exception):
    """The executor exited or broke the protocol; the instance must not be reused."""


class OutputExceeded(Exception):
    """The executor wrote more than the output cap."""


@dataclass
class Counters:
    """cgroup event counters at a point in time, to attribute kills to limits."""

    oom_kills: int = 0
    pids_max: int = 0


# rlimits for every executor (memory and pids are the cgroup's job): no core dumps, bounded fds,
# no file over 1 GiB in whatever it may write. stub.py applies the same values.
MAX_FILES = 1024
MAX_FILE_BYTES = 1 << 30
# Joins the cgroup(s) named in its arguments, sets the rlimits, then execs the command: the join
# happens in the child (its RCU grace period never blocks the runner), before any executor code.
JOIN_SCRIPT = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do echo 0 > "$1" || exit 125; shift; n=$((n - 1)); done; '
    f'ulimit -c 0; ulimit -n {MAX_FILES}; ulimit -f {MAX_FILE_BYTES // 512}; exec "$@"'
)
STUB = Path(__file__).with_name("stub.py")
PIPE = asyncio.subprocess.PIPE


def _procs_files(cgroup: Cgroup | None) -> list[str]:
    return [str(d / "cgroup.procs") for d in cgroup.unique_dirs] if cgroup is not None else []


@dataclass
class Process:
    """A running executor and its protocol state."""

    proc: asyncio.subprocess.Process
    cgroup: Cgroup | None
    started_at: float
    stderr_tail: deque[bytes] = field(default_factory=lambda: deque(maxlen=64))
    stderr_bytes: int = 0
    stray_bytes: int = 0
    exit_reason: str | None = None
    _pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _cap: int = 1024 * 1024
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _dead: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def spawn(cls, launch: Launch, cgroup: Cgroup | None) -> Process:
        """Start directly (no spare at hand): a shell joins the cgroup, then execs the command."""
        fds: list[int] = []
        argv = list(launch.argv)
        try:
            for token, args in launch.memfds.items():
                fd = os.memfd_create("args", os.MFD_CLOEXEC)
                fds.append(fd)
                os.write(fd, b"".join(arg.encode() + b"\0" for arg in args))
                os.lseek(fd, 0, os.SEEK_SET)
                argv = [str(fd) if part == token else part for part in argv]
            procs = _procs_files(cgroup)
            if procs:
                argv = ["/bin/sh", "-c", JOIN_SCRIPT, "at-run-join", str(len(procs)), *procs, *argv]
            proc = await asyncio.create_subprocess_exec(
                *argv, env=launch.env, cwd=launch.cwd, pass_fds=tuple(fds), start_new_session=True,
                limit=READ_CHUNK, stdin=PIPE, stdout=PIPE, stderr=PIPE,
            )
        finally:
            for fd in fds:
                os.close(fd)
        return cls.adopt(proc, cgroup)

    @classmethod
    def adopt(cls, proc: asyncio.subprocess.Process, cgroup: Cgroup | None) -> Process:
        self = cls(proc=proc, cgroup=cgroup, started_at=time.monotonic())
        self._tasks = [asyncio.create_task(self._read_stdout()), asyncio.create_task(self._read_stderr())]
        return self

    @property
    def alive(self) -> bool:
        return not self._dead.is_set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def counters(self) -> Counters:
        if self.cgroup is None:
            return Counters()
        return Counters(oom_kills=self.cgroup.oom_kills(), pids_max=self.cgroup.pids_max_hits())

    def stderr_text(self) -> str:
        return b"".join(self.stderr_tail).decode(errors="replace")[-STDERR_TAIL:]

    async def request(self, message: dict[str, Any], cap: int, *, close_stdin: bool = False) -> dict[str, Any]:
        """Send one message and wait for the reply with the same id (no timeout here: callers own it)."""
        if not self.alive:
            raise InstanceDied(self.exit_reason or "instance is gone")
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        self._cap = cap
        self.stray_bytes = 0
        line = json.dumps({**message, "id": ident}, separators=(",", ":")).encode() + b"\n"
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(line)
            if close_stdin:
                self.proc.stdin.close()
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError, RuntimeError) as error:
            self._pending.pop(ident, None)
            raise InstanceDied(f"executor closed its input: {error}") from None
        try:
            return await future
        finally:
            self._pending.pop(ident, None)

    def _fail_pending(self, error: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    def _on_line(self, line: bytes) -> None:
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        ident = reply.get("id") if isinstance(reply, dict) else None
        future = self._pending.get(ident) if isinstance(ident, int) else None
        if future is not None and not future.done():
            future.set_result(reply)
            return
        self.stray_bytes += len(line)
        if self.stray_bytes > self._cap:
            raise OutputExceeded(f"executor wrote over {self._cap} bytes outside replies")

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        buffer = b""
        try:
            while True:
                chunk = await self.proc.stdout.read(READ_CHUNK)
                if not chunk:
                    break
                buffer += chunk
                while (newline := buffer.find(b"\n")) >= 0:
                    line, buffer = buffer[:newline], buffer[newline + 1:]
                    if line.strip():
                        self._on_line(line)
                if len(buffer) > self._cap:
                    raise OutputExceeded(f"output exceeded the {self._cap}-byte cap (cut)")
            self._mark_dead(InstanceDied("executor exited"))
        except OutputExceeded as error:
            self._mark_dead(error)
            self._kill_now()
        except Exception as error:  # noqa: BLE001 - any reader failure ends the instance
            self._mark_dead(InstanceDied(f"protocol failure: {error}"))
            self._kill_now()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while True:
            chunk = await self.proc.stderr.read(READ_CHUNK)
            if not chunk:
                return
            self.stderr_bytes += len(chunk)
            self.stderr_tail.append(chunk[-STDERR_TAIL:])  # bounded: excess log output is dropped

    def _mark_dead(self, error: Exception) -> None:
        if self.exit_reason is None:
            self.exit_reason = str(error)
        self._dead.set()
        self._fail_pending(error)

    def _kill_now(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    async def settle(self, timeout: float = 0.5) -> int | None:
        """After a death: wait for the exit status and the last stderr, so the cause can be told."""
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            return None
        await asyncio.wait(self._tasks[1:], timeout=0.2)
        return code

    async def kill(self) -> None:
        """Kill the process group and every process left in the cgroup, reap, remove the cgroup."""
        self._mark_dead(InstanceDied("instance killed"))
        self._kill_now()
        if self.cgroup is not None:
            await self.cgroup.kill_all()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            log.warning("sandbox.reap_timeout", pid=self.proc.pid)
        for task in self._tasks:
            task.cancel()
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        if self.cgroup is not None:
            await self.cgroup.remove()


@dataclass
class Spare:
    """A stub already inside its own cgroup, waiting to exec an executor (see stub.py)."""

    proc: asyncio.subprocess.Process
    cgroup: Cgroup | None
    control: int

    @classmethod
    async def start(cls, cgroup: Cgroup | None, ready_timeout: float = 10.0) -> Spare:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-S", str(STUB), str(read_end), *_procs_files(cgroup),
                env={}, cwd="/", pass_fds=(read_end,), start_new_session=True, limit=READ_CHUNK,
                stdin=PIPE, stdout=PIPE, stderr=PIPE,
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        spare = cls(proc=proc, cgroup=cgroup, control=write_end)
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), ready_timeout)
            if line != b"ready\n":
                assert proc.stderr is not None
                err = (await asyncio.wait_for(proc.stderr.read(2000), 1)).decode(errors="replace").strip()
                raise OSError(f"spare process failed to start: {err or line!r}")
        except BaseException:
            await spare.discard()
            raise
        os.set_blocking(write_end, False)
        return spare

    @property
    def usable(self) -> bool:
        return self.proc.returncode is None

    async def become(self, launch: Launch) -> Process:
        """Hand the command to the stub, which execs it in place (same pid, cgroup and pipes)."""
        spec = json.dumps({"argv": launch.argv, "env": launch.env, "cwd": launch.cwd, "memfds": launch.memfds})
        data = spec.encode() + b"\n"
        try:
            while data:
                try:
                    data = data[os.write(self.control, data):]
                except BlockingIOError:
                    await asyncio.sleep(0.001)
        finally:
            os.close(self.control)
            self.control = -1
        return Process.adopt(self.proc, self.cgroup)

    async def discard(self) -> None:
        if self.control >= 0:
            os.close(self.control)
            self.control = -1
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        await self.proc.wait()
        if self.cgroup is not None:
            await self.cgroup.remove()
