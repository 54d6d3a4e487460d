// Which libvirt disks are a given volume, and what DeleteVolume hears when libvirt cannot be asked.
import { status as Status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import type { Libvirt } from '../../src/backends/libvirt/virsh.js';
import type { DomainDisk } from '../../src/backends/libvirt/xml.js';
import { RpcError } from '../../src/rpc/errors.js';
import { diskUsesVolume, libvirtAttachments } from '../../src/storage/attachments.js';

const disk = (sourceType: string, sourcePath: string, protocol = ''): DomainDisk => ({ targetDev: 'vda', sourcePath, format: 'raw', device: 'disk', sourceType, protocol });

describe('diskUsesVolume', () => {
  const rbd = { backend: 'rbd', pool: 'ci', name: 'root' } as const;
  const lvm = { backend: 'lvm', pool: 'vg-0', name: 'data-1' } as const;

  it('matches an RBD network disk on the image, at any snapshot, and nothing else', () => {
    expect(diskUsesVolume(disk('network', 'ci/root', 'rbd'), rbd)).toBe(true);
    expect(diskUsesVolume(disk('network', 'ci/root@nightly', 'rbd'), rbd)).toBe(true);
    expect(diskUsesVolume(disk('network', 'ci/root-2', 'rbd'), rbd)).toBe(false);
    expect(diskUsesVolume(disk('network', 'other/root', 'rbd'), rbd)).toBe(false);
    expect(diskUsesVolume(disk('network', 'ci/root', 'nbd'), rbd)).toBe(false);
    expect(diskUsesVolume(disk('file', 'ci/root'), rbd)).toBe(false);
  });

  it('matches the LV as /dev/VG/LV or its device-mapper name (dashes doubled)', () => {
    expect(diskUsesVolume(disk('block', '/dev/vg-0/data-1'), lvm)).toBe(true);
    expect(diskUsesVolume(disk('block', '/dev/mapper/vg--0-data--1'), lvm)).toBe(true);
    expect(diskUsesVolume(disk('block', '/dev/mapper/vg-0-data-1'), lvm)).toBe(false);
    expect(diskUsesVolume(disk('block', '/dev/vg-0/data-10'), lvm)).toBe(false);
    expect(diskUsesVolume(disk('file', '/dev/vg-0/data-1'), lvm)).toBe(false);
  });
});

describe('libvirtAttachments', () => {
  it('names the VMs using the volume', async () => {
    const libvirt = { domainDisks: () => Promise.resolve([{ name: 'a', disks: [disk('block', '/dev/vg/lv')] }, { name: 'b', disks: [disk('block', '/dev/vg/other')] }]) };
    expect(await libvirtAttachments(libvirt as unknown as Libvirt)({ backend: 'lvm', pool: 'vg', name: 'lv' })).toEqual(['a']);
  });

  it('refuses with UNAVAILABLE when libvirt cannot be asked (unknown is not safe)', async () => {
    const libvirt = { domainDisks: () => Promise.reject(new Error('libvirt is unreachable')) };
    const err = await libvirtAttachments(libvirt as unknown as Libvirt)({ backend: 'rbd', pool: 'ci', name: 'root' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RpcError);
    expect((err as RpcError).code).toBe('UNAVAILABLE');
    expect((err as RpcError).message).toContain('set force');
    expect(Status.UNAVAILABLE).toBe(14);
  });
});
