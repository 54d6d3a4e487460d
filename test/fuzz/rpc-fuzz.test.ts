// RPC fuzz suite: fast-check requests generated from the proto descriptors (test/fuzz/generate.ts)
// against ONE real daemon with real backends (libvirt test driver, metadata-only LVM, single-node
// Ceph, qemu-img), over mutual TLS as the bootstrap admin (past RBAC) and as a principal with no
// role. After every call:
//  - no INTERNAL or UNKNOWN, and no DEADLINE_EXCEEDED (the deadline is generous; waits are bounded by it);
//  - every INVALID_ARGUMENT names a request field ("field.path: problem") and carries its trace id;
//  - no error message longer than 1 KiB;
//  - the daemon is still running.
// After the run: the daemon answers, and every host command it spawned (DEBVISOR_EXEC_TRACE) is
// free of text the validators refuse (test/fuzz/argv.ts).
// FUZZ_CASES (default 2,000; `npm run fuzz`: 50,000) calls in FUZZ_LANES (default 4) concurrent
// fast-check runs seeded FUZZ_SEED + lane (default seed 1919; FUZZ_SEED=random picks one). A
// failure prints the seed, lane and case: FUZZ_SEED=<seed> replays the same requests.
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fromBinary, type DescField, type DescMessage, type DescMethod } from '@bufbuild/protobuf';
import { Metadata, status as Status, type Client, type StatusObject } from '@grpc/grpc-js';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { NodeService } from '../../src/gen/debvisor/v1/node_pb.js';
import { StorageService } from '../../src/gen/debvisor/v1/storage_pb.js';
import { StorageBackend } from '../../src/gen/debvisor/v1/storage_types_pb.js';
import { VmService } from '../../src/gen/debvisor/v1/vm_pb.js';
import { API_SERVICES } from '../../src/services/registry.js';
import { startCeph, type TestCeph } from '../support/ceph.js';
import { clientFor, rawClientFor, rawUnary, startDaemon, type ClientPem, type RunningDaemon } from '../support/daemon.js';
import { defineTestDomain, startLibvirt, type TestLibvirt } from '../support/libvirt.js';
import { startLvm, type TestLvm } from '../support/lvm.js';
import { issueClientFor } from '../support/security.js';
import { MIB, NO_RATE_LIMITS, storageBackendsEnv } from '../support/storage.js';
import { argvProblems, type TracedCommand } from './argv.js';
import { callArb, describeCall, stringsOf, type FuzzCall, type FuzzContext } from './generate.js';

const CASES = Number(process.env.FUZZ_CASES ?? 2000);
const LANES = Math.max(1, Number(process.env.FUZZ_LANES ?? 4));
const SEED = process.env.FUZZ_SEED === 'random' ? Math.floor(Math.random() * 2 ** 31) : Number(process.env.FUZZ_SEED ?? 1919);
/** Generous: every call of the fixture finishes far sooner, and server-side waits end before it. */
const CALL_DEADLINE_MS = 60_000;
const MAX_DETAILS_BYTES = 1024;
const POOL = 'fuzz-pool';
const NO_ROLE = 'spiffe://debvisor/fuzz/no-role';
const T = { timeoutMs: 30_000 };

let ceph: TestCeph;
let lvm: TestLvm;
let libvirt: TestLibvirt;
let daemon: RunningDaemon;
let dir: string;
let traceFile: string;
let noRole: ClientPem;
const clients: { close(): void }[] = [];

