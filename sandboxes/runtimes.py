"""Runtimes as data: a TOML file maps MIME types to an at-run-exec executor command.

Built-in runtimes live next to this module in `runtimes/`; operators drop more into their
runtimes dir. A runtime never decides isolation: it only says how to start its executor and how
to turn bundle permissions into flags for it (if it enforces any).

TOML keys::

    name = "deno"
    mimeTypes = ["application/javascript"]
    binary = ["deno"]              # candidates: absolute paths or names looked up on PATH
    bindPrefix = false             # sandboxes also mount the binary's install prefix (../..)
    host = "deno_host.ts"          # executor script, relative to the TOML file (optional)
    command = ["{binary}", "run", "{permissions}", "{host}"]
    warm = true                    # speaks JSON lines and keeps the bundle loaded between calls
    adoptable = true               # a generic warm host can adopt a bundle via a `load` message
    concurrency = 1                # calls one warm instance may serve at once
    prepare = ["{binary}", "cache", "{host}"]   # optional, run once unsandboxed at executor start
    [env]                          # extra environment for the executor (templates allowed)
    [permissionFlags.net]          # omit the table for runtimes that enforce nothing
    some = "--allow-net={list}"
    all = "--allow-net"

Placeholders: {binary} {host} {runtimeDir} {cache} {tmp} {memoryMb} {bundleDir}; an argument
that is exactly "{permissions}" expands to the permission flags.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from sandboxes.errors import RuntimeConfigError
from sandboxes.models import Permissions

BUILTIN_DIR = Path(__file__).parent / "runtimes"
PERMISSION_KINDS = ("net", "read", "write", "env")


@dataclass(frozen=True)
class FlagTemplate:
    some: str
    all: str


@dataclass(frozen=True)
class Runtime:
    name: str
    mime_types: tuple[str, ...]
    command: tuple[str, ...]
    source: Path
    binary_candidates: tuple[str, ...]
    bind_prefix: bool = False
    host: Path | None = None
    warm: bool = True
    adoptable: bool = False
    concurrency: int = 1
    prepare: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    permission_flags: dict[str, FlagTemplate] = field(default_factory=dict)
    builtin: bool = False

    @property
    def enforces_permissions(self) -> bool:
        return bool(self.permission_flags)

    @property
    def runtime_dir(self) -> Path:
        return self.source.parent

    def resolve_binary(self) -> tuple[Path | None, str | None]:
        """(path, None) if an executable candidate exists, else (None, reason); looked up once."""
        return self._resolved

    @cached_property
    def _resolved(self) -> tuple[Path | None, str | None]:
        for candidate in self.binary_candidates:
            found = _find_executable(candidate)
            if found is not None:
                return found, None
        return None, f"none of {list(self.binary_candidates)} found or executable"

    def availability(self) -> str | None:
        _, reason = self.resolve_binary()
        if reason is None and self.host is not None and not self.host.is_file():
            reason = f"host script {self.host} missing"
        return reason

    def host_paths(self) -> list[Path]:
        """Host paths a sandbox must mount read-only for this runtime to start."""
        binary, reason = self.resolve_binary()
        if binary is None:
            raise RuntimeConfigError(f"runtime {self.name}: {reason}")
        paths = [binary.resolve()]
        if self.bind_prefix:
            paths.append(binary.resolve().parent.parent)
        paths.append(self.runtime_dir.resolve())
        return paths

    def permission_args(self, permissions: Permissions, bundle_dir: Path, env_names: list[str]) -> list[str]:
        """Flags narrowing the executor to `permissions`; the bundle's own directory is always readable."""
        lists: dict[str, list[str]] = {
            "net": list(permissions.net),
            "read": [str(bundle_dir), *permissions.read],
            "write": list(permissions.write),
            "env": sorted(set(permissions.env) | set(env_names)),
        }
        args: list[str] = []
        for kind in PERMISSION_KINDS:
            template = self.permission_flags.get(kind)
            values = lists[kind]
            if template is None or not values:
                continue
            if "*" in values or (kind in ("read", "write") and "/" in values):
                args.append(template.all)
            else:
                args.append(template.some.format(list=",".join(values)))
        return args

    def render(
        self, *, permissions: list[str], values: dict[str, str], command: tuple[str, ...] | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """argv (of `command`, default the executor command) and extra env, with placeholders filled."""
        binary, reason = self.resolve_binary()
        if binary is None:
            raise RuntimeConfigError(f"runtime {self.name}: {reason}")
        fill = {
            "binary": str(binary.resolve()), "host": str(self.host or ""), "runtimeDir": str(self.runtime_dir), **values
        }
        argv: list[str] = []
        for part in command or self.command:
            if part == "{permissions}":
                argv.extend(permissions)
            else:
                argv.append(part.format(**fill))
        env = {name: value.format(**fill) for name, value in self.env.items()}
        return argv, env


def _find_executable(candidate: str) -> Path | None:
    if candidate == "deno":
        try:
            import deno  # PyPI package shipping the binary

            path = Path(deno.find_deno_bin())
            if path.is_file() and os.access(path, os.X_OK):
                return path
        except Exception:  # noqa: BLE001 - absent or broken package: fall back to PATH
            pass
    if os.path.isabs(candidate):
        path = Path(candidate)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    found = shutil.which(candidate)
    return Path(found) if found else None


def _str_list(data: dict[str, Any], key: str, source: Path, default: list[str] | None = None) -> list[str]:
    value = data.get(key, default)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise RuntimeConfigError(f"{source}: {key}: expected a non-empty list of strings")
    return value


def load_runtime(path: Path, *, builtin: bool = False) -> Runtime:
    """Parse one runtime TOML file; errors name the file and key."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise RuntimeConfigError(f"{path}: {error}") from None
    known = {"name", "mimeTypes", "binary", "bindPrefix", "host", "command", "warm", "adoptable",
             "concurrency", "prepare", "env", "permissionFlags"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RuntimeConfigError(f"{path}: unknown key {unknown[0]}")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise RuntimeConfigError(f"{path}: name: expected a string")
    flags: dict[str, FlagTemplate] = {}
    raw_flags = data.get("permissionFlags", {})
    if not isinstance(raw_flags, dict):
        raise RuntimeConfigError(f"{path}: permissionFlags: expected a table")
    for kind, spec in raw_flags.items():
        if kind not in PERMISSION_KINDS or not isinstance(spec, dict) or not {"some", "all"} <= set(spec):
            raise RuntimeConfigError(f"{path}: permissionFlags.{kind}: expected a table with `some` and `all`")
        flags[kind] = FlagTemplate(some=str(spec["some"]), all=str(spec["all"]))
    host = data.get("host")
    env = data.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise RuntimeConfigError(f"{path}: env: expected a table of strings")
    concurrency = data.get("concurrency", 1)
    if not isinstance(concurrency, int) or concurrency < 1:
        raise RuntimeConfigError(f"{path}: concurrency: expected a positive integer")
    return Runtime(
        name=name,
        mime_types=tuple(_str_list(data, "mimeTypes", path)),
        command=tuple(_str_list(data, "command", path)),
        source=path,
        binary_candidates=tuple(_str_list(data, "binary", path)),
        bind_prefix=bool(data.get("bindPrefix", False)),
        host=(path.parent / host) if isinstance(host, str) else None,
        warm=bool(data.get("warm", False)),
        adoptable=bool(data.get("adoptable", False)),
        concurrency=concurrency,
        prepare=tuple(_str_list(data, "prepare", path)) if "prepare" in data else (),
        env=dict(env),
        permission_flags=flags,
        builtin=builtin,
    )


def load_runtimes(runtimes_dir: Path | None) -> dict[str, Runtime]:
    """Built-ins first, then operator files (same name replaces a built-in)."""
    runtimes: dict[str, Runtime] = {}
    for path in sorted(BUILTIN_DIR.glob("*.toml")):
        runtime = load_runtime(path, builtin=True)
        runtimes[runtime.name] = runtime
    if runtimes_dir is not None and runtimes_dir.is_dir():
        for path in sorted(runtimes_dir.glob("*.toml")):
            runtime = load_runtime(path)
            runtimes[runtime.name] = runtime
    return runtimes


def runtime_for(runtimes: dict[str, Runtime], mime_type: str) -> Runtime | None:
    base = mime_type.split(";", 1)[0].strip().lower()
    for runtime in runtimes.values():
        if base in runtime.mime_types:
            return runtime
    return None
