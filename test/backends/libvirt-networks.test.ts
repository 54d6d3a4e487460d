// This node's networks against REAL parts: libvirt networks from a private libvirtd (the test
// driver, and the QEMU session driver), host bridges from the real /sys/class/net (a bridge made
// with iproute2 when running as root), NOT_FOUND naming a network, and the virsh process count.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { status as Status } from '@grpc/grpc-js';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExecError, type SpawnEvent } from '../../src/backends/exec.js';
import { HostNetworks, NetworkNotFoundError } from '../../src/backends/libvirt/networks.js';
import { Libvirt } from '../../src/backends/libvirt/virsh.js';
import { parseNetworkXml } from '../../src/backends/libvirt/xml.js';
import { InvalidArgumentError, toStatus } from '../../src/rpc/errors.js';
import { qemuAvailable, startLibvirt, VIRSH, type TestLibvirt } from '../support/libvirt.js';

const run = promisify(execFile);
const IP = '/usr/sbin/ip';

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

/** `virsh net-define` (and net-start unless `inactive`) from XML. */
async function defineNetwork(lv: TestLibvirt, xml: string, start: boolean): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'debvisor-net-'));
  try {
    const file = join(dir, 'net.xml');
    await writeFile(file, xml);
    const env = { LC_ALL: 'C', PATH: '/usr/bin:/bin' };
    await run(VIRSH, ['-q', '-c', lv.uri, 'net-define', '--file', file], { env });
    const name = parseNetworkXml(xml).name;
    if (start) await run(VIRSH, ['-q', '-c', lv.uri, 'net-start', '--network', name], { env });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

describe('parseNetworkXml', () => {
  it('reads forward mode, bridge, prefix from a netmask or a prefix, and DHCP ranges', () => {
    const parsed = parseNetworkXml(`<network><name>n</name><uuid>u</uuid><forward/><bridge name='br9'/>
      <ip address='10.1.0.1' netmask='255.255.252.0'><dhcp><range start='10.1.0.2' end='10.1.0.9'/><range start='10.1.1.2' end='10.1.1.9'/></dhcp></ip>
      <ip family='ipv6' address='fd00::1' prefix='64'/></network>`);
    expect(parsed).toEqual({
      name: 'n',
      uuid: 'u',
      bridge: 'br9',
      forwardMode: 'nat', // <forward/> without a mode is NAT
      addresses: [
        { address: '10.1.0.1', prefixLength: 22, dhcpRanges: [{ start: '10.1.0.2', end: '10.1.0.9' }, { start: '10.1.1.2', end: '10.1.1.9' }] },
        { address: 'fd00::1', prefixLength: 64, dhcpRanges: [] },
      ],
    });
    expect(parseNetworkXml('<network><name>iso</name></network>')).toMatchObject({ forwardMode: 'isolated', bridge: '', addresses: [] });
  });
});

describe('HostNetworks against the libvirt test driver', () => {
  let lv: TestLibvirt;
  let networks: HostNetworks;
  const spawns: SpawnEvent[] = [];

  beforeAll(async () => {
    lv = await startLibvirt();
    networks = new HostNetworks({ libvirt: new Libvirt({ uri: lv.uri, registry: new Registry(), onSpawn: (e) => spawns.push(e) }) });
  });
  afterAll(async () => {
    await (lv as TestLibvirt | undefined)?.stop();
  });

  it('lists the driver\'s "default" network with its forward mode, bridge and addresses', async () => {
    const listed = await networks.libvirtNetworks();
    expect(listed).toEqual([
      {
        name: 'default',
        kind: 'libvirt',
        bridge: 'virbr0',
        active: true,
        forwardMode: 'nat',
        addresses: [{ address: '192.168.122.1', prefixLength: 24, dhcpRanges: [{ start: '192.168.122.2', end: '192.168.122.254' }] }],
      },
    ]);
  });

  it('lists many networks, active or not, ordered by name, with two virsh processes', async () => {
    await defineNetwork(lv, "<network><name>isolated-1</name><bridge name='virbr11'/><ip address='10.11.0.1' prefix='24'/></network>", true);
    await defineNetwork(lv, "<network><name>routed</name><forward mode='route'/><bridge name='virbr12'/><ip family='ipv6' address='fd12::1' prefix='64'/></network>", false);
    for (let i = 0; i < 8; i++) await defineNetwork(lv, `<network><name>bulk-${i}</name><bridge name='virbr2${i}'/></network>`, i % 2 === 0);
    spawns.length = 0;
    const listed = await networks.libvirtNetworks();
    expect(spawns.filter((s) => s.command === 'virsh')).toHaveLength(2);
    expect(listed.map((n) => n.name)).toEqual(['bulk-0', 'bulk-1', 'bulk-2', 'bulk-3', 'bulk-4', 'bulk-5', 'bulk-6', 'bulk-7', 'default', 'isolated-1', 'routed']);
    expect(listed.find((n) => n.name === 'isolated-1')).toEqual({ name: 'isolated-1', kind: 'libvirt', bridge: 'virbr11', active: true, forwardMode: 'isolated', addresses: [{ address: '10.11.0.1', prefixLength: 24, dhcpRanges: [] }] });
    expect(listed.find((n) => n.name === 'routed')).toMatchObject({ active: false, forwardMode: 'route', addresses: [{ address: 'fd12::1', prefixLength: 64, dhcpRanges: [] }] });
    expect(listed.filter((n) => n.name.startsWith('bulk-')).map((n) => n.active)).toEqual([true, false, true, false, true, false, true, false]);
  });

  it('lists a network whose name virsh\'s command parser would split, asking about it alone', async () => {
    await defineNetwork(lv, "<network><name>odd name;x</name><bridge name='virbr30'/></network>", false);
    const odd = (await networks.libvirtNetworks()).find((n) => n.name === 'odd name;x');
    expect(odd).toMatchObject({ kind: 'libvirt', bridge: 'virbr30', active: false, forwardMode: 'isolated' });
  });

  it('requireNetwork: an existing network with one virsh process; a missing one is NOT_FOUND naming it', async () => {
    spawns.length = 0;
    expect(await networks.requireNetwork('default', 'spec.interfaces[0].network')).toMatchObject({ name: 'default', active: true });
    expect(spawns).toHaveLength(1);
    const missing = await rejection(networks.requireNetwork('ci-net', 'spec.interfaces[1].network'));
    expect(missing).toBeInstanceOf(NetworkNotFoundError);
    const status = toStatus(missing, 't');
    expect(status.code).toBe(Status.NOT_FOUND);
    expect(status.details).toContain('libvirt network "ci-net" does not exist');
  });

  it('requireNetwork refuses a bad name naming its field before anything is spawned', async () => {
    spawns.length = 0;
    for (const bad of ['', 'a b', 'x;net-destroy default', '-n', '../etc', 'x'.repeat(200), 'ünï']) {
      const err = await rejection(networks.requireNetwork(bad, 'spec.interfaces[2].network'));
      expect(err).toBeInstanceOf(InvalidArgumentError);
      expect((err as InvalidArgumentError).field).toBe('spec.interfaces[2].network');
    }
    expect(spawns).toEqual([]);
  });

  it('an unreachable libvirt is UNAVAILABLE', async () => {
    const gone = new HostNetworks({ libvirt: new Libvirt({ uri: `test+unix:///default?socket=${join(lv.dir, 'no-such-socket')}`, registry: new Registry() }) });
    const err = await rejection(gone.list());
    expect(err).toBeInstanceOf(ExecError);
    expect(toStatus(err, 't').code).toBe(Status.UNAVAILABLE);
    expect(toStatus(await rejection(gone.requireNetwork('default', 'network')), 't').code).toBe(Status.UNAVAILABLE);
  });
});

describe.skipIf(!qemuAvailable())('HostNetworks against qemu:///session', () => {
  let lv: TestLibvirt;
  let networks: HostNetworks;

  beforeAll(async () => {
    lv = await startLibvirt({ driver: 'qemu' });
    networks = new HostNetworks({ libvirt: new Libvirt({ uri: lv.uri, registry: new Registry() }) });
  });
  afterAll(async () => {
    await (lv as TestLibvirt | undefined)?.stop();
  });

  it('lists networks defined in the session (none at first)', async () => {
    expect(await networks.libvirtNetworks()).toEqual([]);
    // A session libvirtd cannot create bridges: the networks stay defined, not started.
    await defineNetwork(lv, "<network><name>session-net</name><forward mode='nat'/><bridge name='dvsess0'/><ip address='10.77.0.1' netmask='255.255.255.0'><dhcp><range start='10.77.0.10' end='10.77.0.20'/></dhcp></ip></network>", false);
    await defineNetwork(lv, "<network><name>session-br</name><forward mode='bridge'/><bridge name='br-outside'/></network>", false);
    expect(await networks.libvirtNetworks()).toEqual([
      { name: 'session-br', kind: 'libvirt', bridge: 'br-outside', active: false, forwardMode: 'bridge', addresses: [] },
      { name: 'session-net', kind: 'libvirt', bridge: 'dvsess0', active: false, forwardMode: 'nat', addresses: [{ address: '10.77.0.1', prefixLength: 24, dhcpRanges: [{ start: '10.77.0.10', end: '10.77.0.20' }] }] },
    ]);
    expect(await networks.requireNetwork('session-net', 'network')).toMatchObject({ name: 'session-net' });
    expect(toStatus(await rejection(networks.requireNetwork('default', 'network')), 't').code).toBe(Status.NOT_FOUND);
  });
});

interface IpLink {
  readonly ifname: string;
  readonly flags: readonly string[];
}

/** Bridges as iproute2 sees them: the reference for what sysfs yields. */
async function ipBridges(): Promise<IpLink[]> {
  const { stdout } = await run(IP, ['-j', 'link', 'show', 'type', 'bridge']);
  return (JSON.parse(stdout || '[]') as IpLink[]).sort((a, b) => (a.ifname < b.ifname ? -1 : 1));
}

describe('HostNetworks: host bridges from /sys/class/net', () => {
  const networks = new HostNetworks({ libvirt: new Libvirt({ uri: 'test:///default', registry: new Registry() }) });

  it('match the bridges iproute2 reports, with their up flag', async () => {
    const reference = existsSync(IP) ? await ipBridges() : [];
    expect((await networks.hostBridges()).map((b) => [b.name, b.active])).toEqual(reference.map((l) => [l.ifname, l.flags.includes('UP')]));
  });

  // Needs CAP_NET_ADMIN: a bridge with no ports, under a unique name, removed afterwards.
  it.skipIf(process.getuid?.() !== 0 || !existsSync(IP))('a bridge made with iproute2 appears, goes up, and is NOT_FOUND once deleted', async () => {
    const name = `dvt${randomBytes(5).toString('hex')}`;
    await run(IP, ['link', 'add', 'name', name, 'type', 'bridge']);
    try {
      expect((await networks.hostBridges()).find((b) => b.name === name)).toEqual({ name, kind: 'bridge', bridge: name, active: false, forwardMode: '', addresses: [] });
      await run(IP, ['link', 'set', 'dev', name, 'up']);
      expect(await networks.requireBridge(name, 'spec.interfaces[0].bridge')).toMatchObject({ name, active: true });
      // Not a bridge: an interface that exists but has no bridge directory.
      expect(await rejection(networks.requireBridge('lo', 'spec.interfaces[0].bridge'))).toBeInstanceOf(NetworkNotFoundError);
    } finally {
      await run(IP, ['link', 'del', 'dev', name]);
    }
    const gone = await rejection(networks.requireBridge(name, 'spec.interfaces[0].bridge'));
    expect(gone).toBeInstanceOf(NetworkNotFoundError);
    expect(toStatus(gone, 't').details).toContain(`host bridge "${name}" does not exist on this node`);
  });

  it('requireBridge refuses names that are no interface name, naming the field', async () => {
    for (const bad of ['', '../lo', 'a/b', 'x'.repeat(16), '.', 'br 0']) {
      const err = await rejection(networks.requireBridge(bad, 'spec.interfaces[3].bridge'));
      expect(err).toBeInstanceOf(InvalidArgumentError);
      expect((err as InvalidArgumentError).field).toBe('spec.interfaces[3].bridge');
    }
  });
});
