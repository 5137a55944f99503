"""`bwrap`: bubblewrap namespaces around the executor.

All namespaces are unshared (the network too, unless the bundle has `net` permissions; Deno then
narrows it with --allow-net), capabilities dropped, uid/gid nobody inside, a fresh tmpfs for
scratch, and read-only binds of only what the runtime and the bundle need. Options travel through
a memfd (`--args`), so secrets set with --setenv never show up in /proc/*/cmdline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

from sandboxes.backends.base import Launch, LaunchSpec

NOBODY = "65534"
ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
ETC_FILES = ("localtime",)
# Name resolution and TLS roots, mounted only for sandboxes with network access (every mount costs).
ETC_NET_FILES = ("hosts", "resolv.conf", "nsswitch.conf", "ssl/certs", "ca-certificates")
SANDBOX_TMP = "/tmp"
ARGS_TOKEN = "{bwrap-args-fd}"


def _system_args(net: bool = False) -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ROOT_LINKS:
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    for name in ETC_FILES + (ETC_NET_FILES if net else ()):
        path = Path("/etc") / name
        if path.exists():
            args += ["--ro-bind", str(path), str(path)]
    return args


@lru_cache(maxsize=1)
def _probe() -> str | None:
    binary = shutil.which("bwrap")
    if binary is None:
        return "bwrap not found on PATH (Debian: apt-get install bubblewrap)"
    argv = [binary, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--uid", NOBODY, "--gid", NOBODY, *_system_args(), "--proc", "/proc", "--dev", "/dev", "/usr/bin/true"]
    try:
        result = subprocess.run(argv, capture_output=True, timeout=10, env={})
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bwrap probe failed: {error}"
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        return f"bwrap cannot create namespaces here: {detail[-1] if detail else f'exit {result.returncode}'}"
    return None


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


class BwrapBackend:
    name = "bwrap"
    isolating = True

    def unavailable_reason(self) -> str | None:
        return _probe()

    def tmp_path(self, scratch: Path) -> str:
        return SANDBOX_TMP

    def options(self, spec: LaunchSpec) -> list[str]:
        options = ["--unshare-all"]
        if spec.net:
            options.append("--share-net")
        options += ["--die-with-parent", "--new-session", "--clearenv", "--cap-drop", "ALL",
                    "--uid", NOBODY, "--gid", NOBODY, "--hostname", "at-run"]
        options += _system_args(spec.net)
        tmp_size = str(spec.memory_mb * 1024 * 1024)  # tmpfs pages are charged to the cgroup as well
        options += ["--proc", "/proc", "--dev", "/dev", "--size", tmp_size, "--tmpfs", SANDBOX_TMP]
        binds: dict[Path, str] = {}
        system = [Path("/usr")]
        for path in spec.ro_paths:
            if not _under(path, system):
                binds.setdefault(path, "--ro-bind")
        for path in spec.read_paths:
            binds.setdefault(path, "--ro-bind-try")
        for path in spec.write_paths:
            binds[path] = "--bind-try"
        for path in sorted(binds, key=lambda p: len(p.parts)):
            options += [binds[path], str(path), str(path)]
        for name, value in spec.env.items():
            options += ["--setenv", name, value]
        options += ["--chdir", SANDBOX_TMP]
        return options

    def launch(self, spec: LaunchSpec) -> Launch:
        binary = shutil.which("bwrap") or "/usr/bin/bwrap"
        return Launch(argv=[binary, "--args", ARGS_TOKEN, "--", *spec.argv], env={}, cwd="/",
                      memfds={ARGS_TOKEN: self.options(spec)})
