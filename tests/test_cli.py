"""The CLI as an operator meets it: init, keys, serve with health and a clean SIGTERM."""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
from atproto_crypto.did import parse_did_key

from tests.helpers import cli_env, free_port, run_cli


def test_init_creates_home_and_private_keys_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = run_cli(home, "init")
    assert first.returncode == 0, first.stderr
    for sub in ("runtimes", "bundles", "keys"):
        assert (home / sub).is_dir()
    assert (home / "config.toml").is_file()
    key_files = sorted((home / "keys").iterdir())
    assert len(key_files) == 2
    before = {p: p.read_bytes() for p in key_files}
    for path in key_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    (home / "config.toml").write_text((home / "config.toml").read_text() + "\n# operator edit\n")
    second = run_cli(home, "init")
    assert second.returncode == 0, second.stderr
    assert {p: p.read_bytes() for p in key_files} == before
    assert "# operator edit" in (home / "config.toml").read_text()


def test_keys_prints_did_keys(tmp_path: Path) -> None:
    assert run_cli(tmp_path, "init").returncode == 0
    out = run_cli(tmp_path, "keys", "--json")
    assert out.returncode == 0, out.stderr
    import json

    keys = json.loads(out.stdout)
    assert keys["encryptionKey"].startswith("did:key:z6LS")
    assert parse_did_key(keys["signingKey"]).jwt_alg == "ES256K"


def test_keys_without_init_fails_cleanly(tmp_path: Path) -> None:
    out = run_cli(tmp_path, "keys")
    assert out.returncode == 1
    assert "run `at-rund init`" in out.stderr
    assert "Traceback" not in out.stderr


def test_every_command_has_help(tmp_path: Path) -> None:
    for args in (["--help"], ["init", "--help"], ["serve", "--help"], ["keys", "--help"],
                 ["runtime", "--help"], ["runtime", "list", "--help"], ["access", "list", "--help"],
                 ["pool", "status", "--help"], ["pool", "warm", "--help"], ["pool", "drain", "--help"],
                 ["seal", "--help"], ["grant", "--help"], ["verify", "--help"]):
        out = run_cli(tmp_path, *args)
        assert out.returncode == 0, (args, out.stderr)
        assert "usage:" in out.stdout


def test_unknown_command_is_usage_error(tmp_path: Path) -> None:
    out = run_cli(tmp_path, "frobnicate")
    assert out.returncode == 2
    assert "invalid choice" in out.stderr


def test_serve_answers_health_and_stops_on_sigterm(tmp_path: Path) -> None:
    assert run_cli(tmp_path, "init").returncode == 0
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "reactor.cli", "serve", "--dev", "--port", str(port)],
        env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        body = None
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/xrpc/_health", timeout=1)
                body = response.json()
                break
            except httpx.TransportError:
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
        assert body is not None, proc.stderr.read() if proc.stderr else ""
        assert response.status_code == 200
        assert body["store"] == "ok" and body["version"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        _, err = proc.communicate()
        assert "daemon.stopped" in err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
