"""Per-instance cgroups for memory and pids limits, on cgroup v1 or v2 (detected per controller).

`--max-old-space-size` does not cap ArrayBuffers and Python has no memory cap at all, so memory
is bounded by the kernel. cgroupfs is an in-kernel pseudo-filesystem whose operations never wait
on I/O, so they run inline on the event loop.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from sandboxes.errors import SandboxUnavailable

log = structlog.get_logger(__name__)
CONTROLLERS = ("memory", "pids")


@dataclass(frozen=True)
class Mount:
    root: str
    point: Path
    fstype: str
    options: frozenset[str]


def parse_mountinfo(text: str) -> list[Mount]:
    mounts: list[Mount] = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        options = frozenset(tail[2].split(","))
        mounts.append(Mount(root=fields[3], point=Path(fields[4]), fstype=tail[0], options=options))
    return mounts


def parse_proc_cgroup(text: str) -> tuple[dict[str, str], str | None]:
    """({v1 controller: path}, v2 path or None) from /proc/self/cgroup."""
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        for controller in controllers.split(","):
            if controller:
                v1[controller] = path
    return v1, v2


def _join(mount: Mount, path: str) -> Path:
    relative = path
    if mount.root != "/" and (path == mount.root or path.startswith(mount.root + "/")):
        relative = path[len(mount.root):]
    return mount.point / relative.lstrip("/")


@dataclass(frozen=True)
class Placement:
    """Where a controller's sandbox cgroups are created, and in which cgroup version."""

    controller: str
    version: int
    parent: Path


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _v2_prepare(own: Path, name: str) -> Path:
    """A v2 subtree with memory+pids delegated to its children (no-internal-processes rule)."""
    available = set((own / "cgroup.controllers").read_text().split())
    missing = [c for c in CONTROLLERS if c not in available]
    if missing:
        raise SandboxUnavailable(f"cgroup v2 at {own} lacks controllers {missing}")
    enable = " ".join("+" + c for c in CONTROLLERS)
    try:
        _write(own / "cgroup.subtree_control", enable)
    except OSError as error:
        if error.errno != errno.EBUSY:
            raise
        # Our cgroup holds processes (us): move ourselves into a leaf, then delegate.
        leaf = own / f"{name}-supervisor"
        leaf.mkdir(exist_ok=True)
        _write(leaf / "cgroup.procs", str(os.getpid()))
        _write(own / "cgroup.subtree_control", enable)
    parent = own / name
    parent.mkdir(exist_ok=True)
    _write(parent / "cgroup.subtree_control", enable)
    return parent


def detect(name: str = "at-rund") -> list[Placement]:
    """Placements for memory and pids, or SandboxUnavailable with the reason."""
    try:
        mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
        v1_paths, v2_path = parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
    except OSError as error:
        raise SandboxUnavailable(f"cannot read cgroup info: {error}") from None
    placements: list[Placement] = []
    v2_needed = []
    for controller in CONTROLLERS:
        mount = next((m for m in mounts if m.fstype == "cgroup" and controller in m.options), None)
        if mount is not None and controller in v1_paths:
            parent = _join(mount, v1_paths[controller]) / name
            placements.append(Placement(controller, 1, parent))
        else:
            v2_needed.append(controller)
    if v2_needed:
        mount = next((m for m in mounts if m.fstype == "cgroup2"), None)
        if mount is None or v2_path is None:
            raise SandboxUnavailable(f"no cgroup hierarchy offers {v2_needed}")
        own = _join(mount, v2_path)
        try:
            parent = _v2_prepare(own, name)
        except OSError as error:
            raise SandboxUnavailable(f"cannot delegate cgroup v2 controllers under {own}: {error}") from None
        placements.extend(Placement(c, 2, parent) for c in v2_needed)
    for placement in placements:
        try:
            placement.parent.mkdir(exist_ok=True)
        except OSError as error:
            raise SandboxUnavailable(f"cannot create {placement.parent}: {error}") from None
    return placements


def _pread_counter(fd: int, key: str) -> int:
    try:
        for line in os.pread(fd, 4096, 0).decode().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