beforeAll(async () => {
  [ceph, lvm, libvirt] = await Promise.all([startCeph({ pools: [POOL] }), startLvm({ sizeMiB: 256 }), startLibvirt()]);
  await defineTestDomain(libvirt, 'vm1', '555555555555');
  await defineTestDomain(libvirt, 'web-1', '000000000001');
  dir = await mkdtemp(join(tmpdir(), 'debvisor-fuzz-'));
  await mkdir(join(dir, 'images', 'linux'), { recursive: true });
  await writeFile(join(dir, 'images', 'disk.raw'), Buffer.alloc(1024 * 1024, 0x5a));
  traceFile = join(dir, 'exec-trace.jsonl');
  daemon = await startDaemon({
    env: { ...storageBackendsEnv({ cephConf: ceph.conf, pools: [POOL], lvm, imagesDir: join(dir, 'images'), libvirtUri: libvirt.uri }), DEBVISOR_EXEC_TRACE: traceFile },
    config: {
      ...NO_RATE_LIMITS,
      node: { name: 'fuzz-node' },
      // Migration targets are libvirts that do not exist: a migration fails at once, on this machine.
      migration: { target_uri_template: `test+unix:///default?socket=${join(dir, 'nodes')}/{hostname}/libvirt-sock` },
    },
  });
  noRole = await issueClientFor(daemon.pki, NO_ROLE);

  // Things for near-valid requests to find: volumes on both backends, snapshots, nodes.
  const storage = await clientFor(StorageService, daemon);
  const vms = await clientFor(VmService, daemon);
  const nodes = await clientFor(NodeService, daemon);
  clients.push(storage, vms, nodes);
  for (const backend of [StorageBackend.RBD, StorageBackend.LVM]) {
    const pool = backend === StorageBackend.RBD ? POOL : lvm.vg;
    await storage.createVolume({ volume: { backend, pool, name: 'vol-a' }, sizeBytes: 8n * MIB }, T);
  }
  await storage.createSnapshot({ dataset: { backend: StorageBackend.RBD, pool: POOL, name: 'vol-a' }, snapshotName: 'snap-a' }, T);
  await vms.createVmSnapshot({ vmName: 'vm1', snapshotName: 'snap-a' }, T);
  for (const hostname of ['node-a', 'node-b']) await nodes.registerNode({ hostname, ip: '10.0.0.1' }, T);
});

afterAll(async () => {
  for (const c of clients) c.close();
  await (daemon as RunningDaemon | undefined)?.cleanup();
  await Promise.all([(ceph as TestCeph | undefined)?.stop(), (lvm as TestLvm | undefined)?.stop(), (libvirt as TestLibvirt | undefined)?.stop()]);
  if (dir) await rm(dir, { recursive: true, force: true });
});

interface Outcome {
  readonly status: StatusObject;
  readonly responses: Buffer[];
}

function serverStream(client: Client, path: string, body: Buffer): Promise<Outcome> {
  return new Promise((resolve) => {
    const responses: Buffer[] = [];
    const call = client.makeServerStreamRequest<Buffer, Buffer>(path, (v) => v, (v) => v, body, new Metadata(), { deadline: Date.now() + CALL_DEADLINE_MS });
    call.on('data', (chunk: Buffer) => responses.push(chunk));
    call.on('error', () => undefined);
    // WatchEvents never ends by itself: once accepted (response headers, so past validation) it counts as OK.
    if (path.endsWith('/WatchEvents')) {
      call.on('metadata', (metadata: Metadata) => {
        resolve({ status: { code: Status.OK, details: 'stream opened', metadata }, responses });
        call.cancel();
      });
    }
    call.on('status', (status: StatusObject) => resolve({ status, responses }));
  });
}

async function invoke(client: Client, call: FuzzCall): Promise<Outcome> {
  const path = `/${call.method.parent.typeName}/${call.method.name}`;
  const body = Buffer.from(call.body.bytes);
  if (call.method.methodKind === 'server_streaming') return serverStream(client, path, body);
  const result = await rawUnary(client, path, body, {}, CALL_DEADLINE_MS);
  return { status: result.status, responses: result.response ? [result.response] : [] };
}

/** Whether "a.b[3].c" or "tags[k.v]" is a field path of `message` (or "request", the body as a whole). */
function isFieldPath(message: DescMessage, path: string): boolean {
  if (path === 'request') return true;
  const segment = /([a-z_][a-z0-9_]*)(?:\[[^\]]*\])?(\.|$)/y;
  let current: DescMessage | undefined = message;
  while (segment.lastIndex < path.length) {
    const match = segment.exec(path);
    const field: DescField | undefined = match ? current?.fields.find((f) => f.name === match[1]) : undefined;
    if (!match || !field) return false;
    current = field.message;
  }
  return true;
}

