"""Turn an ExecRequest into a checked launch plan, or refuse it with a reason.

Rules that hold for every backend: the runner's state dir (keys, other bundles) is never granted
through a boundary the executor enforces; env names that steer the loader or the runtime are
reserved; Python, which enforces nothing itself, only runs where the backend can contain what it
asked for (or in dev mode, with a warning).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from sandboxes.errors import Rejected
from sandboxes.models import ExecRequest, Permissions
from sandboxes.runtimes import Runtime, runtime_for
from sandboxes.settings import SandboxSettings

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_PREFIXES = ("LD_", "DENO_", "PYTHON", "NODE_", "RUST_", "V8_", "AT_RUN", "MALLOC_", "GLIBC_")
RESERVED_NAMES = frozenset({"PATH", "HOME", "TMPDIR", "LANG", "PWD", "NO_COLOR", "SSL_CERT_FILE", "SSL_CERT_DIR"})
# Kernel and device views: reading them leaks other processes (e.g. /proc/<runner>/environ).
NEVER_READ = tuple(Path(p) for p in ("/proc", "/sys", "/dev"))
# Writable binds of system trees would let a sandbox (uid-mapped to the runner) rewrite the host.
NEVER_WRITE = tuple(
    Path(p) for p in ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/run", "/var")
)


@dataclass(frozen=True)
class Plan:
    """A validated request: everything needed to pick or start an instance and call it."""

    runtime: Runtime
    bundle_key: str
    code_path: Path
    bundle_dir: Path
    permissions: Permissions
    env: dict[str, str]
    memory_mb: int
    pids: int
    output_bytes: int
    timeout: float
    key: str
    warning: str | None = None

    @property
    def net(self) -> bool:
        return bool(self.permissions.net)

    @property
    def adoptable(self) -> bool:
        """A generic warm host (no network, no extra paths) can take this bundle over."""
        p = self.permissions
        return self.runtime.adoptable and not (p.net or p.read or p.write)


def _overlaps(path: Path, guarded: Path) -> bool:
    return path == guarded or guarded in path.parents or path in guarded.parents


def _absolute(raw: str, what: str) -> Path:
    if not os.path.isabs(raw):
        raise Rejected(f"{what} {raw!r} must be an absolute path")
    return Path(os.path.realpath(raw))


def _check_env(env: dict[str, str], runtime: Runtime) -> None:
    for name in env:
        if not ENV_NAME.match(name):
            raise Rejected(f"env name {name!r} is not a valid variable name")
        if name in RESERVED_NAMES or name in runtime.env or name.upper().startswith(RESERVED_PREFIXES):
            raise Rejected(f"env name {name!r} is reserved by the executor")


def make_plan(
    request: ExecRequest, *, settings: SandboxSettings, runtimes: dict[str, Runtime], isolating: bool
) -> Plan:
    runtime = runtime_for(runtimes, request.mime_type)
    if runtime is None:
        raise Rejected(f"no runtime for MIME type {request.mime_type!r}")
    code_path = _absolute(request.code_path, "codePath")
    if not code_path.is_file():
        raise Rejected(f"codePath {request.code_path!r} is not a file")
    bundle_dir = code_path.parent
    state_dir = Path(os.path.realpath(settings.state_dir))
    if bundle_dir == Path("/") or bundle_dir == state_dir or bundle_dir in state_dir.parents:
        raise Rejected(
            f"bundle directory {bundle_dir} would expose the runner's state; give each bundle its own directory"
        )
    permissions = request.permissions
    for kind in ("net", "read", "write", "env"):
        for entry in getattr(permissions, kind):
            if "," in entry or not entry:
                raise Rejected(f"permissions.{kind} entry {entry!r} is malformed")
    enforced = runtime.enforces_permissions or isolating
    if enforced:
        for kind, raw_paths in (("read", permissions.read), ("write", permissions.write)):
            for raw in raw_paths:
                path = Path("/") if raw == "*" else _absolute(raw, f"permissions.{kind}")
                if _overlaps(path, state_dir) and not (path == bundle_dir or bundle_dir in path.parents):
                    raise Rejected(f"permissions.{kind} {raw!r} reaches into the runner's state dir", kind="denied")
                guarded = NEVER_READ if kind == "read" else NEVER_READ + NEVER_WRITE
                if any(_overlaps(path, g) for g in guarded):
                    raise Rejected(f"permissions.{kind} {raw!r} is never granted", kind="denied")
    warning = None
    if not runtime.enforces_permissions and not isolating and not permissions.is_full():
        warning = f"dev mode: {runtime.name} bundle runs uncontained on the `none` backend despite narrower permissions"
    if not runtime.enforces_permissions and not settings.dev:
        if not isolating and not permissions.is_full():
            raise Rejected(
                f"the `none` backend cannot contain a {runtime.name} bundle (its runtime enforces no permissions) and "
                "this bundle asks for less than full access; use an isolating backend such as bwrap, or dev mode"
            )
        if isolating and permissions.net and "*" not in permissions.net:
            raise Rejected(
                f"{runtime.name} cannot narrow network access to hosts {permissions.net}; grant net ['*'] or none"
            )
    _check_env(request.env, runtime)
    defaults = settings.limits
    memory_mb = request.limits.memory_mb or defaults.memory_mb
    pids = request.limits.pids or defaults.pids
    output_bytes = request.limits.output_bytes or defaults.output_bytes
    identity = {
        "runtime": runtime.name,
        "bundle": request.bundle_key,
        "code": str(code_path),
        "permissions": permissions.to_wire(),
        "env": request.env,
        "memory": memory_mb,
        "pids": pids,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
    return Plan(
        runtime=runtime,
        bundle_key=request.bundle_key,
        code_path=code_path,
        bundle_dir=bundle_dir,
        permissions=permissions,
        env=dict(request.env),
        memory_mb=memory_mb,
        pids=pids,
        output_bytes=output_bytes,
        timeout=request.timeout,
        key=key,
        warning=warning,
    )
