// CreateVm's spec validation and the daemon-written domain XML: pure functions, no host.
import { create } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import { parseDomainXml } from '../../src/backends/libvirt/xml.js';
import { StorageBackend } from '../../src/gen/debvisor/v1/storage_types_pb.js';
import { VmSpecSchema } from '../../src/gen/debvisor/v1/vm_pb.js';
import { InvalidArgumentError } from '../../src/rpc/errors.js';
import { buildDiskXml, buildDomainXml, definitionEtag, targetDevName, type DomainDefinition } from '../../src/vms/domain-xml.js';
import { defaultHostname, generateMac, validateMac, validateSpec } from '../../src/vms/spec.js';

const MIB = 1024n * 1024n;

function fieldOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (err instanceof InvalidArgumentError) return err.field;
    throw err;
  }
  throw new Error('expected INVALID_ARGUMENT');
}

const base = { name: 'web-1', vcpus: 2, memoryBytes: 512n * MIB };

describe('validateSpec', () => {
  it('names the field of every bad value', () => {
    const spec = (over: object) => create(VmSpecSchema, { ...base, ...over });
    expect(fieldOf(() => validateSpec(undefined, 8))).toBe('spec');
    expect(fieldOf(() => validateSpec(spec({ vcpus: 0 }), 8))).toBe('spec.vcpus');
    expect(fieldOf(() => validateSpec(spec({ vcpus: 9 }), 8))).toBe('spec.vcpus');
    expect(fieldOf(() => validateSpec(spec({ memoryBytes: 63n * MIB }), 8))).toBe('spec.memory_bytes');
    expect(fieldOf(() => validateSpec(spec({ memoryBytes: 64n * MIB + 512n }), 8))).toBe('spec.memory_bytes');
    const newDisk = (sizeBytes: bigint) => ({ source: { case: 'newVolume', value: { backend: StorageBackend.LVM, pool: 'vg0', sizeBytes } } });
    expect(fieldOf(() => validateSpec(spec({ disks: [newDisk(MIB), newDisk(MIB), newDisk(0n)] }), 8))).toBe('spec.disks[2].new_volume.size_bytes');
    expect(fieldOf(() => validateSpec(spec({ disks: [{}] }), 8))).toBe('spec.disks[0]');
    expect(fieldOf(() => validateSpec(spec({ disks: [{ source: { case: 'newVolume', value: { pool: 'vg0', sizeBytes: MIB } } }] }), 8))).toBe('spec.disks[0].new_volume.backend');
    expect(fieldOf(() => validateSpec(spec({ disks: [{ ...newDisk(MIB), bootOrder: 1 }, { source: { case: 'newVolume', value: { backend: StorageBackend.LVM, pool: 'vg0', sizeBytes: MIB, name: 'x' } }, bootOrder: 1 }] }), 8))).toBe(
      'spec.disks[1].boot_order',
    );
    expect(fieldOf(() => validateSpec(spec({ interfaces: [{ network: 'a', bridge: 'b' }] }), 8))).toBe('spec.interfaces[0]');
    expect(fieldOf(() => validateSpec(spec({ interfaces: [{ network: 'default', vlan: 4095 }] }), 8))).toBe('spec.interfaces[0].vlan');
    expect(fieldOf(() => validateSpec(spec({ interfaces: [{ network: 'default', mac: 'ff:ff:ff:ff:ff:ff' }] }), 8))).toBe('spec.interfaces[0].mac');
    expect(fieldOf(() => validateSpec(spec({ interfaces: [{ network: 'default', mac: '52:54:00:00:00:01' }, { network: 'default', mac: '52:54:00:00:00:01' }] }), 8))).toBe('spec.interfaces[1].mac');
    expect(fieldOf(() => validateSpec(spec({ cpuMode: 3, cpuModel: '' }), 8))).toBe('spec.cpu_model');
    expect(fieldOf(() => validateSpec(spec({ machineType: 'q35 --x' }), 8))).toBe('spec.machine_type');
    expect(fieldOf(() => validateSpec(spec({ cloudInit: { userData: new Uint8Array([0xff, 0xfe]) } }), 8))).toBe('spec.cloud_init.user_data');
    expect(fieldOf(() => validateSpec(spec({ cloudInit: { sshAuthorizedKeys: ['ssh-rsa AAAA'] } }), 8))).toBe('spec.cloud_init.ssh_authorized_keys[0]');
  });

  it('fills defaults: volume names, generated MACs, cloud-init identity', () => {
    const valid = validateSpec(
      create(VmSpecSchema, {
        ...base,
        name: 'Web_1.prod',
        disks: [{ source: { case: 'newVolume', value: { backend: StorageBackend.LVM, pool: 'vg0', sizeBytes: MIB } } }],
        interfaces: [{ bridge: 'br0' }],
        cloudInit: {},
      }),
      8,
    );
    expect(valid.disks[0]?.origin).toMatchObject({ kind: 'empty', name: 'Web_1.prod-disk0' });
    expect(valid.nics[0]).toMatchObject({ type: 'bridge', source: 'br0', model: 'virtio' });
    expect(valid.nics[0]?.mac).toMatch(/^52:54:00(:[0-9a-f]{2}){3}$/);
    expect(valid.cloudInit).toMatchObject({ instanceId: valid.uuid, hostname: 'web-1-prod' });
  });
});

