// Validators for every name that may reach a host command's argv.
// Each returns the value unchanged or throws InvalidArgumentError naming the field.
// The rules are a deliberately strict subset of what each tool accepts: a name
// we refuse costs a user a rename; a name we wrongly accept can become an option,
// a path or a second object reference in someone else's argv.
import { isIPv4, isIPv6 } from 'node:net';
import { UNSAFE_TEXT } from '../rpc/text.js';
import { InvalidArgumentError } from '../rpc/errors.js';

/** Our cap for pool, VG, LV, image, snapshot and VM names: LVM's own limit (NAME_LEN 128 with NUL), short enough for device paths and metric labels. */
export const MAX_NAME_LENGTH = 127;
/** RFC 1123 / RFC 1035: a full host name is at most 253 characters, each label at most 63. */
export const MAX_HOSTNAME_LENGTH = 253;
const MAX_LABEL_LENGTH = 63;

interface NameRule {
  readonly max: number;
  /** Whole-value pattern over the allowed characters. */
  readonly chars: RegExp;
  /** Human-readable list of the allowed characters, for the error message. */
  readonly charsText: string;
}

/**
 * Checks shared by every kind, in an order that keeps messages short and never
 * echoes the value (it may be 10 kB long or carry control characters).
 */
function common(value: unknown, field: string, max: number): string {
  if (typeof value !== 'string') throw new InvalidArgumentError(field, 'must be a string');
  // An empty name makes tools fall back to defaults ("all VGs", the current pool).
  if (value.length === 0) throw new InvalidArgumentError(field, 'must not be empty');
  // Bounded length: tool limits, and no megabyte-sized argv or log lines.
  if (value.length > max) throw new InvalidArgumentError(field, `must be at most ${max} characters`);
  // NUL truncates the C string the tool sees; newlines forge extra lines in logs and line-based tool output.
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(value)) throw new InvalidArgumentError(field, 'must not contain control characters (NUL, newline, tab, ...)');
  // ASCII only: Unicode look-alikes (Cyrillic "а", fullwidth "－") and zero-width characters make two different names look identical to an operator.
  if (/[^\x20-\x7e]/.test(value)) throw new InvalidArgumentError(field, 'must contain only ASCII characters');
  // A leading "-" turns a name into an option for getopt-style tools.
  if (value.startsWith('-')) throw new InvalidArgumentError(field, "must not start with '-'");
  // ".." is path traversal in /dev/VG/LV, image paths and rbd specs.
  if (value.includes('..')) throw new InvalidArgumentError(field, "must not contain '..'");
  return value;
}

function named(value: unknown, field: string, rule: NameRule): string {
  const v = common(value, field, rule.max);
  if (!rule.chars.test(v)) throw new InvalidArgumentError(field, `may contain only ${rule.charsText}`);
  // "." alone means "the current directory" wherever a name becomes a path component.
  if (v === '.') throw new InvalidArgumentError(field, "must not be '.'");
  return v;
}

// lvm(8) VALID NAMES: a-z A-Z 0-9 + _ . - only.
const LVM: NameRule = { max: MAX_NAME_LENGTH, chars: /^[A-Za-z0-9+_.-]+$/, charsText: 'letters, digits and + _ . -' };
// Ceph forbids "/" and "@" (they separate pool/image@snap) and rbd specs reject whitespace;
// ":" separates options in qemu's "rbd:pool/image:conf=..." so it is excluded too.
const CEPH: NameRule = { max: MAX_NAME_LENGTH, chars: /^[A-Za-z0-9_.-]+$/, charsText: 'letters, digits and _ . -' };
// Snapshot names end up as rbd "@snap" suffixes, LVM LV names and libvirt snapshot names: the intersection of all three.
const SNAPSHOT: NameRule = { max: MAX_NAME_LENGTH, chars: /^[A-Za-z0-9_.-]+$/, charsText: 'letters, digits and _ . -' };
// libvirt allows any printable name without "/"; we keep the characters that are safe as a file name, an XML value and a virsh argument.
const VM: NameRule = { max: MAX_NAME_LENGTH, chars: /^[A-Za-z0-9+_.-]+$/, charsText: 'letters, digits and + _ . -' };

// Internal LV sub-volume suffixes (lvm(8) plus newer releases): a user LV containing one of these confuses lvm's own naming.
const LV_RESERVED_INFIXES = [
  '_cdata', '_cmeta', '_corig', '_iorig', '_mimage', '_mlog', '_pmspare', '_rimage', '_rmeta', '_tdata', '_tmeta',
  '_vdata', '_vorigin', '_wcorig', '_vpool',
];

