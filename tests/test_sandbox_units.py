"""Sandbox edges without hostile bundles: wire names, runtime files, backend selection, cgroup parsing."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from sandboxes import (
    ExecRequest,
    ExecResponse,
    Executor,
    Isolation,
    SandboxSettings,
    SandboxUnavailable,
    available_backends,
    create_executor,
    list_runtimes,
)
from sandboxes.cgroups import parse_mountinfo, parse_proc_cgroup
from tests.test_sandbox_helpers import FULL, backend_params, call, make_state


def test_request_wire_names() -> None:
    raw = {
        "bundleKey": "at://did:plc:x/app.atrun.bundle/1#bafy",
        "mimeType": "application/javascript",
        "codePath": "/b/main.js",
        "endpoint": "hello",
        "args": {"a": 1},
        "permissions": {"net": ["example.com"], "read": [], "write": [], "env": ["TZ"]},
        "env": {"TOKEN": "x"},
        "timeout": 2.5,
        "limits": {"memoryMb": 64, "pids": 8, "outputBytes": 1024},
        "request": {
            "method": "POST", "path": "/x", "query": {"q": ["1", "2"]}, "headers": {}, "body": "aGk=", "isBase64": True
        },
    }
    request = ExecRequest.model_validate(raw)
    assert request.limits.memory_mb == 64 and request.request is not None
    assert request.request.query == "q=1&q=2"
    wire = request.to_wire()
    assert set(wire) == set(raw)
    assert set(wire["limits"]) == {"memoryMb", "pids", "outputBytes"}
    assert set(wire["request"]) == {"method", "path", "query", "headers", "body", "isBase64"}
    with pytest.raises(ValueError):
        ExecRequest.model_validate({**raw, "codepath": "/typo"})


def test_response_wire_names() -> None:
    response = ExecResponse.model_validate(
        {"success": True, "response": {"status": 200, "headers": {}, "body": "", "isBase64": False},
         "metrics": {"executionTimeMs": 1.5, "coldStart": True}, "id": 7}
    )
    assert set(response.to_wire()) == {"success", "data", "response", "error", "errorKind", "metrics"}
    failure = ExecResponse.failure("limitExceeded", "too big")
    assert failure.to_wire()["errorKind"] == "limitExceeded"


def test_cgroup_detection_parsing() -> None:
    mountinfo = textwrap.dedent("""\
        35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
        39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
        41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
        22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
    """)
    mounts = parse_mountinfo(mountinfo)
    assert [(m.fstype, str(m.point)) for m in mounts] == [
        ("cgroup", "/sys/fs/cgroup/memory"), ("cgroup", "/sys/fs/cgroup/pids"), ("cgroup2", "/sys/fs/cgroup/unified")
    ]
    v1, v2 = parse_proc_cgroup("8:pids:/\n4:memory:/svc/a\n1:cpu,cpuacct:/\n0::/user.slice/x.scope\n")
    assert v1["memory"] == "/svc/a" and v1["cpuacct"] == "/" and v2 == "/user.slice/x.scope"


def test_backend_selection() -> None:
    reasons = available_backends()
    assert set(reasons) == {"none", "bwrap", "container", "gvisor", "microvm", "wasm"}
    assert reasons["gvisor"] == "not implemented yet"
    with pytest.raises(SandboxUnavailable, match="not implemented"):
        create_executor(SandboxSettings(state_dir=Path("/nonexistent"), isolation="gvisor"))
    with pytest.raises(SandboxUnavailable, match="unknown"):
        create_executor(SandboxSettings(state_dir=Path("/nonexistent"), isolation="jail"))  # type: ignore[arg-type]
    auto = create_executor(SandboxSettings(state_dir=Path("/nonexistent"), isolation="auto"))
    assert isinstance(auto, Executor)
    assert auto.backend == ("bwrap" if reasons["bwrap"] is None else "none")


ECHO_HOST = """
import json, os, sys

message = json.loads(sys.stdin.readline())
reply = {"id": message["id"], "success": True,
         "data": {"endpoint": message["endpoint"], "args": message["args"], "env": sorted(os.environ)}}
