// Format detection from headers (src/backends/qemu-img/format.ts) on crafted bytes: the cases real
// qemu-img will not make on demand (a DATA extension without the feature bit, odd descriptors, other
// formats' magics). Files made by the real qemu-img are covered in qemu-img.test.ts.
import { describe, expect, it } from 'vitest';
import { detectImageFormat } from '../../src/backends/qemu-img/format.js';

/** A qcow2 v3 header (104 bytes) with the given fields, then `extensions` at header_length. */
function qcow2Header(fields: { backingOffset?: bigint; crypt?: number; incompatible?: bigint; version?: number }, extensions: Buffer = Buffer.alloc(8)): Buffer {
  const header = Buffer.alloc(104);
  header.write('QFI\xfb', 0, 'latin1');
  header.writeUInt32BE(fields.version ?? 3, 4);
  header.writeBigUInt64BE(fields.backingOffset ?? 0n, 8);
  header.writeUInt32BE(16, 20);
  header.writeBigUInt64BE(1n << 20n, 24);
  header.writeUInt32BE(fields.crypt ?? 0, 32);
  header.writeBigUInt64BE(fields.incompatible ?? 0n, 72);
  header.writeUInt32BE(4, 96);
  header.writeUInt32BE(104, 100);
  return Buffer.concat([header, extensions]);
}

function extension(type: number, data: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(type, 0);
  head.writeUInt32BE(data.length, 4);
  return Buffer.concat([head, data, Buffer.alloc((8 - (data.length % 8)) % 8)]);
}

describe('detectImageFormat', () => {
  it('a plain qcow2 header is qcow2 and safe', () => {
    expect(detectImageFormat(qcow2Header({}))).toEqual({ format: 'qcow2' });
  });

  it('refuses a backing file, encryption and an external data file from the header', () => {
    expect(detectImageFormat(qcow2Header({ backingOffset: 512n })).unsafe?.reason).toBe('backing_file');
    expect(detectImageFormat(qcow2Header({ crypt: 2 })).unsafe?.reason).toBe('encrypted');
    expect(detectImageFormat(qcow2Header({ incompatible: 4n })).unsafe?.reason).toBe('data_file');
  });

  it('finds a DATA header extension after others, even without the feature bit', () => {
    const exts = Buffer.concat([extension(0x6803f857, Buffer.alloc(20)), extension(0x44415441, Buffer.from('/etc/shadow')), Buffer.alloc(8)]);
    expect(detectImageFormat(qcow2Header({}, exts)).unsafe?.reason).toBe('data_file');
  });

  it('survives extension lengths pointing past the buffer', () => {
    const bogus = Buffer.alloc(8);
    bogus.writeUInt32BE(0x12345678, 0);
    bogus.writeUInt32BE(0xffffffff, 4);
    expect(detectImageFormat(qcow2Header({}, bogus))).toEqual({ format: 'qcow2' });
  });

  it('qcow version 1 and short qcow2 headers', () => {
    expect(detectImageFormat(qcow2Header({ version: 1 })).format).toBe('qcow');
    expect(detectImageFormat(Buffer.from('QFI\xfb\0\0\0\x03', 'latin1'))).toEqual({ format: 'qcow2' });
  });

  it.each([
    ['# Disk DescriptorFile\nversion=1\nRW 2048 FLAT "/etc/shadow" 0\n'],
    ['# comment\n   \nversion=2\r\n'],
    ['version=3\n'],
  ])('refuses a vmdk text descriptor %j', (text) => {
    expect(detectImageFormat(Buffer.from(text))).toMatchObject({ format: 'vmdk', unsafe: { reason: 'data_file' } });
  });

  it('text that is not a descriptor stays raw', () => {
    expect(detectImageFormat(Buffer.from('hello\nversion=1\n'))).toEqual({ format: 'raw' });
    expect(detectImageFormat(Buffer.from('version=4\n'))).toEqual({ format: 'raw' });
    expect(detectImageFormat(Buffer.alloc(0))).toEqual({ format: 'raw' });
  });

  it.each([
    ['QED\0', 'qed'],
    ['vhdxfile', 'vhdx'],
    ['conectix', 'vpc'],
    ['LUKS\xba\xbe', 'luks'],
    ['KDMV', 'vmdk'],
    ['COWD', 'vmdk'],
    ['WithoutFreeSpace', 'parallels'],
  ])('names %j as %s', (magic, format) => {
    expect(detectImageFormat(Buffer.concat([Buffer.from(magic, 'latin1'), Buffer.alloc(512)])).format).toBe(format);
  });

  it('names a VDI by its signature at 0x40', () => {
    const header = Buffer.alloc(512);
    header.writeUInt32LE(0xbeda107f, 0x40);
    expect(detectImageFormat(header).format).toBe('vdi');
  });
});
