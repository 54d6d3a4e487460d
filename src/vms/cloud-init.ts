// cloud-init NoCloud seeds for new VMs (docs/cloud-init.md): validation of the caller's documents
// and SSH keys, the documents the seed holds, and the seed ISO (volume id "cidata") written by
// genisoimage through the executor into vms.cloud_init_dir, atomically (temp file + rename).
//
// SSH keys go into meta-data `public-keys`, not into user-data's `ssh_authorized_keys`: cloud-init
// reads `public-keys` from every datasource's meta-data (NoCloud included; KubeVirt and Oxide seed
// keys the same way) and installs them for the default user, whatever the user-data is: a
// #cloud-config, a script or a MIME multipart. user-data is then written exactly as given, never
// re-serialised (no lost comments, no merge rules to guess).
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Registry } from 'prom-client';
import sshpk from 'sshpk';
import { isMap, isScalar, isSeq, parseDocument, stringify, type Document } from 'yaml';
import { createExecutor, type Executor, type SpawnEvent } from '../backends/exec.js';
import { validateHostname, validateVmName } from '../backends/validate.js';
import { InvalidArgumentError } from '../rpc/errors.js';
import { UNSAFE_TEXT } from '../rpc/text.js';

/** What the caller asks the seed to hold. Plain data: no proto types. */
export interface CloudInitInput {
  /** meta-data `instance-id` unless meta-data sets one (cloud-init runs its first-boot modules once per id). */
  readonly instanceId: string;
  /** meta-data `local-hostname` unless meta-data sets one; an RFC 1123 host name. */
  readonly hostname: string;
  /** user-data as given; absent: an empty #cloud-config. */
  readonly userData?: string | undefined;
  /** Extra meta-data (a YAML mapping), merged under the defaults' keys it does not set. */
  readonly metaData?: string | undefined;
  /** network-config (YAML, version 1 or 2); absent: none (cloud-init's DHCP fallback). */
  readonly networkConfig?: string | undefined;
  /** OpenSSH public keys, one per entry ("ssh-ed25519 AAAA... comment"). */
  readonly sshAuthorizedKeys: readonly string[];
}

/** The files of the seed, by their name on the ISO. */
export interface SeedDocuments {
  readonly 'user-data': string;
  readonly 'meta-data': string;
  readonly 'network-config'?: string;
}

/** Each document, in UTF-8 bytes (the limit; well under what a CD-ROM and cloud-init handle). */
export const MAX_CLOUD_INIT_DOCUMENT_BYTES = 64 * 1024;
export const MAX_SSH_AUTHORIZED_KEYS = 32;
/** An RSA 16384-bit key is about 2.8 KiB of base64; anything longer is not a key. */
export const MAX_SSH_KEY_LENGTH = 8 * 1024;
const MIN_RSA_BITS = 2048;
const MAX_INSTANCE_ID_LENGTH = 256;

/**
 * How user-data may start (cloud-init's "user-data formats"). A #cloud-config must be a YAML
 * mapping; the others are passed through as written (cloud-init runs or unpacks them itself).
 */
const USER_DATA_STARTS = ['#cloud-config', '#!', 'Content-Type: multipart/', '#include', '#cloud-boothook', '## template: jinja'] as const;

/** OpenSSH key types accepted (ssh-dss is off in OpenSSH since 7.0; FIDO sk-* keys sshpk cannot read). */
const SSH_KEY_TYPES = new Set(['ssh-ed25519', 'ssh-rsa', 'ecdsa-sha2-nistp256', 'ecdsa-sha2-nistp384', 'ecdsa-sha2-nistp521']);

/** One authorized_keys entry without options: type, base64 blob, optional comment. */
const SSH_KEY_LINE = /^([a-z0-9-]+) ([A-Za-z0-9+/]+={0,2})(?: ([^\s].*))?$/;

