// at-run-exec host for Deno (trusted code; the bundle is not).
//
// Protocol: JSON lines on stdin, one JSON line per message on stdout, matched by `id`.
//   {"id": 1, "op": "load", "codePath": "/b/main.ts", "env": {...}}   -> {"id": 1, "success": true}
//   {"id": 2, "op": "call", "codePath": ..., "endpoint": "hello", "args": ..., "env": {...},
//    "request": {...}?, "limits": {"outputBytes": N}}                 -> an ExecResponse + "id"
//
// The bundle is loaded with a NON-literal dynamic import: Deno checks --allow-read on it and on
// everything it imports, whereas a main module's static imports (even
// `import x from "/etc/passwd" with {type: "text"}`) are read without any check.
//
// Bundle contract: `export async function name(args, ctx)`; ctx.env holds the bundle's secrets
// and permitted env vars; for HTTP calls ctx.request is a web `Request` (URL host is synthetic,
// path and query are the caller's). Return JSON, or a web `Response` for HTTP calls.

type HttpRequest = {
  method?: string;
  path?: string;
  query?: string;
  headers?: Record<string, string>;
  body?: string | null;
  isBase64?: boolean;
};
type Message = {
  id?: number;
  op?: "load" | "call";
  codePath: string;
  endpoint?: string;
  args?: unknown;
  env?: Record<string, string>;
  request?: HttpRequest | null;
  limits?: { outputBytes?: number | null };
};
type Reply = Record<string, unknown> & { id: number; success: boolean };

const stdout = Deno.stdout;
const stdin = Deno.stdin;
const encoder = new TextEncoder();

// Bundle output must not corrupt the protocol stream: console and Deno.stdout go to stderr.
for (const name of ["log", "info", "debug", "dir", "dirxml", "table", "trace", "group", "groupCollapsed"] as const) {
  // deno-lint-ignore no-explicit-any
  (console as any)[name] = console.error.bind(console);
}
Object.defineProperty(Deno, "stdout", { value: Deno.stderr, configurable: false, writable: false });

const modules = new Map<string, Promise<Record<string, unknown>>>();

function load(codePath: string): Promise<Record<string, unknown>> {
  let loading = modules.get(codePath);
  if (!loading) {
    const specifier = new URL("file://" + codePath).href; // computed: never statically analysable
    loading = import(specifier) as Promise<Record<string, unknown>>;
    modules.set(codePath, loading);
    loading.catch(() => modules.delete(codePath));
  }
  return loading;
}

function errorKind(error: unknown): string {
  const { name, message } = (error ?? {}) as { name?: string; message?: string };
  if (name === "NotCapable" || name === "PermissionDenied") return "denied";
  // Module loading reports permission failures as TypeError("Requires read access to ...").
  return /^Requires \w+ access to/.test(message ?? "") ? "denied" : "error";
}

function describe(error: unknown): string {
  if (error instanceof Error) return `${error.name}: ${error.message}`;
  try {
    return `thrown: ${JSON.stringify(error)}`;
  } catch {
    return `thrown: ${String(error)}`;
  }
}

function toBase64(bytes: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function fromBase64(text: string): Uint8Array {
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

function toRequest(r: HttpRequest): Request {
  const url = new URL(r.path || "/", "http://bundle.localhost");
  if (r.query) url.search = r.query;
  const method = (r.method || "GET").toUpperCase();
  const init: RequestInit = { method, headers: r.headers ?? {} };
  if (r.body != null && method !== "GET" && method !== "HEAD") {
    init.body = r.isBase64 ? fromBase64(r.body) : r.body;
  }
  return new Request(url, init);
}

async function fromResponse(res: Response): Promise<Record<string, unknown>> {
  const bytes = new Uint8Array(await res.arrayBuffer());
  const headers = Object.fromEntries(res.headers.entries());
  try {
    const body = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    return { status: res.status, headers, body, isBase64: false };
  } catch {
    return { status: res.status, headers, body: toBase64(bytes), isBase64: true };
  }
}

// Touching the `Response` global loads Deno's fetch machinery (~3 ms of a cold start): only
// do it when the result looks like one.
function isResponse(value: unknown): value is Response {
  return typeof value === "object" && value !== null && value.constructor?.name === "Response" &&
    value instanceof Response;
}

async function handle(msg: Message): Promise<Reply> {
  const id = msg.id ?? 0;
  try {
    if (msg.op === "load") {
      for (const [name, value] of Object.entries(msg.env ?? {})) Deno.env.set(name, value);
      await load(msg.codePath);
      return { id, success: true };
    }
    const mod = await load(msg.codePath);
    const endpoint = msg.endpoint ?? "";
    const fn = Object.hasOwn(mod, endpoint) ? mod[endpoint] : undefined;
    if (typeof fn !== "function") {
      return { id, success: false, errorKind: "invalid", error: `bundle exports no endpoint ${JSON.stringify(endpoint)}` };
    }
    const ctx = { env: { ...(msg.env ?? {}) }, request: msg.request ? toRequest(msg.request) : undefined };
    const result = await fn(msg.args ?? null, ctx);
    if (isResponse(result)) return { id, success: true, response: await fromResponse(result) };
    return { id, success: true, data: result === undefined ? null : result };
  } catch (error) {
    return { id, success: false, errorKind: errorKind(error), error: describe(error) };
  }
}

function encode(reply: Reply, cap: number | null | undefined): Uint8Array {
  let line: string;
  try {
    line = JSON.stringify(reply);
  } catch (error) {
    line = JSON.stringify({ id: reply.id, success: false, errorKind: "error", error: `result is not JSON: ${describe(error)}` });
  }
  let bytes = encoder.encode(line + "\n");
  if (cap && bytes.length > cap) {
    const error = `output of ${bytes.length} bytes exceeds the ${cap}-byte cap (cut)`;
    bytes = encoder.encode(JSON.stringify({ id: reply.id, success: false, errorKind: "limitExceeded", error }) + "\n");
  }
  return bytes;
}

let writing: Promise<void> = Promise.resolve();

function send(bytes: Uint8Array): Promise<void> {
  writing = writing.then(async () => {
    let offset = 0;
    while (offset < bytes.length) offset += await stdout.write(bytes.subarray(offset));
  });
  return writing;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (a.length === 0) return b.slice();
  const joined = new Uint8Array(a.length + b.length);
  joined.set(a);
  joined.set(b, a.length);
  return joined;
}

// Raw reads, not web streams: TextDecoderStream costs ~5 ms of every cold start.
async function serve(): Promise<void> {
  const inflight = new Set<Promise<void>>();
  const decoder = new TextDecoder();
  const chunk = new Uint8Array(64 * 1024);
  let buffer = new Uint8Array(0);
  for (;;) {
    const n = await stdin.read(chunk);
    if (n === null) break;
    buffer = concat(buffer, chunk.subarray(0, n));
    let newline: number;
    while ((newline = buffer.indexOf(10)) >= 0) {
      const line = decoder.decode(buffer.subarray(0, newline)).trim();
      buffer = buffer.slice(newline + 1);
      if (!line) continue;
      let msg: Message;
      try {
        msg = JSON.parse(line);
      } catch (error) {
        await send(encode({ id: 0, success: false, errorKind: "invalid", error: `bad message: ${describe(error)}` }, null));
        continue;
      }
      const task = handle(msg).then((reply) => send(encode(reply, msg.limits?.outputBytes)));
      inflight.add(task);
      task.finally(() => inflight.delete(task));
    }
  }
  await Promise.all(inflight);
  await writing;
  Deno.exit(0);
}

await serve();
