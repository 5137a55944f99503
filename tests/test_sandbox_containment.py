"""Hostile bundles on real backends: each attack gets a clear error and the executor keeps serving."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from sandboxes import DefaultLimits, ExecResponse, Executor, Isolation, SandboxSettings, create_executor
from tests.test_sandbox_helpers import FULL, KEY_TEXT, Loopback, State, backend_params, call, make_state

pytestmark = pytest.mark.asyncio(loop_scope="session")

HELLO = """
export async function hello(args, ctx) { return { hello: args?.name ?? "world" }; }
"""


@pytest.fixture(scope="module", params=backend_params())
def backend(request: pytest.FixtureRequest) -> Isolation:
    return request.param


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory, backend: Isolation) -> State:
    return make_state(tmp_path_factory.mktemp(f"state-{backend}"))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def executor(backend: Isolation, state: State) -> AsyncIterator[Executor]:
    limits = DefaultLimits(memory_mb=128, pids=32, output_bytes=64 * 1024, timeout_s=5)
    ex = create_executor(SandboxSettings(state_dir=state.root, isolation=backend, limits=limits))
    yield ex
    await ex.shutdown()


def py_perms(backend: Isolation) -> dict[str, list[str]]:
    """Python enforces nothing: on `none` only a bundle asking for everything may run (no dev mode)."""
    return FULL if backend == "none" else {}


async def assert_serves(executor: Executor, state: State) -> None:
    path = state.bundle("hello", "main.ts", HELLO)
    response = await executor.execute(call(path, "hello", {"name": "still here"}))
    assert response.success, response.error
    assert response.data == {"hello": "still here"}


def assert_failed(response: ExecResponse, kind: str, *, leak: str | None = None) -> None:
    assert not response.success, response
    assert response.error_kind == kind, (response.error_kind, response.error)
    assert response.error
    if leak is not None:
        assert leak not in response.model_dump_json()


async def test_hello_and_http(executor: Executor, state: State) -> None:
    path = state.bundle("http", "main.ts", """
        export async function page(args, ctx) {
          const req = ctx.request;
          const url = new URL(req.url);
          const out = { method: req.method, path: url.pathname, a: url.searchParams.get("a"),
                        header: req.headers.get("x-test"), body: await req.text(), secret: ctx.env.TOKEN };
          return new Response(JSON.stringify(out), { status: 201, headers: { "x-out": "yes" } });
        }
        export function binary() { return new Response(new Uint8Array([0, 255, 1, 2])); }
    """)
    http = {"method": "POST", "path": "/p/q", "query": {"a": "1"}, "headers": {"x-test": "t"}, "body": "hi"}
    response = await executor.execute(call(path, "page", None, request=http, env={"TOKEN": "tok"}))
    assert response.success, response.error
    assert response.response is not None and response.response.status == 201
    assert response.response.headers["x-out"] == "yes"
    assert response.response.is_base64 is False
    import json

    assert json.loads(response.response.body) == {
        "method": "POST", "path": "/p/q", "a": "1", "header": "t", "body": "hi", "secret": "tok"
    }
    binary = await executor.execute(call(path, "binary", None, request={"method": "GET", "path": "/"}))
    assert binary.success and binary.response is not None
    assert binary.response.is_base64 and binary.response.body == "AP8BAg=="
    wire = response.to_wire()
    assert set(wire) >= {"success", "data", "response", "error", "errorKind", "metrics"}
    assert set(wire["metrics"]) == {"executionTimeMs", "coldStart"}


async def test_python_bundle_contract(executor: Executor, state: State, backend: Isolation) -> None:
    path = state.bundle("pyhello", "main.py", """
        import asyncio
        from at_run import Response

        def hello(args, ctx):
            return {"hello": args["name"], "secret": ctx.env.get("TOKEN")}

        async def page(args, ctx):
            await asyncio.sleep(0)
            return Response(202, {"x-py": "1"}, ctx.request.text().upper())
    """)
    perms = py_perms(backend)
    response = await executor.execute(call(path, "hello", {"name": "py"}, env={"TOKEN": "t"}, permissions=perms))
    assert response.success, response.error
    assert response.data == {"hello": "py", "secret": "t"}
    page = await executor.execute(
        call(path, "page", None, request={"method": "POST", "body": "abc"}, permissions=py_perms(backend))
    )
    assert page.success, page.error
    assert page.response is not None and (page.response.status, page.response.body) == (202, "ABC")


@pytest.mark.parametrize("lang", ["deno", "python"])
async def test_infinite_loop_times_out(executor: Executor, state: State, backend: Isolation, lang: str) -> None:
    if lang == "deno":
        path = state.bundle("spin", "main.ts", "export function spin() { for (;;) {} }")
        request = call(path, "spin", timeout=1)
    else:
        path = state.bundle("pyspin", "main.py", "def spin(args, ctx):\n    while True:\n        pass\n")
        request = call(path, "spin", timeout=1, permissions=py_perms(backend))
    start = time.monotonic()
    response = await executor.execute(request)
    assert_failed(response, "timeout")
    assert time.monotonic() - start < 3
    await assert_serves(executor, state)
    stats = await executor.stats()
    assert stats["bundles"][request.bundle_key]["warm"] == 0  # the spinning instance was not kept


@pytest.mark.parametrize("lang", ["deno", "python"])
async def test_memory_bomb_is_stopped(executor: Executor, state: State, backend: Isolation, lang: str) -> None:
    if lang == "deno":  # ArrayBuffers live outside the V8 heap: only the cgroup stops this
        path = state.bundle("membomb", "main.ts", """
            export function bomb() { const keep = []; for (;;) keep.push(new Uint8Array(8 << 20).fill(1)); }
        """)
        request = call(path, "bomb", limits={"memoryMb": 96})
    else:
        path = state.bundle("pymembomb", "main.py", """
            def bomb(args, ctx):
                keep = []
                while True:
                    keep.append(b"\\x01" * (8 << 20))
        """)
        request = call(path, "bomb", limits={"memoryMb": 96}, permissions=py_perms(backend))
    response = await executor.execute(request)
    assert_failed(response, "limitExceeded")
    assert "memory" in (response.error or "")
    await assert_serves(executor, state)


async def test_python_fork_bomb_is_refused(executor: Executor, state: State, backend: Isolation) -> None:
    path = state.bundle("forkbomb", "main.py", """
        import os

        def bomb(args, ctx):
            while True:
                os.fork()
    """)
    response = await executor.execute(call(path, "bomb", limits={"pids": 16}, permissions=py_perms(backend)))
    assert_failed(response, "limitExceeded")
    assert "process limit" in (response.error or "")
    await assert_serves(executor, state)


async def test_deno_cannot_spawn(executor: Executor, state: State) -> None:
    path = state.bundle("spawner", "main.ts", """
        export async function bomb() {
          for (;;) new Deno.Command("/bin/sh", { args: ["-c", "sleep 30"] }).spawn();
        }
    """)
    assert_failed(await executor.execute(call(path, "bomb", limits={"pids": 16})), "denied")
    await assert_serves(executor, state)


async def test_deno_reads_are_denied(executor: Executor, state: State) -> None:
    other = state.bundle("victim", "main.ts", "export const SECRET = 'VICTIM-BUNDLE-SECRET';\n")
    path = state.bundle("reader", "main.ts", """
        export async function read(args) { return await Deno.readTextFile(args.path); }
    """)
    targets = (("/etc/shadow", "root:"), (str(state.key_file), KEY_TEXT), (str(other), "VICTIM-BUNDLE-SECRET"))
    for target, leak in targets:
        assert_failed(await executor.execute(call(path, "read", {"path": target})), "denied", leak=leak)
    own = await executor.execute(call(path, "read", {"path": str(path)}))
    assert own.success and "readTextFile" in own.data  # its own code stays readable
    await assert_serves(executor, state)


@pytest.mark.parametrize("target", ["key", "shadow"])
async def test_literal_import_attack_fails(executor: Executor, state: State, target: str) -> None:
    secret = str(state.key_file) if target == "key" else "/etc/shadow"
    path = state.bundle(f"literal-{target}", "main.ts", f"""
        import stolen from "{secret}" with {{ type: "text" }};
        export function steal() {{ return stolen; }}
    """)
    response = await executor.execute(call(path, "steal"))
    assert_failed(response, "denied", leak=KEY_TEXT)
    assert "root:" not in response.model_dump_json()


async def test_state_dir_cannot_be_granted(executor: Executor, state: State) -> None:
    path = state.bundle("greedy", "main.ts", HELLO)
    response = await executor.execute(call(path, "hello", permissions={"read": [str(state.keys)]}))
    assert_failed(response, "denied")
    response = await executor.execute(call(path, "hello", permissions={"read": ["/"]}))
    assert_failed(response, "denied")


async def test_python_reads_fail_under_isolation(executor: Executor, state: State, backend: Isolation) -> None:
    if backend == "none":
        pytest.skip("none does not contain Python: it only runs Python bundles that asked for full access")
    other = state.bundle("pyvictim", "main.py", "SECRET = 'VICTIM-BUNDLE-SECRET'\n")
    path = state.bundle("pyreader", "main.py", "def read(args, ctx):\n    return open(args['path']).read()\n")
    targets = (("/etc/shadow", "root:"), (str(state.key_file), KEY_TEXT), (str(other), "VICTIM-BUNDLE-SECRET"))
    for target, leak in targets:
        response = await executor.execute(call(path, "read", {"path": target}))
        assert not response.success, response
        assert KEY_TEXT not in response.model_dump_json() and leak not in (response.error or "")


async def test_net_only_to_allowed_hosts(executor: Executor, state: State, backend: Isolation) -> None:
    path = state.bundle("fetcher", "main.ts", """
        export async function get(args) { const r = await fetch(args.url); return await r.text(); }
    """)
    async with Loopback(b"from-A") as allowed, Loopback(b"from-B") as other:
        perms = {"net": [f"127.0.0.1:{allowed.port}"]}
        ok = await executor.execute(call(path, "get", {"url": f"http://127.0.0.1:{allowed.port}/"}, permissions=perms))
        assert ok.success, ok.error
        assert ok.data == "from-A"
        url_b = f"http://127.0.0.1:{other.port}/"
        denied = await executor.execute(call(path, "get", {"url": url_b}, permissions=perms))
        assert_failed(denied, "denied", leak="from-B")
        none = await executor.execute(call(path, "get", {"url": f"http://127.0.0.1:{allowed.port}/"}))
        assert_failed(none, "denied", leak="from-A")
        if backend != "none":  # without net permissions there is no network at all, even for Python
            py = state.bundle("pynet", "main.py", """
                import socket

                def get(args, ctx):
                    with socket.create_connection(("127.0.0.1", args["port"]), timeout=2) as s:
                        s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
                        return s.recv(1000).decode()
            """)
            response = await executor.execute(call(py, "get", {"port": allowed.port}))
            assert not response.success and "from-A" not in response.model_dump_json()


async def test_env_holds_only_own_secrets(
    executor: Executor, state: State, backend: Isolation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AT_RUND_CANARY", "runner-env-leak")
    source = """
        export function env(args, ctx) {
          const probe = (n) => { try { return Deno.env.get(n) ?? null; } catch (e) { return "denied:" + e.name; } };
          return { ctx: ctx.env, mine: probe(args.mine), canary: probe("AT_RUND_CANARY"), other: probe(args.other) };
        }
    """
    a = state.bundle("env-a", "main.ts", source)
    b = state.bundle("env-b", "main.ts", source)
    ra = await executor.execute(call(a, "env", {"mine": "SECRET_A", "other": "SECRET_B"}, env={"SECRET_A": "a"}))
    rb = await executor.execute(call(b, "env", {"mine": "SECRET_B", "other": "SECRET_A"}, env={"SECRET_B": "b"}))
    assert ra.success and rb.success, (ra.error, rb.error)
    assert ra.data["ctx"] == {"SECRET_A": "a"} and ra.data["mine"] == "a"
    assert rb.data["ctx"] == {"SECRET_B": "b"} and rb.data["mine"] == "b"
    for data in (ra.data, rb.data):
        assert str(data["canary"]).startswith("denied:") and str(data["other"]).startswith("denied:")
    py = state.bundle("env-py", "main.py", "import os\n\ndef env(args, ctx):\n    return dict(os.environ)\n")
    rp = await executor.execute(call(py, "env", env={"SECRET_P": "p"}, permissions=py_perms(backend)))
    assert rp.success, rp.error
    assert rp.data["SECRET_P"] == "p"
    assert "AT_RUND_CANARY" not in rp.data and "SECRET_A" not in rp.data and "SECRET_B" not in rp.data
    assert set(rp.data) <= {"SECRET_P", "PATH", "HOME", "TMPDIR", "LANG", "PWD", "LC_CTYPE"}
    reserved = await executor.execute(call(a, "env", {}, env={"LD_PRELOAD": "/tmp/x.so"}))
    assert_failed(reserved, "invalid")


async def test_output_over_cap_is_cut(executor: Executor, state: State, backend: Isolation) -> None:
    path = state.bundle("big", "main.ts", """
        export function big(args) { return "x".repeat(args.n); }
        export function noisy() { for (let i = 0; i < 8; i++) console.log("y".repeat(1 << 20)); return "quiet"; }
    """)
    response = await executor.execute(call(path, "big", {"n": 100_000}, limits={"outputBytes": 10_000}))
    assert_failed(response, "limitExceeded")
    assert "cap" in (response.error or "")
    small = await executor.execute(call(path, "big", {"n": 10}, limits={"outputBytes": 10_000}))
    assert small.success and small.data == "x" * 10
    noisy = await executor.execute(call(path, "noisy"))  # 8 MiB of logs: drained and dropped, not fatal
    assert noisy.success and noisy.data == "quiet"
    # A Python bundle can write straight into the protocol stream: the runner's own cap cuts it.
    py = state.bundle("pyflood", "main.py", """
        import __main__

        def flood(args, ctx):
            __main__._protocol.write(b"z" * 200_000)
            return "done"
    """)
    flood = await executor.execute(call(py, "flood", limits={"outputBytes": 10_000}, permissions=py_perms(backend)))
    assert_failed(flood, "limitExceeded")
    await assert_serves(executor, state)


async def test_python_refused_on_none_without_full_access(executor: Executor, state: State, backend: Isolation) -> None:
    path = state.bundle("pyplain", "main.py", "def hello(args, ctx):\n    return 1\n")
    response = await executor.execute(call(path, "hello"))
    if backend == "none":
        assert_failed(response, "invalid")
        assert "dev mode" in (response.error or "") and "bwrap" in (response.error or "")
    else:
        assert response.success and response.data == 1


async def test_bad_requests_are_invalid(executor: Executor, state: State, tmp_path: Path) -> None:
    path = state.bundle("hello", "main.ts", HELLO)
    missing = await executor.execute(call(path, "nope"))
    assert_failed(missing, "invalid")
    unknown: Any = call(path, "hello").model_copy(update={"mime_type": "application/x-cobol"})
    assert_failed(await executor.execute(unknown), "invalid")
    gone = call(path, "hello").model_copy(update={"code_path": str(tmp_path / "missing.ts")})
    assert_failed(await executor.execute(gone), "invalid")
    results = await asyncio.gather(*(executor.execute(call(path, "hello", {"name": str(i)})) for i in range(6)))
    assert [r.data["hello"] for r in results] == [str(i) for i in range(6)]


@pytest.mark.parametrize("spares", [0, 1])
async def test_rlimits_apply_with_and_without_spares(state: State, backend: Isolation, spares: int) -> None:
    from sandboxes import PoolSettings

    path = state.bundle("rlimits", "main.py", """
        import resource as r

        def limits(args, ctx):
            return [r.getrlimit(x)[0] for x in (r.RLIMIT_CORE, r.RLIMIT_NOFILE, r.RLIMIT_FSIZE)]
    """)
    settings = SandboxSettings(state_dir=state.root, isolation=backend, pool=PoolSettings(spares=spares))
    ex = create_executor(settings)
    try:
        await ex.start()
        assert (await ex.stats())["spares"] == spares
        response = await ex.execute(call(path, "limits", permissions=py_perms(backend)))
        assert response.success, response.error
        assert response.data == [0, 1024, 1 << 30]
    finally:
        await ex.shutdown()