function document(value: string, field: string): string {
  if (Buffer.byteLength(value, 'utf8') > MAX_CLOUD_INIT_DOCUMENT_BYTES) throw new InvalidArgumentError(field, `must be at most ${MAX_CLOUD_INIT_DOCUMENT_BYTES} bytes`);
  // A lone surrogate has no UTF-8 form; NUL ends the file for many readers.
  if (!value.isWellFormed()) throw new InvalidArgumentError(field, 'must be valid UTF-8');
  if (value.includes('\0')) throw new InvalidArgumentError(field, 'must not contain NUL characters');
  return value;
}

/** YAML as cloud-init reads it (PyYAML: YAML 1.1), with duplicate keys and alias bombs refused. */
function yamlDocument(value: string, field: string): Document.Parsed {
  const doc = parseDocument(value, { version: '1.1', uniqueKeys: true, prettyErrors: false });
  const error = doc.errors[0];
  if (error) throw new InvalidArgumentError(field, `is not valid YAML (line ${error.linePos?.[0]?.line ?? '?'}: ${error.code})`);
  try {
    // toJS expands aliases, bounded by maxAliasCount: a "billion laughs" document fails here.
    doc.toJS({ maxAliasCount: 100 });
  } catch {
    throw new InvalidArgumentError(field, 'is not valid YAML (too many alias expansions)');
  }
  return doc;
}

/** A YAML document that must be empty or a mapping. */
function yamlMapping(value: string, field: string): Document.Parsed {
  const doc = yamlDocument(value, field);
  if (doc.contents !== null && !isMap(doc.contents) && !(isScalar(doc.contents) && doc.contents.value === null)) {
    throw new InvalidArgumentError(field, 'must be a YAML mapping');
  }
  return doc;
}

