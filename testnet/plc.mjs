// Reference did:plc directory (@did-plc/server) with an in-memory database,
// bound to 127.0.0.1. Usage: node plc.mjs [--port N (0 = any free port)] [--watch-stdin]
// Prints {"url": "http://localhost:PORT", "port": PORT, "pid": PID} when ready.
import { createRequire } from 'node:module'
import { parseArgs } from 'node:util'
import { COMMON_OPTIONS, bindToLoopback, announce, stopOn, die } from './common.mjs'

const require = createRequire(import.meta.url)

async function main() {
  const { values } = parseArgs({ options: COMMON_OPTIONS })
  const plc = require('@did-plc/server')
  const server = plc.PlcServer.create({ db: plc.Database.mock(), port: Number(values.port) })
  bindToLoopback(server.app)
  const http = await server.start()
  const { port } = http.address()
  stopOn(() => server.destroy(), { watchStdin: values['watch-stdin'] })
  announce({ url: `http://localhost:${port}`, port, pid: process.pid })
}

main().catch(die)
