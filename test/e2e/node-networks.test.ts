// NodeService.ListNetworks end to end: the real daemon against a REAL libvirtd (test driver,
// with extra networks defined) and the host's real /sys/class/net; roles, a scoped API key,
// the kind filter, a bad kind, and `debvisorctl node networks` (table and JSON).
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { GenService } from '@bufbuild/protobuf/codegenv2';
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TypedClient } from '../../src/client/client.js';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { NetworkKind, NodeService } from '../../src/gen/debvisor/v1/node_pb.js';
import { ResourceKind } from '../../src/gen/debvisor/v1/options_pb.js';
import { ctlOn } from '../support/ctl.js';
import { clientFor, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { startLibvirt, VIRSH, type TestLibvirt } from '../support/libvirt.js';
import { issueClientFor, rejection } from '../support/security.js';

const run = promisify(execFile);
const T = { timeoutMs: 15_000 };
const VIEWER = 'spiffe://debvisor/networks-test/viewer';
const MONITOR = 'spiffe://debvisor/networks-test/monitor';

type MethodsOf<T> = T extends GenService<infer S> ? S : never;
let lv: TestLibvirt;
let daemon: RunningDaemon;
let nodes: TypedClient<MethodsOf<typeof NodeService>>;
let access: TypedClient<MethodsOf<typeof AccessService>>;
const closers: { close(): void }[] = [];

async function defineNetwork(xml: string, start: boolean, name: string): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'debvisor-net-'));
  try {
    const file = join(dir, 'net.xml');
    await writeFile(file, xml);
    const env = { LC_ALL: 'C', PATH: '/usr/bin:/bin' };
    await run(VIRSH, ['-q', '-c', lv.uri, 'net-define', '--file', file], { env });
    if (start) await run(VIRSH, ['-q', '-c', lv.uri, 'net-start', '--network', name], { env });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

beforeAll(async () => {
  lv = await startLibvirt();
  await defineNetwork("<network><name>ci-net</name><forward mode='route'/><bridge name='virbr40'/><ip address='10.40.0.1' prefix='24'/></network>", true, 'ci-net');
  await defineNetwork("<network><name>other-net</name><bridge name='virbr41'/></network>", false, 'other-net');
  daemon = await startDaemon({
    env: { DEBVISOR_RPCD_LIBVIRT_URI: lv.uri },
    config: { auth: { default_bindings: { [VIEWER]: ['viewer'], [MONITOR]: ['monitor'] } } },
  });
  nodes = await clientFor(NodeService, daemon);
  access = await clientFor(AccessService, daemon);
  closers.push(nodes, access);
});

afterAll(async () => {
  for (const c of closers) c.close();
  await (daemon as RunningDaemon | undefined)?.cleanup();
  await (lv as TestLibvirt | undefined)?.stop();
});

describe('NodeService.ListNetworks', () => {
  it('lists libvirt networks first, by name, with forward mode and addresses; then host bridges', async () => {
    const { networks } = await nodes.listNetworks({}, T);
    const libvirt = networks.filter((n) => n.kind === NetworkKind.LIBVIRT);
    expect(networks.slice(0, libvirt.length)).toEqual(libvirt);
    expect(libvirt.map((n) => [n.name, n.bridge, n.active, n.forwardMode])).toEqual([
      ['ci-net', 'virbr40', true, 'route'],
      ['default', 'virbr0', true, 'nat'],
      ['other-net', 'virbr41', false, 'isolated'],
    ]);
    const def = libvirt.find((n) => n.name === 'default')!;
    expect(def.addresses.map((a) => ({ address: a.address, prefixLength: a.prefixLength, ranges: a.dhcpRanges.map((r) => [r.start, r.end]) }))).toEqual([
      { address: '192.168.122.1', prefixLength: 24, ranges: [['192.168.122.2', '192.168.122.254']] },
    ]);
    for (const bridge of networks.slice(libvirt.length)) {
      expect(bridge.kind).toBe(NetworkKind.BRIDGE);
      expect(bridge.bridge).toBe(bridge.name);
      expect(bridge.forwardMode).toBe('');
    }
    const bridges = (await nodes.listNetworks({ kind: NetworkKind.BRIDGE }, T)).networks;
    expect(bridges.every((n) => n.kind === NetworkKind.BRIDGE)).toBe(true);
    expect((await nodes.listNetworks({ kind: NetworkKind.LIBVIRT }, T)).networks.map((n) => n.name)).toEqual(['ci-net', 'default', 'other-net']);
  });

  it('an unknown kind is INVALID_ARGUMENT naming the field', async () => {
    // A value this daemon's proto does not know, as a newer client might send.
    // eslint-disable-next-line @typescript-eslint/no-unsafe-enum-assignment
    const err = await rejection(nodes.listNetworks({ kind: 99 as NetworkKind }, T));
    expect(err.code).toBe(Status.INVALID_ARGUMENT);
    expect(err.details).toContain('kind: unknown NetworkKind value 99');
  });

  it('viewer may list networks; monitor may not', async () => {
    const viewer = await clientFor(NodeService, daemon, await issueClientFor(daemon.pki, VIEWER));
    const monitor = await clientFor(NodeService, daemon, await issueClientFor(daemon.pki, MONITOR));
    closers.push(viewer, monitor);
    expect((await viewer.listNetworks({ kind: NetworkKind.LIBVIRT }, T)).networks).toHaveLength(3);
    const denied = await rejection(monitor.listNetworks({}, T));
    expect(denied.code).toBe(Status.PERMISSION_DENIED);
    expect(denied.details).toContain('node:network:list');
  });

  it('a scoped API key sees only the networks its network globs allow', async () => {
    const { secret } = await access.createApiKey({ description: 'ci networks', permissions: ['node:network:list'], resourceGlobs: [{ kind: ResourceKind.NETWORK, glob: 'ci-*' }] }, T);
    const anonymous = await clientFor(NodeService, daemon, null);
    closers.push(anonymous);
    const { networks } = await anonymous.listNetworks({}, { ...T, metadata: { authorization: `Bearer ${secret}` } });
    expect(networks.map((n) => n.name)).toEqual(['ci-net']);
  });
});

describe('debvisorctl node networks', () => {
  it('prints a table and JSON, and refuses an unknown --kind', async () => {
    const narrow = await ctlOn(daemon, 'node', 'networks', '--kind', 'libvirt');
    expect(narrow.code, narrow.stderr).toBe(0);
    expect(Math.max(...narrow.stdout.split('\n').map((l) => l.length))).toBeLessThanOrEqual(80);
    // Whole cells with -o wide.
    const table = await ctlOn(daemon, '-o', 'wide', 'node', 'networks', '--kind', 'libvirt');
    expect(table.code, table.stderr).toBe(0);
    // Rows of the box-drawn table as their cells.
    const rows = table.stdout.split('\n').filter((l) => l.startsWith('│')).map((l) => l.split('│').slice(1, -1).map((c) => c.trim()));
    expect(rows[0]).toEqual(['name', 'kind', 'bridge', 'active', 'forward', 'addresses']);
    expect(rows.find((r) => r[0] === 'default')).toEqual(['default', 'libvirt', 'virbr0', 'true', 'nat', '192.168.122.1/24 (dhcp 192.168.122.2-192.168.122.254)']);
    expect(rows.find((r) => r[0] === 'other-net')).toEqual(['other-net', 'libvirt', 'virbr41', 'false', 'isolated', '']);

    const json = await ctlOn(daemon, '-o', 'json', 'node', 'networks');
    expect(json.code, json.stderr).toBe(0);
    const parsed = JSON.parse(json.stdout) as { networks: { name: string; kind: string; forwardMode?: string }[] };
    expect(parsed.networks.filter((n) => n.kind === 'NETWORK_KIND_LIBVIRT').map((n) => [n.name, n.forwardMode])).toEqual([
      ['ci-net', 'route'],
      ['default', 'nat'],
      ['other-net', 'isolated'],
    ]);

    const bad = await ctlOn(daemon, 'node', 'networks', '--kind', 'bricks');
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('expected one of libvirt, bridge');
  });
});