/** The property violations of one answer. */
function problemsOf(method: DescMethod, status: StatusObject): string[] {
  const problems: string[] = [];
  const name = Status[status.code];
  if (status.code === Status.INTERNAL || status.code === Status.UNKNOWN || status.code === Status.DEADLINE_EXCEEDED) problems.push(`${name}: ${status.details.slice(0, 300)}`);
  if (Buffer.byteLength(status.details) > MAX_DETAILS_BYTES) problems.push(`${name} message of ${Buffer.byteLength(status.details)} bytes`);
  if (status.code === Status.INVALID_ARGUMENT) {
    const field = /^([a-z_][a-z0-9_]*(?:\[[^\]]*\])?(?:\.[a-z_][a-z0-9_]*(?:\[[^\]]*\])?)*): /.exec(status.details)?.[1];
    if (field === undefined || !isFieldPath(method.input, field)) problems.push(`INVALID_ARGUMENT naming no field of ${method.input.name}: ${status.details.slice(0, 300)}`);
    if (!/\(trace_id=[^)]+\)$/.test(status.details)) problems.push(`INVALID_ARGUMENT without a trace id: ${status.details.slice(0, 300)}`);
  }
  return problems;
}

/** Ids in replies (operations, API keys) that later requests can name. */
function learn(ctx: FuzzContext, method: DescMethod, responses: Buffer[]): void {
  const visit = (value: unknown): void => {
    if (typeof value !== 'object' || value === null) return;
    const record = value as Record<string, unknown>;
    if (record.$typeName === 'debvisor.v1.Operation' && typeof record.id === 'string' && ctx.learned.operationIds.length < 500) ctx.learned.operationIds.push(record.id);
    if (record.$typeName === 'debvisor.v1.ApiKey' && typeof record.keyId === 'string' && ctx.learned.keyIds.length < 500) ctx.learned.keyIds.push(record.keyId);
    for (const item of Object.values(record)) if (typeof item === 'object') visit(item);
  };
  for (const bytes of responses) {
    try {
      visit(fromBinary(method.output, bytes));
    } catch {
      // Not ours to judge here: a reply that does not decode shows up in the typed suites.
    }
  }
}

interface Finding {
  readonly where: string;
  readonly call: string;
  readonly problem: string;
  readonly logs: string;
}

