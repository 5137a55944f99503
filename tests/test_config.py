"""Config loading: defaults, env overrides, and one-line errors that name the key and file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reactor.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults_when_default_file_missing(tmp_path: Path) -> None:
    config = load_config(env={"AT_RUND_HOME": str(tmp_path)})
    assert config.port == 3000
    assert config.access.mode == "open"
    assert config.home == tmp_path
    assert config.store_path == tmp_path / "at-rund.sqlite3"


def test_file_values_and_nested_env_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, 'did = "did:plc:abc"\nport = 4000\n[access]\nmode = "allowlist"\nallowlist = ["did:plc:x"]\n')
    config = load_config(path, env={
        "AT_RUND_PORT": "4100",
        "AT_RUND_ATPROTO__PASSWORD": "app-pw-zq9x",
        "AT_RUND_ACCESS__BLOCKLIST": '["did:plc:bad"]',
    })
    assert config.did == "did:plc:abc"
    assert config.port == 4100
    assert config.access.allowlist == ["did:plc:x"]
    assert config.access.blocklist == ["did:plc:bad"]
    assert config.atproto.password is not None
    assert config.atproto.password.get_secret_value() == "app-pw-zq9x"
    assert "app-pw-zq9x" not in repr(config)


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[access]\nmood = 'open'\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    assert str(error.value) == f"{path}: access.mood: unknown key"


def test_bad_type_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'port = "many"\n')
    with pytest.raises(ConfigError, match=rf"{path}: port: .*integer"):
        load_config(path, env={})


def test_bad_enum_value(tmp_path: Path) -> None:
    path = write(tmp_path, 'isolation = "vmware"\n')
    with pytest.raises(ConfigError, match="isolation"):
        load_config(path, env={})


def test_bad_did_in_list(tmp_path: Path) -> None:
    path = write(tmp_path, '[access]\nallowlist = ["alice"]\n')
    with pytest.raises(ConfigError, match=r"access\.allowlist: 'alice' is not a did"):
        load_config(path, env={})


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", env={})


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "port = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, env={})


def test_env_bad_value_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="limits.memory_mb"):
        load_config(env={"AT_RUND_HOME": str(tmp_path), "AT_RUND_LIMITS__MEMORY_MB": "lots"})


def test_cli_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[access]\nmood = 'open'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "reactor.cli", "keys", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"at-rund: config error: {path}: access.mood: unknown key"]