describe('MACs', () => {
  it('accepts unicast, refuses multicast and zero, generates under 52:54:00', () => {
    expect(validateMac('52:54:00:AA:bb:01', 'm')).toBe('52:54:00:aa:bb:01');
    expect(() => validateMac('03:00:00:00:00:01', 'm')).toThrow(/unicast/);
    expect(() => validateMac('00:00:00:00:00:00', 'm')).toThrow(/zeros/);
    expect(() => validateMac('52:54:00:00:00', 'm')).toThrow(/six hex octets/);
    for (let i = 0; i < 20; i++) expect(validateMac(generateMac(), 'm')).toMatch(/^52:54:00:/);
    expect(defaultHostname('123')).toBe('vm-123');
  });
});

describe('buildDomainXml', () => {
  const definition: DomainDefinition = {
    domainType: 'kvm',
    name: 'web-1',
    uuid: '11111111-2222-3333-4444-555555555555',
    description: '</description><devices><disk type="file"><source file="/etc/shadow"/></disk></devices>',
    owner: 'user:alice&"bob"',
    tags: { b: '2', a: '<1>' },
    createdVolumes: [{ backend: 'lvm', pool: 'vg0', name: 'web-1-disk0' }],
    seedFiles: ['/var/lib/debvisor/cloud-init/web-1.iso'],
    vcpus: 2,
    memoryBytes: 512n * MIB,
    firmware: 'uefi',
    machineType: 'q35',
    cpu: { mode: 'custom', model: 'Skylake-Server' },
    disks: [
      { source: { type: 'block', path: '/dev/vg0/web-1-disk0' }, device: 'disk', bus: 'virtio', cache: 'none', targetDev: 'vda', bootOrder: 1, readOnly: false },
      { source: { type: 'rbd', pool: 'rbd', image: 'img', auth: { username: 'libvirt', secretUuid: '00000000-0000-0000-0000-000000000001' } }, device: 'disk', bus: 'scsi', cache: 'writeback', targetDev: 'sda', bootOrder: 0, readOnly: false },
      { source: { type: 'file', path: '/var/lib/debvisor/cloud-init/web-1.iso' }, device: 'cdrom', bus: 'sata', cache: 'none', targetDev: 'sdb', bootOrder: 0, readOnly: true },
    ],
    nics: [{ type: 'network', source: 'default', model: 'virtio', mac: '52:54:00:00:00:01', vlan: 42 }],
  };

  it('escapes caller text, so it stays text', () => {
    const xml = buildDomainXml(definition);
    const parsed = parseDomainXml(xml);
    expect(parsed.description).toBe(definition.description);
    expect(parsed.disks.map((d) => [d.targetDev, d.sourcePath, d.device])).toEqual([
      ['vda', '/dev/vg0/web-1-disk0', 'disk'],
      ['sda', 'rbd/img', 'disk'],
      ['sdb', '/var/lib/debvisor/cloud-init/web-1.iso', 'cdrom'],
    ]);
    expect(parsed.metadata).toEqual({ owner: 'user:alice&"bob"', tags: { a: '<1>', b: '2' }, createdVolumes: definition.createdVolumes, seedFiles: definition.seedFiles });
    expect(parsed).toMatchObject({ name: 'web-1', uuid: definition.uuid, vcpus: 2, memoryBytes: 512 * 1024 * 1024 });
    expect(parsed.interfaces).toEqual([{ type: 'network', source: 'default', mac: '52:54:00:00:00:01', model: 'virtio' }]);
    expect(xml).toContain('<os firmware="efi">');
    expect(xml).toContain('<vlan>');
    expect(xml).toContain('<secret type="ceph" uuid="00000000-0000-0000-0000-000000000001"/>');
    expect(xml).toContain('<controller type="scsi" index="0" model="virtio-scsi"/>');
  });

  it('writes the configured Ceph monitors as <host> of RBD sources, and none when none are configured', () => {
    const rbdDisk = (monitors?: { host: string; port: number }[]) =>
      buildDiskXml({ source: { type: 'rbd', pool: 'vms', image: 'web-1-disk0', ...(monitors ? { monitors } : {}) }, device: 'disk', bus: 'virtio', cache: 'none', targetDev: 'vdb', bootOrder: 0, readOnly: false });
    expect(rbdDisk([{ host: '10.0.0.1', port: 6789 }, { host: 'fd00::2', port: 3300 }])).toContain(
      ['<source protocol="rbd" name="vms/web-1-disk0">', '    <host name="10.0.0.1" port="6789"/>', '    <host name="fd00::2" port="3300"/>', '  </source>'].join('\n'),
    );
    expect(rbdDisk([])).toContain('<source protocol="rbd" name="vms/web-1-disk0"/>');
    expect(rbdDisk()).toContain('<source protocol="rbd" name="vms/web-1-disk0"/>');
    // The builder escapes whatever reaches it (the config refuses such names long before).
    expect(rbdDisk([{ host: 'x"/><disk', port: 1 }])).toContain('<host name="x&quot;/&gt;&lt;disk" port="1"/>');
    expect(parseDomainXml(buildDomainXml({ ...definition, disks: [{ ...definition.disks[1]!, source: { type: 'rbd', pool: 'rbd', image: 'img', monitors: [{ host: 'mon1', port: 3300 }] } }] })).disks).toMatchObject([
      { targetDev: 'sda', sourcePath: 'rbd/img' },
    ]);
  });

  it('names devices per bus and hashes definitions', () => {
    expect([0, 1, 25, 26, 27].map((i) => targetDevName('virtio', i))).toEqual(['vda', 'vdb', 'vdz', 'vdaa', 'vdab']);
    expect(targetDevName('sata', 2)).toBe('sdc');
    expect(definitionEtag('<domain/>\n')).toBe(definitionEtag('<domain/>'));
    expect(definitionEtag('<domain/>')).not.toBe(definitionEtag('<domain type="kvm"/>'));
    expect(buildDiskXml(definition.disks[0]!)).toMatch(/^<disk type="block" device="disk">/);
  });
});
