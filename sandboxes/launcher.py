"""Start executor processes: runtime argv + clean env + backend wrapping + a fresh cgroup."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from sandboxes.backends.base import Backend, LaunchSpec
from sandboxes.cgroups import Cgroup, CgroupManager, owner_alive
from sandboxes.models import Permissions
from sandboxes.process import Process, Spare
from sandboxes.runtimes import Runtime
from sandboxes.settings import SandboxSettings

log = structlog.get_logger(__name__)
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
_executor_ids = itertools.count(1)


@dataclass(frozen=True)
class InstanceConfig:
    """What fixes an instance at start: the sandbox can't change these later."""

    runtime: Runtime
    bundle_dir: Path
    permissions: Permissions
    env: dict[str, str]
    memory_mb: int
    pids: int


@dataclass
class Started:
    ident: str
    process: Process
    scratch: Path


class Launcher:
    def __init__(self, settings: SandboxSettings, backend: Backend, cgroups: CgroupManager | None) -> None:
        self.settings = settings
        self.backend = backend
        self.cgroups = cgroups
        self.prefix = f"{os.getpid()}-{next(_executor_ids)}"
        self._seq = itertools.count(1)
        self.scratch_root = settings.work_dir / "scratch"
        self.slots_root = settings.work_dir / "slots"
        self.cache_root = settings.work_dir / "cache"
        self._spares: list[Spare] = []
        self._spares_starting = 0
        self._spare_target = settings.pool.spares if cgroups is not None else 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def cache_dir(self, runtime: Runtime) -> Path:
        return self.cache_root / runtime.name

    def ensure_dirs(self) -> None:
        """Create the work dirs and drop scratch/slot dirs of runners that died (blocking: use a thread)."""
        for path in (self.scratch_root, self.slots_root, self.cache_root):
            path.mkdir(parents=True, exist_ok=True)
        for root in (self.scratch_root, self.slots_root):
            for child in root.iterdir():
                if not owner_alive(child.name):
                    shutil.rmtree(child, ignore_errors=True)

    def new_ident(self) -> str:
        return f"{self.prefix}-{next(self._seq)}"

    async def prepare(self, runtime: Runtime) -> None:
        """Run the runtime's `prepare` command (e.g. Deno compiling its trusted host into the shared
        cache) once, outside any sandbox: sandboxes then mount that cache read-only."""
        cache = self.cache_dir(runtime)
        cache.mkdir(parents=True, exist_ok=True)
        if not runtime.prepare or runtime.availability() is not None:
            return
        values = {"cache": str(cache), "tmp": str(cache), "memoryMb": "0", "bundleDir": ""}
        argv, env = runtime.render(permissions=[], values=values, command=runtime.prepare)
        proc = await asyncio.create_subprocess_exec(
            *argv, env={"PATH": BASE_PATH, "HOME": str(cache), **env},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            log.warning("sandbox.prepare_failed", runtime=runtime.name, stderr=err.decode(errors="replace")[-500:])

    async def start(self, config: InstanceConfig) -> Started:
        ident = self.new_ident()
        scratch = self.scratch_root / ident
        cgroup: Cgroup | None = None
        spare = self._claim_spare()
        try:
            if not self.backend.isolating:
                scratch.mkdir(parents=True, exist_ok=True)
            launch = self.backend.launch(self._spec(config, scratch))
            if spare is not None:
                cgroup = spare.cgroup
                if cgroup is not None:
                    cgroup.set_limits(memory_mb=config.memory_mb, pids=config.pids)
                process = await spare.become(launch)
                spare = None
            else:
                if self.cgroups is not None:
                    cgroup = self.cgroups.create(ident, memory_mb=config.memory_mb, pids=config.pids)
                process = await Process.spawn(launch, cgroup)
        except BaseException:
            if spare is not None:
                await asyncio.shield(spare.discard())
            elif cgroup is not None:
                await asyncio.shield(cgroup.remove())
            if scratch.exists():
                await asyncio.shield(asyncio.to_thread(shutil.rmtree, scratch, True))
            raise
        return Started(ident=ident, process=process, scratch=scratch)

    # ---- spare processes ---------------------------------------------------------------------

    def _claim_spare(self) -> Spare | None:
        while self._spares:
            spare = self._spares.pop()
            if spare.usable:
                self.refill_spares()
                return spare
            self._background(spare.discard())
        self.refill_spares()
        return None

    def refill_spares(self) -> list[asyncio.Task[None]]:
        """Top the spare stubs up in the background (starting one never blocks the loop)."""
        started = []
        while not self._closed and len(self._spares) + self._spares_starting < self._spare_target:
            self._spares_starting += 1
            started.append(self._background(self._new_spare()))
        return started

    async def _new_spare(self) -> None:
        assert self.cgroups is not None
        defaults = self.settings.limits
        try:
            cgroup = self.cgroups.create(f"{self.new_ident()}-spare", memory_mb=defaults.memory_mb, pids=defaults.pids)
            spare = await Spare.start(cgroup)
        except Exception as error:  # noqa: BLE001 - no spare just means a slower cold start
            log.warning("sandbox.spare_failed", error=str(error))
            return
        finally:
            self._spares_starting -= 1
        if self._closed:
            await spare.discard()
        else:
            self._spares.append(spare)

    def _background(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def spare_count(self) -> int:
        return len(self._spares)

    async def close(self) -> None:
        self._closed = True
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        spares, self._spares = self._spares, []
        await asyncio.gather(*(s.discard() for s in spares), return_exceptions=True)

    def _spec(self, config: InstanceConfig, scratch: Path) -> LaunchSpec:
        runtime = config.runtime
        tmp = self.backend.tmp_path(scratch)
        cache = self.cache_dir(runtime)
        values = {
            "cache": str(cache), "tmp": tmp, "memoryMb": str(config.memory_mb), "bundleDir": str(config.bundle_dir)
        }
        flags = runtime.permission_args(config.permissions, config.bundle_dir, sorted(config.env))
        argv, runtime_env = runtime.render(permissions=flags, values=values)
        env = {"PATH": BASE_PATH, "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", **runtime_env, **config.env}
        ro_paths = [*runtime.host_paths(), config.bundle_dir]
        if cache.is_dir():
            ro_paths.append(cache)
        return LaunchSpec(
            argv=argv,
            env=env,
            ro_paths=ro_paths,
            read_paths=[Path(p) for p in config.permissions.read],
            write_paths=[Path(p) for p in config.permissions.write],
            net=bool(config.permissions.net),
            scratch=scratch,
            memory_mb=config.memory_mb,
        )

    async def stop(self, started: Started) -> None:
        await started.process.kill()
        if started.scratch.exists():
            await asyncio.to_thread(shutil.rmtree, started.scratch, True)

    async def stage_slot(self, ident: str, bundle_dir: Path) -> Path:
        """Copy (hard-link where possible) a bundle into a generic host's slot directory."""
        slot = self.slots_root / ident
        await asyncio.to_thread(_copy_tree, bundle_dir, slot)
        return slot

    def new_slot(self, ident: str) -> Path:
        slot = self.slots_root / ident
        slot.mkdir(parents=True, exist_ok=True)
        return slot

    async def drop_slot(self, ident: str) -> None:
        slot = self.slots_root / ident
        if slot.exists():
            await asyncio.to_thread(shutil.rmtree, slot, True)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, copy_function=_link_or_copy, dirs_exist_ok=True, symlinks=False)