function validateUserData(value: string, field: string): void {
  document(value, field);
  if (!USER_DATA_STARTS.some((start) => value.startsWith(start))) {
    throw new InvalidArgumentError(field, `must start with one of ${USER_DATA_STARTS.map((s) => JSON.stringify(s)).join(', ')}`);
  }
  if (value.startsWith('#cloud-config')) {
    // "#cloud-config-archive" is another format (a YAML list): not offered.
    if (!/^#cloud-config[ \t]*(\r?\n|$)/.test(value)) throw new InvalidArgumentError(field, 'the "#cloud-config" line must stand alone');
    yamlMapping(value, field);
  }
}

function validateNetworkConfig(value: string, field: string): void {
  document(value, field);
  const config = yamlMapping(value, field).toJS({ maxAliasCount: 100 }) as unknown;
  // Either {version: 1|2, ...} or {network: {version: 1|2, ...}} (cloud-init's network-config docs).
  const top = typeof config === 'object' && config !== null ? (config as Record<string, unknown>) : {};
  const inner = typeof top.network === 'object' && top.network !== null ? (top.network as Record<string, unknown>) : top;
  // {network: {config: disabled}} turns cloud-init's network configuration off.
  if (inner.config === 'disabled') return;
  if (inner.version !== 1 && inner.version !== 2) throw new InvalidArgumentError(field, 'must have "version: 1" or "version: 2" (at the top or under "network"), or "config: disabled"');
}

/** One OpenSSH public key, parsed by sshpk: returns the line as it goes into the seed. */
export function validateSshKey(value: string, field: string): string {
  if (value.length > MAX_SSH_KEY_LENGTH) throw new InvalidArgumentError(field, `must be at most ${MAX_SSH_KEY_LENGTH} characters`);
  const line = value.trim();
  if (UNSAFE_TEXT.test(line)) throw new InvalidArgumentError(field, 'must be one line without control characters');
  const match = SSH_KEY_LINE.exec(line);
  if (!match) throw new InvalidArgumentError(field, 'is not an OpenSSH public key ("TYPE BASE64 [COMMENT]", without options)');
  const type = match[1] ?? '';
  if (!SSH_KEY_TYPES.has(type)) throw new InvalidArgumentError(field, `key type must be one of ${[...SSH_KEY_TYPES].join(', ')}`);
  let key: sshpk.Key;
  try {
    key = sshpk.parseKey(`${type} ${match[2] ?? ''}`, 'ssh');
  } catch {
    throw new InvalidArgumentError(field, 'does not parse as an OpenSSH public key');
  }
  // The blob names its own algorithm: it must be the one the line claims.
  if (key.toString('ssh').split(' ')[0] !== type) throw new InvalidArgumentError(field, `the key data is not a ${type} key`);
  if (key.type === 'rsa' && key.size < MIN_RSA_BITS) throw new InvalidArgumentError(field, `RSA keys must have at least ${MIN_RSA_BITS} bits`);
  return line;
}

/**
 * Validates everything a seed is built from; throws InvalidArgumentError naming the field under
 * `prefix` (e.g. "spec.cloud_init" → "spec.cloud_init.user_data", "spec.cloud_init.ssh_authorized_keys[1]";
 * instanceId and hostname as "<prefix>.instance_id" and "<prefix>.hostname"). Spawns nothing.
 */
export function validateCloudInit(input: CloudInitInput, prefix: string): void {
  const instanceId = input.instanceId;
  if (instanceId === '' || instanceId.length > MAX_INSTANCE_ID_LENGTH || UNSAFE_TEXT.test(instanceId) || /^\s|\s$/.test(instanceId)) {
    throw new InvalidArgumentError(`${prefix}.instance_id`, `must be 1 to ${MAX_INSTANCE_ID_LENGTH} printable characters without surrounding spaces`);
  }
  validateHostname(input.hostname, `${prefix}.hostname`);
  if (input.userData !== undefined) validateUserData(input.userData, `${prefix}.user_data`);
  if (input.metaData !== undefined) {
    document(input.metaData, `${prefix}.meta_data`);
    const given = yamlMapping(input.metaData, `${prefix}.meta_data`).get('public-keys');
    // The spec's keys are appended to these: a list of key strings (or one string) only.
    if (given !== undefined && typeof given !== 'string' && !(isSeq(given) && given.items.every((item) => isScalar(item) && typeof item.value === 'string'))) {
      throw new InvalidArgumentError(`${prefix}.meta_data`, '"public-keys" must be a key or a list of keys');
    }
  }
  if (input.networkConfig !== undefined) validateNetworkConfig(input.networkConfig, `${prefix}.network_config`);
  if (input.sshAuthorizedKeys.length > MAX_SSH_AUTHORIZED_KEYS) throw new InvalidArgumentError(`${prefix}.ssh_authorized_keys`, `at most ${MAX_SSH_AUTHORIZED_KEYS} keys`);
  input.sshAuthorizedKeys.forEach((key, i) => validateSshKey(key, `${prefix}.ssh_authorized_keys[${i}]`));
  // What the merge adds must fit too: meta-data with the keys folded in.
  document(seedDocuments(input)['meta-data'], `${prefix}.meta_data`);
}

/**
 * The seed's files: user-data as given (or an empty #cloud-config); meta-data with instance-id and
 * local-hostname defaulted and the SSH keys appended to `public-keys`; network-config as given.
 * Call validateCloudInit first.
 */
export function seedDocuments(input: CloudInitInput): SeedDocuments {
  const given = input.metaData === undefined ? {} : ((yamlDocument(input.metaData, 'meta_data').toJS({ maxAliasCount: 100 }) as Record<string, unknown> | null) ?? {});
  const keys = input.sshAuthorizedKeys.map((key) => key.trim());
  const existing = given['public-keys'];
  const publicKeys: unknown[] = existing === undefined ? [] : Array.isArray(existing) ? (existing as unknown[]) : [existing];
  const metaData: Record<string, unknown> = { 'instance-id': input.instanceId, 'local-hostname': input.hostname, ...given };
  if (keys.length > 0) metaData['public-keys'] = [...publicKeys, ...keys];
  return {
    'user-data': input.userData ?? '#cloud-config\n{}\n',
    'meta-data': stringify(metaData, { version: '1.1', lineWidth: 0 }),
    ...(input.networkConfig !== undefined ? { 'network-config': input.networkConfig } : {}),
  };
}

export interface CloudInitSeedsOptions {
  /** Where the ISOs live (vms.cloud_init_dir); created 0711 when missing. */
  readonly dir: string;
  readonly registry: Registry;
  /** Absolute path of genisoimage (vms.genisoimage_path); default /usr/bin/genisoimage. */
  readonly genisoimagePath?: string;
  /** 0644 instead of 0600 (vms.cloud_init_readable_by_all). */
  readonly readableByAll?: boolean;
  readonly timeoutMs?: number;
  readonly onSpawn?: (event: SpawnEvent) => void;
}

/** The seed ISOs of this node's VMs: `<dir>/<vm>.iso`. */
export class CloudInitSeeds {
  readonly dir: string;
  private readonly executor: Executor;
  private readonly fileMode: number;

  constructor(options: CloudInitSeedsOptions) {
    this.dir = options.dir;
    this.fileMode = options.readableByAll ? 0o644 : 0o600;
    this.executor = createExecutor({
      backend: 'cloud-init',
      binaries: { genisoimage: options.genisoimagePath ?? '/usr/bin/genisoimage' },
      envAllowList: ['PATH'],
      maxConcurrent: 2,
      defaultTimeoutMs: options.timeoutMs ?? 60_000,
      maxOutputBytes: 64 * 1024,
      killGraceMs: 2_000,
      registry: options.registry,
      onSpawn: options.onSpawn,
    });
  }

  /** Where the VM's seed is (or would be). */
  seedPath(vmName: string): string {
    return join(this.dir, `${validateVmName(vmName, 'vm_name')}.iso`);
  }

  /**
   * Validates `input` (fields under `prefix`), writes the documents into a private temp directory
   * (0700), runs genisoimage into a temp file beside the seed and renames it over `<dir>/<vm>.iso`:
   * readers see the old seed or the new one, never half of one. Returns the ISO's path.
   */
  async build(vmName: string, input: CloudInitInput, prefix: string, opts: { signal?: AbortSignal } = {}): Promise<string> {
    const target = this.seedPath(vmName);
    validateCloudInit(input, prefix);
    const documents = seedDocuments(input);
    // The daemon's umask (systemd UMask=) would take QEMU's x bit off a new directory: set the mode itself.
    if ((await mkdir(this.dir, { recursive: true, mode: 0o711 })) !== undefined) await chmod(this.dir, 0o711);
    const work = await mkdtemp(join(tmpdir(), 'debvisor-cloud-init-'));
    const partial = join(this.dir, `.${vmName}.iso.${randomBytes(6).toString('hex')}.tmp`);
    try {
      const files: string[] = [];
      for (const [name, text] of Object.entries(documents) as [string, string][]) {
        const file = join(work, name);
        await writeFile(file, text, { mode: 0o600 });
        files.push(file);
      }
      // What cloud-localds runs (cloud-image-utils): Rock Ridge and Joliet, volume id "cidata".
      const result = await this.executor.run('genisoimage', ['-output', partial, '-volid', 'cidata', '-joliet', '-rock', '-input-charset', 'utf-8', '-quiet', ...files], opts);
      this.executor.check(result, []);
      await chmod(partial, this.fileMode);
      await rename(partial, target);
      return target;
    } catch (err) {
      await rm(partial, { force: true });
      throw err;
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }

  /** Removes the VM's seed; no error when there is none. */
  async removeSeed(vmName: string): Promise<void> {
    await rm(this.seedPath(vmName), { force: true });
  }
}
