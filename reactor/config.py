"""Operator configuration: one TOML file, overridable by `AT_RUND_<KEY>` env vars.

Validation happens once, at start, so that a typo fails loudly with the key and
the file named instead of surfacing as odd behaviour hours later.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

ENV_PREFIX = "AT_RUND_"
# AT_RUND_ variables that are not config keys.
RESERVED_ENV = {"AT_RUND_CONFIG", "AT_RUND_AUTHOR_PASSWORD"}
DEFAULT_HOME = Path("~/.at-rund")

Isolation = Literal["auto", "none", "bwrap", "container", "gvisor", "microvm", "wasm"]
AccessMode = Literal["open", "allowlist", "blocklist", "follows"]


class ConfigError(Exception):
    """A config problem, already phrased as the one line the operator sees."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _check_did(value: str) -> str:
    if not value.startswith(("did:plc:", "did:web:")):
        raise ValueError(f"{value!r} is not a did:plc or did:web DID")
    return value


class AccessConfig(_Section):
    mode: AccessMode = "open"
    allowlist: list[str] = Field(default_factory=list)
    blocklist: list[str] = Field(default_factory=list)
    # Whose follows count for mode "follows" and `[atproto] follow = "follows"` (default: `did`).
    follows_of: str | None = None

    @field_validator("allowlist", "blocklist")
    @classmethod
    def _dids(cls, values: list[str]) -> list[str]:
        return [_check_did(v) for v in values]

    @field_validator("follows_of")
    @classmethod
    def _follows_of(cls, value: str | None) -> str | None:
        return None if value is None else _check_did(value)


class AtprotoConfig(_Section):
    plc_url: str = "https://plc.directory"
    firehose: str | None = None
    follow: list[str] | Literal["follows"] = Field(default_factory=list)
    pds_url: str | None = None
    identifier: str | None = None
    password: SecretStr | None = None

    @field_validator("follow", mode="before")
    @classmethod
    def _follow(cls, value: object) -> object:
        if isinstance(value, str) and value != "follows":
            raise ValueError('must be a list of DIDs or "follows" (everyone the operator follows)')
        return value if isinstance(value, str) or not isinstance(value, list) else [
            _check_did(v) if isinstance(v, str) else v for v in value]


class LimitsConfig(_Section):
    """Defaults for bundles that ask for nothing, and caps no bundle may exceed."""

    memory_mb: int = Field(128, ge=16)
    timeout_ms: int = Field(10_000, ge=10)
    pids: int = Field(32, ge=1)
    output_bytes: int = Field(256 * 1024, ge=1024)
    max_memory_mb: int = Field(512, ge=16)
    max_timeout_ms: int = Field(60_000, ge=10)
    max_pids: int = Field(128, ge=1)
    max_output_bytes: int = Field(1024 * 1024, ge=1024)
    max_blob_bytes: int = Field(5 * 1024 * 1024, ge=1024)


class PoolConfig(_Section):
    prewarm: dict[str, int] = Field(default_factory=dict)
    idle_timeout_s: float = Field(300.0, gt=0)
    max_instances: int = Field(32, ge=1)
    max_per_bundle: int = Field(4, ge=1)


class QuotaConfig(_Section):
    concurrent: int = Field(4, ge=1)
    per_minute: int = Field(600, ge=1)


class QuotasConfig(QuotaConfig):
    """Global per-DID quotas, with overrides for named DIDs."""

    per_did: dict[str, QuotaConfig] = Field(default_factory=dict)


class HttpConfig(_Section):
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    max_headers: int = Field(64, ge=8)


class DispatchConfig(_Section):
    concurrency: int = Field(8, ge=1)
    per_author: int = Field(2, ge=1)
    max_attempts: int = Field(3, ge=1)


class StoreConfig(_Section):
    path: Path | None = None


class ObservabilityConfig(_Section):
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    otlp_endpoint: str | None = None


class Config(_Section):
    did: str | None = None
    handle: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(3000, ge=0, le=65535)
    public_url: str | None = None
    home: Path = DEFAULT_HOME
    isolation: Isolation = "auto"
    runtimes: dict[str, str] = Field(default_factory=lambda: {"deno": "builtin", "python": "builtin"})
    access: AccessConfig = Field(default_factory=AccessConfig)
    atproto: AtprotoConfig = Field(default_factory=AtprotoConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    pool: PoolConfig = Field(default_factory=PoolConfig)
    dispatch: DispatchConfig = Field(default_factory=DispatchConfig)
    quotas: QuotasConfig = Field(default_factory=QuotasConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)

    @field_validator("did")
    @classmethod
    def _did(cls, value: str | None) -> str | None:
        return None if value is None else _check_did(value)

    @field_validator("home")
    @classmethod
    def _home(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def store_path(self) -> Path:
        return (self.store.path or self.home / "at-rund.sqlite3").expanduser()

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def runtimes_dir(self) -> Path:
        return self.home / "runtimes"

    @property
    def bundles_dir(self) -> Path:
        return self.home / "bundles"


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    home = Path(env.get(ENV_PREFIX + "HOME", str(DEFAULT_HOME))).expanduser()
    return home / "config.toml"


def _env_value(raw: str) -> Any:
    """Env vars are strings; JSON lets lists, numbers and booleans through too."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """`AT_RUND_ACCESS__MODE=open` -> {"access": {"mode": "open"}}."""
    tree: dict[str, Any] = {}
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__") if part]
        if not path:
            continue
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"env {name}: conflicts with another AT_RUND_ variable")
        node[path[-1]] = _env_value(raw) if path[-1] != "password" else raw
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
    more = len(error.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {key}: {message}{suffix}"


def parse_config(data: dict[str, Any], source: str, env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    merged = _merge(data, env_overrides(env))
    try:
        config = Config.model_validate(merged)
    except ValidationError as error:
        raise ConfigError(_describe(error, source)) from None
    _check_follows(config, source)
    return config


def _check_follows(config: Config, source: str) -> None:
    """Follows need an account whose follows they are: the runner's `did` or `access.follows_of`."""
    if config.did or config.access.follows_of:
        return
    if config.access.mode == "follows":
        raise ConfigError(f'{source}: access.mode: "follows" needs `did` (the operator) or access.follows_of')
    if config.atproto.follow == "follows":
        raise ConfigError(f'{source}: atproto.follow: "follows" needs `did` (the operator) or access.follows_of')


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load `path` (or the default), falling back to embedded defaults only for the default path.

    An explicitly named file that is missing is an error: the operator meant something.
    """
    env = os.environ if env is None else env
    explicit = path is not None or ENV_PREFIX + "CONFIG" in env
    path = Path(path or env.get(ENV_PREFIX + "CONFIG") or default_config_path(env)).expanduser()
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from None
        except OSError as error:
            raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    elif explicit:
        raise ConfigError(f"{path}: config file not found")
    data.setdefault("home", str(path.parent))
    return parse_config(data, str(path), env)
