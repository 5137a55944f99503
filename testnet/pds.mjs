// @atproto/pds in dev mode (SQLite + disk blobstore under --data-dir), bound
// to 127.0.0.1. Restartable: secrets are persisted in the data dir so sessions
// and the PLC rotation key survive a stop/start on the same port and dir.
// Usage: node pds.mjs --data-dir DIR --plc-url http://localhost:N [--port N] [--watch-stdin]
// Prints {"url": "http://localhost:PORT", "port": PORT, "did", "pid"} when ready.
import crypto from 'node:crypto'
import fs from 'node:fs/promises'
import path from 'node:path'
import { createRequire } from 'node:module'
import { parseArgs } from 'node:util'
import { COMMON_OPTIONS, bindToLoopback, freePort, announce, stopOn, die } from './common.mjs'

const require = createRequire(import.meta.url)

/** Load secrets from the data dir, creating them on first boot. */
async function loadSecrets(dataDir) {
  const file = path.join(dataDir, 'testnet-secrets.json')
  try {
    return JSON.parse(await fs.readFile(file, 'utf8'))
  } catch (err) {
    if (err.code !== 'ENOENT') throw err
  }
  const secrets = {
    jwtSecret: crypto.randomBytes(16).toString('hex'),
    adminPassword: 'admin-pass',
    // Any 32 random bytes are a valid secp256k1 private key (w.p. ~1 - 2^-128).
    plcRotationKeyK256PrivateKeyHex: crypto.randomBytes(32).toString('hex'),
    dpopSecret: crypto.randomBytes(32).toString('hex'),
  }
  await fs.writeFile(file, JSON.stringify(secrets, null, 2), { mode: 0o600 })
  return secrets
}

async function main() {
  const { values } = parseArgs({
    options: {
      ...COMMON_OPTIONS,
      'data-dir': { type: 'string' },
      'plc-url': { type: 'string' },
    },
  })
  const dataDir = values['data-dir']
  const plcUrl = values['plc-url']
  if (!dataDir || !plcUrl) throw new Error('--data-dir and --plc-url are required')
  await fs.mkdir(dataDir, { recursive: true })
  // publicUrl (and so DID docs) embed the port, so it must be fixed up front.
  const port = Number(values.port) || (await freePort())

  const { PDS, envToCfg, envToSecrets } = require('@atproto/pds')
  // Mirrors @atproto/dev-env's TestPds, minus the (non-existent) appview,
  // mod service and external URLs: nothing here talks to the internet.
  const env = {
    devMode: true,
    hostname: 'localhost',
    port,
    dataDirectory: dataDir,
    blobstoreDiskLocation: path.join(dataDir, 'blobs'),
    blobstoreDiskTmpLocation: path.join(dataDir, 'blobs-tmp'),
    didPlcUrl: plcUrl,
    serviceHandleDomains: ['.test'],
    inviteRequired: false,
    rateLimitsEnabled: false,
    disableSsrfProtection: true,
    crawlers: [],
    serviceName: 'at-rund test PDS',
    ...(await loadSecrets(dataDir)),
  }
  const server = await PDS.create(envToCfg(env), envToSecrets(env))
  bindToLoopback(server.app)
  await server.start()
  stopOn(() => server.destroy(), { watchStdin: values['watch-stdin'] })
  announce({ url: `http://localhost:${port}`, port, did: server.ctx.cfg.service.did, pid: process.pid })
}

main().catch(die)
