// Image format detection from a file's first bytes, done by us before qemu-img opens the file at all.
// Letting qemu probe means qemu opens whatever the header names while probing: a vmdk descriptor's
// extent files, a qcow2's external data file. Here the magic numbers are read (as qemu's probes read
// them, block/*.c), and what makes an image unsafe is refused from the header alone; qemu-img then
// runs with `-f <detected format>` (qemu-img.ts), and never probes.
// Raw is what matches no other format, as in qemu.

/** Bytes read from the start of a file: enough for every probe and qcow2's header extensions. */
export const HEADER_BYTES = 64 * 1024;
/** qemu's probe buffer (BLOCK_PROBE_BUF_SIZE): the vmdk text-descriptor probe looks no further. */
const PROBE_BYTES = 512;

export interface DetectedFormat {
  /** qemu's driver name: raw, qcow2, qcow, vmdk, vdi, qed, vhdx, vpc, luks, parallels, bochs, cloop. */
  readonly format: string;
  /** Why the header alone makes the image unsafe, if it does. */
  readonly unsafe?: { readonly reason: 'backing_file' | 'data_file' | 'encrypted'; readonly message: string };
}

const QCOW_MAGIC = Buffer.from('QFI\xfb', 'latin1');
/** qcow2 incompatible feature bit 2: the data lives in an external file. */
const QCOW2_INCOMPAT_DATA_FILE = 4n;
/** qcow2 header extension naming the external data file ("DATA"). */
const QCOW2_EXT_DATA_FILE = 0x44415441;

const SIMPLE_MAGICS: readonly (readonly [string, Buffer, number])[] = [
  ['qed', Buffer.from('QED\0', 'latin1'), 0],
  ['vhdx', Buffer.from('vhdxfile', 'latin1'), 0],
  ['vpc', Buffer.from('conectix', 'latin1'), 0],
  ['luks', Buffer.from('LUKS\xba\xbe', 'latin1'), 0],
  ['parallels', Buffer.from('WithoutFreeSpace', 'latin1'), 0],
  ['parallels', Buffer.from('WithouFreSpacExt', 'latin1'), 0],
  ['bochs', Buffer.from('Bochs Virtual HD Image', 'latin1'), 0],
  ['cloop', Buffer.from('#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n', 'latin1'), 0],
  // vmdk sparse extents: VMDK4 "KDMV", VMDK3 "COWD".
  ['vmdk', Buffer.from('KDMV', 'latin1'), 0],
  ['vmdk', Buffer.from('COWD', 'latin1'), 0],
  // VDI: the signature 0xbeda107f (little-endian) at 0x40.
  ['vdi', Buffer.from([0x7f, 0x10, 0xda, 0xbe]), 0x40],
];

function startsWithAt(header: Buffer, magic: Buffer, offset: number): boolean {
  return header.length >= offset + magic.length && header.subarray(offset, offset + magic.length).equals(magic);
}

/** qemu's vmdk_probe for text descriptors: comment and blank lines, then "version=1|2|3". */
function isVmdkDescriptor(header: Buffer): boolean {
  const text = header.subarray(0, PROBE_BYTES).toString('latin1');
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    if (/^ *\r?$/.test(line)) continue;
    return /^version=[123]\r?$/.test(line);
  }
  return false;
}

function qcow2(header: Buffer): DetectedFormat {
  if (header.length < 72) return { format: 'qcow2' };
  const version = header.readUInt32BE(4);
  if (version < 2) return { format: 'qcow' };
  const format = 'qcow2';
  if (header.readBigUInt64BE(8) !== 0n) {
    return { format, unsafe: { reason: 'backing_file', message: 'the image has a backing file; only standalone images are accepted (flatten it with qemu-img convert first)' } };
  }
  if (header.readUInt32BE(32) !== 0) return { format, unsafe: { reason: 'encrypted', message: 'the image is encrypted; use an unencrypted image' } };
  if (version >= 3 && header.length >= 104) {
    const external = { reason: 'data_file' as const, message: 'the image keeps its data in an external file; only self-contained images are accepted' };
    if ((header.readBigUInt64BE(72) & QCOW2_INCOMPAT_DATA_FILE) !== 0n) return { format, unsafe: external };
    // Header extensions follow the header: type, length, data padded to 8 bytes; type 0 ends them.
    let offset = header.readUInt32BE(100);
    while (offset + 8 <= header.length) {
      const type = header.readUInt32BE(offset);
      if (type === 0) break;
      if (type === QCOW2_EXT_DATA_FILE) return { format, unsafe: external };
      offset += 8 + Math.ceil(header.readUInt32BE(offset + 4) / 8) * 8;
    }
  }
  return { format };
}

/** The format of an image from its first HEADER_BYTES bytes (fewer for a short file). */
export function detectImageFormat(header: Buffer): DetectedFormat {
  if (startsWithAt(header, QCOW_MAGIC, 0)) return qcow2(header);
  for (const [format, magic, offset] of SIMPLE_MAGICS) if (startsWithAt(header, magic, offset)) return { format };
  if (isVmdkDescriptor(header)) {
    // A text descriptor names its extents: other files, anywhere. Never opened, whatever the allow-list.
    return { format: 'vmdk', unsafe: { reason: 'data_file', message: 'the image is a vmdk descriptor that names other files; only single-file images are accepted' } };
  }
  return { format: 'raw' };
}