describe('RPC fuzz against a real daemon with libvirt (test driver), LVM and Ceph', () => {
  it(`${CASES} generated calls: no INTERNAL/UNKNOWN, fields named, messages bounded, no crash, clean argv`, { timeout: Math.max(600_000, CASES * 400) }, async () => {
    const methods = API_SERVICES.flatMap((service) => service.methods).filter((m) => m.methodKind === 'unary' || m.methodKind === 'server_streaming');
    expect(methods.length).toBeGreaterThanOrEqual(46);
    const ctx: FuzzContext = {
      vmNames: ['vm1', 'web-1'],
      vg: lvm.vg,
      cephPool: POOL,
      volumes: ['vol-a', 'vol-b', 'vol-c'],
      snapshots: ['snap-a', 'snap-b'],
      principals: [daemon.pki.adminPrincipal, NO_ROLE, 'spiffe://debvisor/fuzz/other'],
      hostnames: ['node-a', 'node-b', 'fuzz-node', 'no-such-node'],
      imagePaths: ['disk.raw', 'linux', 'missing.raw', '../disk.raw', '/etc/passwd', 'linux/../disk.raw'],
      learned: { operationIds: [], keyIds: [] },
    };
    const admin = await rawClientFor(daemon);
    const stranger = await rawClientFor(daemon, noRole);
    clients.push(admin, stranger);
    const sent = new Set<string>();
    const findings: Finding[] = [];
    const codes = new Map<string, number>();
    const slowest: { ms: number; call: string }[] = [];
    let done = 0;
    const started = performance.now();
    console.log(`rpc fuzz: ${CASES} cases in ${LANES} lanes, FUZZ_SEED=${SEED} (lane n runs seed ${SEED}+n)`);

    const lane = async (index: number, runs: number): Promise<void> => {
      let caseNo = 0;
      await fc.assert(
        fc.asyncProperty(callArb(methods, ctx), async (call) => {
          caseNo++;
          if (++done % 5000 === 0) console.log(`rpc fuzz: ${done} calls after ${((performance.now() - started) / 1000).toFixed(0)} s, ${findings.length} findings so far`);
          for (const s of stringsOf(call.body.init, new Set())) if (s.length <= 512) sent.add(s);
          const callStarted = performance.now();
          const { status, responses } = await invoke(call.asAdmin ? admin : stranger, call);
          const ms = performance.now() - callStarted;
          if (slowest.length < 5 || ms > (slowest[slowest.length - 1]?.ms ?? 0)) {
            slowest.push({ ms, call: `${describeCall(call).slice(0, 200)} -> ${Status[status.code]}` });
            slowest.sort((a, b) => b.ms - a.ms).splice(5);
          }
          // INVALID_ARGUMENT by field, so the summary shows which checks stop calls short of the handlers.
          const field = status.code === Status.INVALID_ARGUMENT ? ` ${status.details.slice(0, status.details.indexOf(':')).slice(0, 40)}` : '';
          const key = `${call.method.name} ${Status[status.code]}${field}`;
          codes.set(key, (codes.get(key) ?? 0) + 1);
          if (status.code === Status.OK) learn(ctx, call.method, responses);
          const where = `FUZZ_SEED=${SEED} lane ${index} (seed ${SEED + index}) case ${caseNo}`;
          // A dead daemon ends the run at once, with the call that killed it.
          if (!daemon.alive()) throw new Error(`daemon died after ${where}: ${describeCall(call)}\n${daemon.logs().slice(-4000)}`);
          for (const problem of problemsOf(call.method, status)) {
            const traceId = /trace_id=([^\s)]+)/.exec(status.details)?.[1];
            const logs = traceId ? daemon.logs().split('\n').filter((line) => line.includes(traceId)).join('\n').slice(0, 2000) : '';
            findings.push({ where, call: describeCall(call).slice(0, 1500), problem, logs });
          }
        }),
        { seed: SEED + index, numRuns: runs, endOnFailure: true },
      );
    };
    const perLane = Math.floor(CASES / LANES);
    await Promise.all(Array.from({ length: LANES }, (_, i) => lane(i, i === 0 ? CASES - perLane * (LANES - 1) : perLane)));
    const seconds = (performance.now() - started) / 1000;
    console.log(`rpc fuzz: ${CASES} calls in ${seconds.toFixed(1)} s; outcomes:\n${[...codes].sort().map(([k, n]) => `  ${k}: ${n}`).join('\n')}`);
    console.log(`rpc fuzz: slowest calls:\n${slowest.map((s) => `  ${s.ms.toFixed(0)} ms ${s.call}`).join('\n')}`);

    // No crash: still running, and answering.
    expect(daemon.alive()).toBe(true);
    const access = await clientFor(AccessService, daemon);
    clients.push(access);
    expect((await access.whoAmI({}, T)).principalId).toBe(daemon.pki.adminPrincipal);

    // Host commands: the trace proves calls went deep into every backend, and that none carried refused text.
    const traced = (await readFile(traceFile, 'utf8'))
      .split('\n')
      .filter((line) => line !== '')
      .map((line) => JSON.parse(line) as TracedCommand);
    const backends = new Set(traced.map((t) => t.backend));
    console.log(`rpc fuzz: ${traced.length} host commands (${[...backends].join(', ')})`);
    expect([...backends]).toEqual(expect.arrayContaining(['libvirt', 'lvm', 'rbd']));
    const argvFindings = traced.flatMap((t) => argvProblems(t, sent).map((problem) => `${t.backend} ${t.command} ${JSON.stringify(t.args).slice(0, 600)}: ${problem}`));

    const report = findings.map((f) => `${f.problem}\n    at ${f.where}\n    call: ${f.call}${f.logs ? `\n    daemon log: ${f.logs}` : ''}`);
    expect({ callFindings: report, argvFindings: [...new Set(argvFindings)] }).toEqual({ callFindings: [], argvFindings: [] });
  });
});