@dataclass
class Cgroup:
    """One instance's cgroup(s): v1 has a directory per controller, v2 a single one.

    Event files stay open so checking them after every call costs a pread, not an open.
    """

    dirs: dict[str, Path]
    versions: dict[str, int]
    _event_fds: dict[str, int] = field(default_factory=dict)

    def _event_fd(self, controller: str) -> int | None:
        fd = self._event_fds.get(controller)
        if fd is None:
            directory = self.dirs[controller]
            if controller == "memory":
                name = "memory.events" if self.versions["memory"] == 2 else "memory.oom_control"
            else:
                name = "pids.events"
            try:
                fd = self._event_fds[controller] = os.open(directory / name, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
        return fd

    @property
    def unique_dirs(self) -> list[Path]:
        return list(dict.fromkeys(self.dirs.values()))

    def set_limits(self, *, memory_mb: int, pids: int) -> None:
        """(Re)write the caps; spare cgroups get the instance's caps at hand-over."""
        memory = self.dirs["memory"]
        limit = str(memory_mb * 1024 * 1024)
        if self.versions["memory"] == 2:
            _write(memory / "memory.max", limit)
            for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
                if (memory / name).exists():
                    _write(memory / name, value)
        else:
            memsw = memory / "memory.memsw.limit_in_bytes"
            try:
                _write(memory / "memory.limit_in_bytes", limit)
            except OSError:  # v1 wants limit <= memsw: raise memsw first when growing
                _write(memsw, limit)
                _write(memory / "memory.limit_in_bytes", limit)
            if memsw.exists():
                _write(memsw, limit)
        _write(self.dirs["pids"] / "pids.max", str(pids))

    def oom_kills(self) -> int:
        fd = self._event_fd("memory")
        return 0 if fd is None else _pread_counter(fd, "oom_kill")

    def pids_max_hits(self) -> int:
        fd = self._event_fd("pids")
        return 0 if fd is None else _pread_counter(fd, "max")

    def procs(self) -> list[int]:
        try:
            return [int(p) for p in (self.dirs["pids"] / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    async def kill_all(self) -> None:
        """SIGKILL everything inside, including processes that left the process group."""
        kill_file = self.dirs["pids"] / "cgroup.kill"
        if self.versions["pids"] == 2 and kill_file.exists():
            try:
                _write(kill_file, "1")
            except OSError:
                pass
        for _ in range(200):
            pids = self.procs()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            await asyncio.sleep(0.005)
        log.warning("cgroup.kill_incomplete", dirs=[str(d) for d in self.unique_dirs])

    async def remove(self) -> None:
        for fd in self._event_fds.values():
            os.close(fd)
        self._event_fds.clear()
        await self.kill_all()
        for directory in self.unique_dirs:
            for attempt in range(100):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    await asyncio.sleep(0.01 * (1 + attempt // 10))
            else:
                log.warning("cgroup.remove_failed", dir=str(directory))


def owner_alive(name: str) -> bool:
    """Whether the runner whose pid prefixes `name` ("<pid>-...") is still running."""
    head = name.split("-", 1)[0]
    if not head.isdigit():
        return True  # not ours to judge
    try:
        os.kill(int(head), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CgroupManager:
    """Creates limited cgroups for instances under the runner's own cgroup."""

    def __init__(self, placements: list[Placement]) -> None:
        self.placements = {p.controller: p for p in placements}

    @classmethod
    def detect(cls, name: str = "at-rund") -> CgroupManager:
        return cls(detect(name))

    def sweep_stale(self) -> int:
        """Remove cgroups left by runners that died (names start with the owner's pid)."""
        removed = 0
        for placement in self.placements.values():
            try:
                children = [c for c in placement.parent.iterdir() if c.is_dir()]
            except OSError:
                continue
            for child in children:
                if owner_alive(child.name):
                    continue
                try:
                    for pid in (child / "cgroup.procs").read_text().split():
                        os.kill(int(pid), signal.SIGKILL)
                    child.rmdir()
                    removed += 1
                except (OSError, ValueError):
                    pass  # still busy: the next start tries again
        return removed

    def describe(self) -> dict[str, str]:
        return {c: f"v{p.version} {p.parent}" for c, p in self.placements.items()}

    def create(self, ident: str, *, memory_mb: int, pids: int) -> Cgroup:
        dirs: dict[str, Path] = {}
        versions: dict[str, int] = {}
        for controller, placement in self.placements.items():
            directory = placement.parent / ident
            directory.mkdir(exist_ok=True)
            dirs[controller], versions[controller] = directory, placement.version
        cgroup = Cgroup(dirs=dirs, versions=versions)
        cgroup.set_limits(memory_mb=memory_mb, pids=pids)
        return cgroup


def check() -> str | None:
    """Whether per-instance cgroups look usable, without creating anything (for listings)."""
    try:
        mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
        v1_paths, v2_path = parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
    except OSError as error:
        return f"cannot read cgroup info: {error}"
    for controller in CONTROLLERS:
        mount = next((m for m in mounts if m.fstype == "cgroup" and controller in m.options), None)
        if mount is not None and controller in v1_paths:
            if not os.access(_join(mount, v1_paths[controller]), os.W_OK):
                return f"cgroup v1 {controller} hierarchy is not writable"
            continue
        v2 = next((m for m in mounts if m.fstype == "cgroup2"), None)
        if v2 is None or v2_path is None:
            return f"no cgroup hierarchy offers {controller}"
        own = _join(v2, v2_path)
        try:
            if controller not in (own / "cgroup.controllers").read_text().split():
                return f"cgroup v2 at {own} lacks the {controller} controller"
        except OSError as error:
            return f"cannot read {own}: {error}"
        if not os.access(own, os.W_OK):
            return f"cgroup v2 at {own} is not writable (delegate it to the runner)"
    return None
