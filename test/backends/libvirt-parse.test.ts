// Parsers of the libvirt backend against output captured from a real libvirtd 9.0
// (test driver; the rich domain XML is hand-written in libvirt's own format).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseDomjobinfo, parseKeyValues } from '../../src/backends/libvirt/jobinfo.js';
import { parseDomstate, parseDomstatsState } from '../../src/backends/libvirt/virsh.js';
import { LibvirtParseError, parseDomainXml, parseSnapshotXml } from '../../src/backends/libvirt/xml.js';
import { STATE_CONFLICT, VIRSH_RULES } from '../../src/backends/libvirt/errors.js';
import { classify, type ExecResult } from '../../src/backends/exec.js';

const FIXTURES = join(import.meta.dirname, 'fixtures', 'libvirt');
const fixture = (name: string) => readFileSync(join(FIXTURES, name), 'utf8');

function failed(stderr: string): ExecResult {
  return { command: 'virsh', code: 1, signal: null, stdout: '', stderr, truncated: false, durationMs: 1 };
}

describe('parseDomainXml', () => {
  it('reads the test driver dumpxml of the recipe domain', () => {
    const d = parseDomainXml(fixture('dumpxml-vm1-running.xml'));
    expect(d).toMatchObject({ name: 'vm1', uuid: '11111111-2222-3333-4444-555555555555', type: 'test', vcpus: 1, memoryBytes: 256 * 1024 * 1024 });
    expect(d.disks).toEqual([{ targetDev: 'vda', sourcePath: '/var/lib/libvirt/images/vm1.qcow2', format: '', device: 'disk', sourceType: 'file', protocol: '' }]);
    expect(d.interfaces).toHaveLength(1);
    expect(d.interfaces[0]).toMatchObject({ type: 'network', source: 'default', model: '' });
    // The test driver assigns a MAC on define.
    expect(d.interfaces[0]?.mac).toMatch(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
  });

  it('reads RBD, cdrom, block and volume disks, bridge and network interfaces, units and current vCPUs', () => {
    const d = parseDomainXml(fixture('domain-rich.xml'));
    expect(d).toMatchObject({ name: 'web-01', type: 'kvm', vcpus: 2, memoryBytes: 2048 * 1024 ** 2, maxMemoryBytes: 4 * 1024 ** 3 });
    expect(d.disks).toEqual([
      { targetDev: 'vda', sourcePath: 'vms/web-01-root', format: 'raw', device: 'disk', sourceType: 'network', protocol: 'rbd' },
      { targetDev: 'sda', sourcePath: '/var/lib/libvirt/images/debian-12.iso', format: 'raw', device: 'cdrom', sourceType: 'file', protocol: '' },
      { targetDev: 'vdb', sourcePath: '/dev/vg0/web-01-data', format: 'raw', device: 'disk', sourceType: 'block', protocol: '' },
      { targetDev: 'vdc', sourcePath: 'images/scratch.qcow2', format: 'qcow2', device: 'disk', sourceType: 'volume', protocol: '' },
    ]);
    expect(d.interfaces).toEqual([
      { type: 'bridge', source: 'br0', mac: '52:54:00:12:34:56', model: 'virtio' },
      { type: 'network', source: 'default', mac: '52:54:00:ab:cd:ef', model: 'e1000' },
    ]);
  });

  it('keeps numeric-looking names as strings and defaults <memory> to KiB', () => {
    const d = parseDomainXml("<domain type='test'><name>0123</name><uuid>u</uuid><memory>1024</memory><vcpu>3</vcpu></domain>");
    expect(d).toMatchObject({ name: '0123', vcpus: 3, memoryBytes: 1024 * 1024, disks: [], interfaces: [] });
  });

  it('refuses what is not domain XML', () => {
    expect(() => parseDomainXml('<network><name>x</name></network>')).toThrow(LibvirtParseError);
    expect(() => parseDomainXml('<domain><name>x</name><memory unit="parsecs">1</memory></domain>')).toThrow(LibvirtParseError);
    expect(() => parseDomainXml('<domain><uuid>x</uuid></domain>')).toThrow(LibvirtParseError);
  });
});

describe('parseSnapshotXml', () => {
  it('reads snapshot-dumpxml from the test driver', () => {
    const s = parseSnapshotXml(fixture('snapshot-dumpxml-snap1.xml'));
    expect(s).toMatchObject({ name: 'snap1', description: 'first one', state: 'running', parent: '' });
    expect(s.createTime.getTime()).toBe(1795336544 * 1000);
  });
});

describe('virsh text outputs', () => {
  it('maps domstate words', () => {
    expect(parseDomstate('running\n\n')).toBe('running');
    expect(parseDomstate('shut off\n')).toBe('shutoff');
    expect(parseDomstate('in shutdown')).toBe('shutdown');
    expect(parseDomstate('paused')).toBe('paused');
    expect(parseDomstate('what')).toBe('nostate');
  });

  it('reads dominfo key/values', () => {
    const kv = parseKeyValues(fixture('dominfo-vm1.stdout'));
    expect(kv).toMatchObject({ Name: 'vm1', State: 'running', Persistent: 'yes', Autostart: 'disable' });
  });

  it('reads domstats --state', () => {
    const m = parseDomstatsState("Domain: 'vm1'\n  state.state=5\n  state.reason=1\n\nDomain: 'b'\n  state.state=1\n  state.reason=1\n\n");
    expect([...m]).toEqual([
      ['vm1', 'shutoff'],
      ['b', 'running'],
    ]);
  });

  it('parses domjobinfo of a migration and of no job', () => {
    const j = parseDomjobinfo(fixture('domjobinfo-migration.stdout'));
    expect(j.type).toBe('Unbounded');
    expect(j.dataTotalBytes).toBeGreaterThan(0);
    expect(j.percent).toBeGreaterThanOrEqual(0);
    expect(j.percent).toBeLessThanOrEqual(100);
    expect(parseDomjobinfo(fixture('domjobinfo-none.stdout'))).toMatchObject({ type: 'None', percent: undefined });
    const synthetic = parseDomjobinfo('Job type:         Unbounded\nOperation:        Outgoing migration\nTime elapsed:     1500         ms\nData processed:   256.000 MiB\nData remaining:   768.000 MiB\nData total:       1.000 GiB\nMemory bandwidth: 100.000 MiB/s\nExpected downtime: 300          ms\n');
    expect(synthetic).toMatchObject({ operation: 'Outgoing migration', timeElapsedMs: 1500, dataTotalBytes: 1024 ** 3, percent: 25, memoryBandwidthBytesPerSec: 100 * 1024 ** 2, expectedDowntimeMs: 300 });
  });
});

describe('virsh stderr classification (texts captured from libvirt 9.0)', () => {
  it.each([
    ['dominfo-unknown.stderr', 'not_found'],
    ['connect-refused.stderr', 'unavailable'],
    ['snapshot-unknown.stderr', 'not_found'],
    ['snapshot-exists.stderr', 'exists'],
  ])('%s → %s', (file, kind) => {
    expect(classify(failed(fixture(file)), VIRSH_RULES, 'libvirt')?.kind).toBe(kind);
  });

  it.each(['start-running.stderr', 'shutdown-stopped.stderr', 'destroy-stopped.stderr'])('%s is a state conflict', (file) => {
    expect(STATE_CONFLICT.test(fixture(file))).toBe(true);
  });

  it('QEMU driver wording is a state conflict too', () => {
    expect(STATE_CONFLICT.test('error: Failed to start domain mig1\nerror: Requested operation is not valid: domain is already running\n')).toBe(true);
    expect(STATE_CONFLICT.test(fixture('dominfo-unknown.stderr'))).toBe(false);
  });
});