/** An LVM volume group name. */
export function validateVgName(value: unknown, field: string): string {
  return named(value, field, LVM);
}

/** An LVM logical volume name (also an LVM snapshot's LV name). */
export function validateLvName(value: unknown, field: string): string {
  const v = named(value, field, LVM);
  // lvm refuses LV names starting with "snapshot" or "pvmove": it uses them for its own internal volumes.
  if (v.startsWith('snapshot') || v.startsWith('pvmove')) {
    throw new InvalidArgumentError(field, "must not start with 'snapshot' or 'pvmove' (reserved by LVM)");
  }
  const infix = LV_RESERVED_INFIXES.find((s) => v.includes(s));
  if (infix !== undefined) throw new InvalidArgumentError(field, `must not contain '${infix}' (reserved by LVM)`);
  return v;
}

/** A Ceph pool name. */
export function validatePoolName(value: unknown, field: string): string {
  return named(value, field, CEPH);
}

/** An RBD image name. */
export function validateImageName(value: unknown, field: string): string {
  return named(value, field, CEPH);
}

/** A snapshot name (RBD, LVM or libvirt). LVM snapshot LVs must also pass validateLvName. */
export function validateSnapshotName(value: unknown, field: string): string {
  return named(value, field, SNAPSHOT);
}

/** A libvirt domain (VM) name. */
export function validateVmName(value: unknown, field: string): string {
  return named(value, field, VM);
}

// libvirt network names: the VM rule (safe as a file name, an XML value and a virsh argument).
const NETWORK: NameRule = { max: MAX_NAME_LENGTH, chars: /^[A-Za-z0-9+_.-]+$/, charsText: 'letters, digits and + _ . -' };
// Linux interface names: at most IFNAMSIZ-1 = 15 bytes, no "/" or whitespace; we keep the common subset.
const BRIDGE: NameRule = { max: 15, chars: /^[A-Za-z0-9_.-]+$/, charsText: 'letters, digits and _ . -' };

/** A libvirt network name. */
export function validateNetworkName(value: unknown, field: string): string {
  return named(value, field, NETWORK);
}

/** A host bridge (Linux network interface) name. */
export function validateBridgeName(value: unknown, field: string): string {
  return named(value, field, BRIDGE);
}

/** A host name per RFC 1123: dot-separated labels of letters, digits and inner hyphens. */
export function validateHostname(value: unknown, field: string): string {
  const v = common(value, field, MAX_HOSTNAME_LENGTH);
  // No trailing dot: the name is used as-is in URIs (qemu+ssh://HOST/system) and store keys, so one spelling per host.
  const labels = v.split('.');
  for (const label of labels) {
    if (label.length === 0) throw new InvalidArgumentError(field, 'must not contain empty labels');
    if (label.length > MAX_LABEL_LENGTH) throw new InvalidArgumentError(field, `labels must be at most ${MAX_LABEL_LENGTH} characters`);
    // RFC 1123 §2.1: letters, digits and hyphens; a label neither starts nor ends with a hyphen (a leading digit is allowed).
    if (!/^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$/.test(label)) {
      throw new InvalidArgumentError(field, 'labels may contain only letters, digits and inner hyphens');
    }
  }
  // RFC 1123 §2.1: a host name never has the dotted-decimal form, so it cannot be mistaken for an address.
  if (/^[0-9]+$/.test(labels[labels.length - 1] ?? '')) throw new InvalidArgumentError(field, 'must not end in an all-numeric label');
  return v;
}

/** An IPv4 or IPv6 address, without zone id, prefix length or brackets. */
export function validateIpAddress(value: unknown, field: string): string {
  const v = common(value, field, 45);
  // A "%zone" suffix names a local interface and means nothing on another node.
  if (v.includes('%')) throw new InvalidArgumentError(field, 'must not carry a zone id');
  if (!isIPv4(v) && !isIPv6(v)) throw new InvalidArgumentError(field, 'must be an IPv4 or IPv6 address');
  return v;
}

/**
 * Free text a person wrote (descriptions, labels, owners, reasons): any printable Unicode, at
 * most `max` characters. The one validator for such text everywhere, never echoing the value.
 */
export function validateText(value: unknown, field: string, max: number): string {
  if (typeof value !== 'string') throw new InvalidArgumentError(field, 'must be a string');
  if (value.length > max) throw new InvalidArgumentError(field, `must be at most ${max} characters`);
  if (UNSAFE_TEXT.test(value)) {
    throw new InvalidArgumentError(field, 'must not contain control, line-separator or bidirectional-override characters');
  }
  return value;
}
