"""`at-rund pool status|warm|drain` against a running server, through its token-guarded admin routes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.helpers import cli_env, free_port, run_cli


def wait_healthy(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            if httpx.get(f"http://127.0.0.1:{port}/xrpc/_health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not come up")


def test_pool_commands_talk_to_the_running_server(tmp_path: Path) -> None:
    assert run_cli(tmp_path, "init").returncode == 0
    port = free_port()
    (tmp_path / "config.toml").write_text(f'port = {port}\nisolation = "none"\n')
    proc = subprocess.Popen([sys.executable, "-m", "reactor.cli", "serve", "--dev"], env=cli_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_healthy(port, proc)
        token_file = tmp_path / "admin.token"
        assert token_file.stat().st_mode & 0o777 == 0o600

        status = run_cli(tmp_path, "pool", "status")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["backend"] == "none"

        warm = run_cli(tmp_path, "pool", "warm", "--runtime", "deno", "--count", "1")
        assert warm.returncode == 0, warm.stderr
        assert json.loads(warm.stdout)["warmed"] == "deno"

        # Without the token the admin routes refuse.
        denied = httpx.get(f"http://127.0.0.1:{port}/admin/pool/status", timeout=5)
        assert denied.status_code == 401 and denied.json()["error"] == "InvalidToken"

        drain = run_cli(tmp_path, "pool", "drain", "--timeout", "5")
        assert drain.returncode == 0, drain.stderr
        assert json.loads(drain.stdout)["drained"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_pool_status_without_a_server_fails_cleanly(tmp_path: Path) -> None:
    assert run_cli(tmp_path, "init").returncode == 0
    (tmp_path / "config.toml").write_text(f"port = {free_port()}\n")
    (tmp_path / "admin.token").write_text("x\n")
    out = run_cli(tmp_path, "pool", "status")
    assert out.returncode == 1 and "cannot reach the server" in out.stderr and "Traceback" not in out.stderr