sys.stdout.write(json.dumps(reply) + "\\n")
"""

ECHO_TOML = """
name = "echo"
mimeTypes = ["text/x-echo"]
binary = ["/usr/bin/python3", "python3"]
host = "echo_host.py"
command = ["{binary}", "-I", "{host}"]
warm = false
"""


def test_list_runtimes_with_operator_files(tmp_path: Path) -> None:
    runtimes = tmp_path / "runtimes"
    runtimes.mkdir()
    (runtimes / "echo.toml").write_text(ECHO_TOML)
    (runtimes / "echo_host.py").write_text(ECHO_HOST)
    ghost = ECHO_TOML.replace('"echo"', '"ghost"').replace('"/usr/bin/python3", "python3"', '"/no/such/bin"')
    (runtimes / "ghost.toml").write_text(ghost)
    (runtimes / "broken.toml").write_text("name = [")
    rows = {row.name: row for row in list_runtimes(SandboxSettings(state_dir=tmp_path, runtimes_dir=runtimes))}
    assert rows["deno"].available and rows["deno"].builtin and "application/typescript" in rows["deno"].mime_types
    assert rows["python"].available and not rows["python"].enforces_permissions
    assert rows["echo"].available and rows["echo"].source == str(runtimes / "echo.toml")
    assert not rows["ghost"].available and "/no/such/bin" in (rows["ghost"].reason or "")
    assert not rows["broken"].available and "broken.toml" in (rows["broken"].reason or "")
    assert json.loads(rows["echo"].model_dump_json(by_alias=True))["mimeTypes"] == ["text/x-echo"]


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("backend", backend_params())
async def test_operator_runtime_runs_one_shot(tmp_path: Path, backend: Isolation) -> None:
    state = make_state(tmp_path / "state")
    runtimes = state.root / "runtimes"
    runtimes.mkdir()
    (runtimes / "echo.toml").write_text(ECHO_TOML)
    (runtimes / "echo_host.py").write_text(ECHO_HOST)
    path = state.bundle("echo", "main.echo", "whatever")
    ex = create_executor(SandboxSettings(state_dir=state.root, isolation=backend, runtimes_dir=runtimes))
    try:
        perms = FULL if backend == "none" else {}  # enforces nothing: on none only full access may run
        request = call(path, "ping", {"n": 1}, env={"TOKEN": "x"}, mimeType="text/x-echo", permissions=perms)
        for _ in range(2):
            response = await ex.execute(request)
            assert response.success, response.error
            assert response.data["endpoint"] == "ping" and response.data["args"] == {"n": 1}
            assert "TOKEN" in response.data["env"] and response.metrics.cold_start  # one-shot: always cold
        stats = await ex.stats()
        assert stats["instances"] == 0 and stats["runtimes"]["echo"]["oneShot"] == 2
    finally:
        await ex.shutdown()


def test_policy_never_grants_kernel_views_or_system_writes(tmp_path: Path) -> None:
    from sandboxes.errors import Rejected
    from sandboxes.policy import Plan, make_plan
    from sandboxes.runtimes import load_runtimes

    state = make_state(tmp_path / "state")
    code = state.bundle("b", "main.ts", "export const x = 1;\n")
    settings = SandboxSettings(state_dir=state.root)
    runtimes = load_runtimes(None)

    def plan(**permissions: list[str]) -> Plan:
        return make_plan(call(code, "x", permissions=permissions), settings=settings, runtimes=runtimes, isolating=True)

    for permissions, kind in (
        ({"read": ["/proc"]}, "denied"), ({"read": ["/sys/kernel"]}, "denied"), ({"write": ["/usr/lib"]}, "denied"),
        ({"read": [str(state.root / "bundles")]}, "denied"), ({"write": [str(state.keys)]}, "denied"),
        ({"read": ["relative/path"]}, "invalid"), ({"net": ["a.com,b.com"]}, "invalid"),
    ):
        with pytest.raises(Rejected) as raised:
            plan(**permissions)
        assert raised.value.kind == kind, permissions
    out = str(tmp_path / "out")
    narrowed = plan(read=[str(code.parent / "data")], write=[out], net=["example.com:443"])
    assert narrowed.adoptable is False
    with pytest.raises(Rejected):
        plan(write=["/tmp"])  # an ancestor of the state dir
    assert plan().adoptable
    # The bundle's directory may never be the state dir itself (it would expose keys/).
    loose = state.root / "main.ts"
    loose.write_text("export const x = 1;\n")
    with pytest.raises(Rejected, match="state"):
        make_plan(call(loose, "x"), settings=settings, runtimes=runtimes, isolating=True)


def test_stale_cgroups_of_dead_runners_are_swept() -> None:
    from sandboxes.cgroups import CgroupManager

    try:
        manager = CgroupManager.detect()
    except SandboxUnavailable as error:
        pytest.skip(f"cgroups unavailable: {error}")
    dead_pid = 4_000_000  # above pid_max: never a live process
    stale = manager.create(f"{dead_pid}-1-1", memory_mb=64, pids=8)
    live = manager.create(f"{__import__('os').getpid()}-999-1", memory_mb=64, pids=8)
    try:
        assert manager.sweep_stale() >= 1
        assert not any(d.exists() for d in stale.unique_dirs)
        assert all(d.exists() for d in live.unique_dirs)
    finally:
        for cgroup in (stale, live):
            for directory in cgroup.unique_dirs:
                if directory.exists():
                    directory.rmdir()


@pytest.mark.asyncio(loop_scope="session")
async def test_dev_mode_runs_python_on_none_with_a_warning(tmp_path: Path) -> None:
    state = make_state(tmp_path / "state")
    path = state.bundle("pydev", "main.py", "def hello(args, ctx):\n    return 'dev'\n")
    ex = create_executor(SandboxSettings(state_dir=state.root, isolation="none", dev=True))
    try:
        response = await ex.execute(call(path, "hello"))
        assert response.success and response.data == "dev"
    finally:
        await ex.shutdown()
