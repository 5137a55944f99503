#!/usr/bin/env node
// Validate at-rund's lexicons with the reference implementation
// (@atproto/lexicon) and check sample data against them.
//
//   node testnet/validate-lexicons.mjs [samples.json]
//
// Loads every lexicons/**/*.json into a Lexicons set (lex.add), then validates
// samples: the built-in ones below, or those in samples.json, a JSON array of
//   { "name": str, "nsid": str, "kind": "record" | "input" | "output" | "def",
//     "value": <atproto JSON>, "valid": bool, "jsValid"?: bool }
// ("jsValid" overrides "valid" where @atproto/lexicon is knowingly more lenient
// than at-rund's Python validator, e.g. blob accept/maxSize, which only the PDS
// enforces). Exits non-zero on any failure.

import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Lexicons, jsonToLex } from '@atproto/lexicon'

const here = path.dirname(fileURLToPath(import.meta.url))
const root = path.resolve(here, '..', 'lexicons')

// Used when lexicons/ does not carry its own copy.
const STRONG_REF = {
  lexicon: 1,
  id: 'com.atproto.repo.strongRef',
  description: 'A URI with a content-hash fingerprint.',
  defs: {
    main: {
      type: 'object',
      required: ['uri', 'cid'],
      properties: {
        uri: { type: 'string', format: 'at-uri' },
        cid: { type: 'string', format: 'cid' },
      },
    },
  },
}

let failures = 0
const fail = (msg) => {
  failures++
  console.log(`FAIL ${msg}`)
}

function* walk(dir) {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name)
    if (entry.isDirectory()) yield* walk(p)
    else if (entry.name.endsWith('.json')) yield p
  }
}

const lex = new Lexicons()
const ids = []
for (const file of [...walk(root)].sort()) {
  const rel = path.relative(root, file)
  let doc
  try {
    doc = JSON.parse(fs.readFileSync(file, 'utf8'))
    lex.add(doc)
  } catch (err) {
    fail(`${rel}: ${err.message}`)
    continue
  }
  ids.push(doc.id)
  const expected = rel.replace(/\.json$/, '').split(path.sep).join('.')
  if (doc.id !== expected) fail(`${rel}: id ${doc.id} does not match its path (${expected})`)
  if (doc.id.startsWith('dev.atrun.')) {
    if (!doc.defs.main) fail(`${doc.id}: no main definition`)
    else if (!doc.defs.main.description) fail(`${doc.id}#main: no description`)
  }
  console.log(`ok   loaded ${doc.id}`)
}
if (!ids.includes(STRONG_REF.id)) {
  lex.add(STRONG_REF)
  console.log(`ok   loaded ${STRONG_REF.id} (built-in copy)`)
}
if (!ids.some((id) => id.startsWith('dev.atrun.'))) fail(`no dev.atrun lexicons under ${root}`)

// -- samples -----------------------------------------------------------------

const DID = 'did:plc:ewvi7nxzyoun6zhxrhs64oiz'
const RUNNER = 'did:plc:w4xbfzo7kqfes5zb7r6qv3rw'
const CID = 'bafyreidfayvfuwqa7qlnopdjiqrxzs6blmoeu4rujcjtnci5beludirz2a'
const BLOB_CID = 'bafkreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy'
const NOW = '2024-11-24T04:08:00.000Z'
const bundleRef = { uri: `at://${DID}/dev.atrun.bundle/hello`, cid: CID }
const sig64 = { $bytes: Buffer.alloc(64, 7).toString('base64').replace(/=+$/, '') }
const code = { $type: 'blob', ref: { $link: BLOB_CID }, mimeType: 'text/javascript', size: 120 }

