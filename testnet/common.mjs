// Shared plumbing for the loopback test network processes (plc.mjs, pds.mjs).
import dns from 'node:dns'
import net from 'node:net'

export const HOST = '127.0.0.1'

// URLs use "localhost"; make sure it resolves to the IPv4 loopback we bind to.
dns.setDefaultResultOrder('ipv4first')

// The atproto/PLC libraries log with pino to stdout when LOG_ENABLED is set.
// stdout carries our one-line JSON handshake, so route logs to stderr. Must be
// set before the libraries are loaded (they read it at require time).
process.env.LOG_DESTINATION ??= '/dev/stderr'

/**
 * Make an express app's `listen(port)` bind to loopback only. Both PlcServer
 * and PDS call `this.app.listen(port)`, which would bind all interfaces.
 */
export function bindToLoopback(app) {
  const listen = app.listen.bind(app)
  app.listen = (port, ...rest) => listen(port, HOST, ...rest)
}

/** Ask the kernel for a currently free loopback TCP port. */
export async function freePort() {
  const srv = net.createServer()
  await new Promise((resolve, reject) => {
    srv.once('error', reject)
    srv.listen(0, HOST, resolve)
  })
  const { port } = srv.address()
  await new Promise((resolve) => srv.close(resolve))
  return port
}

/** Command-line options every testnet process accepts. */
export const COMMON_OPTIONS = {
  port: { type: 'string', default: '0' },
  'watch-stdin': { type: 'boolean', default: false },
}

/** The single JSON line the Python harness waits for on stdout. */
export function announce(info) {
  process.stdout.write(JSON.stringify(info) + '\n')
}

/**
 * Run `stop` once on SIGTERM/SIGINT, then exit. With `watchStdin` (the
 * `--watch-stdin` flag), also stop when stdin closes: the parent holds the
 * pipe, so its death without signalling us cannot leave an orphaned server.
 */
export function stopOn(stop, { watchStdin = false } = {}) {
  let stopping = false
  const shutdown = async (why) => {
    if (stopping) return
    stopping = true
    const timer = setTimeout(() => process.exit(1), 10_000)
    timer.unref()
    try {
      await stop()
    } catch (err) {
      console.error(`error during shutdown (${why}):`, err)
      process.exit(1)
    }
    process.exit(0)
  }
  process.on('SIGTERM', () => shutdown('SIGTERM'))
  process.on('SIGINT', () => shutdown('SIGINT'))
  if (watchStdin) {
    process.stdin.on('end', () => shutdown('stdin closed'))
    process.stdin.on('error', () => shutdown('stdin error'))
    process.stdin.resume()
  }
}

/** Print a fatal startup error to stderr and exit non-zero. */
export function die(err) {
  console.error(err?.stack ?? String(err))
  process.exit(1)
}