const builtin = [
  {
    name: 'bundle: full',
    nsid: 'dev.atrun.bundle',
    kind: 'record',
    valid: true,
    value: {
      $type: 'dev.atrun.bundle',
      name: 'hello',
      code,
      runtime: 'text/javascript',
      endpoints: ['main'],
      permissions: { net: ['example.com:443'], read: [], write: [], env: ['TOKEN'] },
      limits: { memoryMb: 128, timeoutMs: 5000 },
      secrets: [{ runner: RUNNER, box: { $bytes: 'c2VjcmV0' } }],
      sandboxClass: 'small',
      prewarm: true,
      createdAt: NOW,
    },
  },
  {
    name: 'bundle: missing code',
    nsid: 'dev.atrun.bundle',
    kind: 'record',
    valid: false,
    value: { $type: 'dev.atrun.bundle', name: 'hello', createdAt: NOW },
  },
  {
    name: 'invocation',
    nsid: 'dev.atrun.invocation',
    kind: 'record',
    valid: true,
    value: {
      $type: 'dev.atrun.invocation',
      runner: RUNNER,
      bundle: bundleRef,
      endpoint: 'main',
      args: { n: 3 },
      createdAt: NOW,
    },
  },
  {
    name: 'result',
    nsid: 'dev.atrun.result',
    kind: 'record',
    valid: true,
    value: {
      $type: 'dev.atrun.result',
      invocation: { uri: `at://${DID}/dev.atrun.invocation/3kbqjxtpqc42c`, cid: CID },
      bundle: bundleRef,
      runner: RUNNER,
      status: 'success',
      output: { value: 6 },
      metrics: { durationMs: 12, coldStart: false, queuedMs: 0 },
      createdAt: NOW,
      sig: sig64,
    },
  },
  {
    name: 'result: short sig',
    nsid: 'dev.atrun.result',
    kind: 'record',
    valid: false,
    value: {
      $type: 'dev.atrun.result',
      invocation: { uri: `at://${DID}/dev.atrun.invocation/3kbqjxtpqc42c`, cid: CID },
      bundle: bundleRef,
      runner: RUNNER,
      status: 'error',
      createdAt: NOW,
      sig: { $bytes: 'AAAA' },
    },
  },
  {
    name: 'runner',
    nsid: 'dev.atrun.runner',
    kind: 'record',
    valid: true,
    value: {
      $type: 'dev.atrun.runner',
      endpoint: 'https://runner.example.com',
      runtimes: ['text/javascript', 'application/wasm'],
      isolation: 'gvisor',
      sandboxClasses: ['small'],
      access: 'open',
      encryptionKey: 'did:key:z6LSeu9HkTHSfLLeUs2nnzUSNedgDUevfNQgQjQC23ZCit6F',
      signingKey: 'did:key:zDnaembgSGUhZULN2Caob4HLJPaxBh92N7rtH21TErzqf8HQo',
      createdAt: NOW,
    },
  },
  {
    name: 'grant',
    nsid: 'dev.atrun.grant',
    kind: 'record',
    valid: true,
    value: { $type: 'dev.atrun.grant', runner: RUNNER, box: { $bytes: 'Ym94' }, createdAt: NOW },
  },
  {
    name: 'grant: runner not a did',
    nsid: 'dev.atrun.grant',
    kind: 'record',
    valid: false,
    value: { $type: 'dev.atrun.grant', runner: 'alice', box: { $bytes: 'Ym94' }, createdAt: NOW },
  },
  {
    name: 'invoke input',
    nsid: 'dev.atrun.invoke',
    kind: 'input',
    valid: true,
    value: { bundle: bundleRef.uri, cid: CID, endpoint: 'main', args: {} },
  },
  {
    name: 'invoke output',
    nsid: 'dev.atrun.invoke',
    kind: 'output',
    valid: true,
    value: { status: 'timeout', error: 'timed out', metrics: { durationMs: 5000 } },
  },
  {
    name: 'describeRunner output',
    nsid: 'dev.atrun.describeRunner',
    kind: 'output',
    valid: true,
    value: {
      did: RUNNER,
      endpoint: 'https://runner.example.com',
      runtimes: ['text/javascript'],
      access: 'follows',
      encryptionKey: 'did:key:z6LSeu9HkTHSfLLeUs2nnzUSNedgDUevfNQgQjQC23ZCit6F',
      signingKey: 'did:key:zDnaembgSGUhZULN2Caob4HLJPaxBh92N7rtH21TErzqf8HQo',
      limits: { memoryMb: 512, timeoutMs: 30000, pids: 64, outputBytes: 1048576 },
    },
  },
]

let samples = builtin
if (process.argv[2]) {
  samples = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
}

function check(sample) {
  const value = jsonToLex(sample.value)
  switch (sample.kind ?? 'record') {
    case 'record':
      return lex.assertValidRecord(sample.nsid, value)
    case 'input':
      return lex.assertValidXrpcInput(sample.nsid, value)
    case 'output':
      return lex.assertValidXrpcOutput(sample.nsid, value)
    case 'def':
      return lex.assertValid(sample.nsid, value)
    default:
      throw new Error(`unknown sample kind ${sample.kind}`)
  }
}

let checked = 0
for (const sample of samples) {
  const expected = sample.jsValid ?? sample.valid
  let error = null
  try {
    check(sample)
  } catch (err) {
    error = err
  }
  checked++
  const label = `${sample.nsid} ${sample.kind ?? 'record'}: ${sample.name}`
  if (error && !(error.name === 'ValidationError' || error.constructor?.name === 'ValidationError')) {
    fail(`${label}: unexpected ${error.name}: ${error.message}`)
  } else if (expected && error) {
    fail(`${label}: expected valid, got ${error.message}`)
  } else if (!expected && !error) {
    fail(`${label}: expected invalid, but it validated`)
  } else {
    console.log(`ok   ${label}${error ? ` (rejected: ${error.message})` : ''}`)
  }
}

console.log(`${ids.length} lexicons, ${checked} samples, ${failures} failures`)
process.exit(failures ? 1 : 0)
