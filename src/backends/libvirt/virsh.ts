// The libvirt backend: typed VM and VM-snapshot operations on top of `virsh --connect URI`,
// run through the exec layer (argv only, absolute binary, allow-listed env, timeouts).
// Domain facts come from libvirt's XML (dumpxml, snapshot-dumpxml) via a real XML parser;
// the few other outputs used are one-word (domstate) or "Key: value" lines (dominfo, domjobinfo).
// Every VM and snapshot name is validated before anything is spawned.
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Registry } from 'prom-client';
import { classify, createExecutor, ExecError, ExecUsageError, type ClassifyRule, type ExecResult, type Executor, type RunOptions, type SpawnEvent } from '../exec.js';
import { validateSnapshotName, validateText, validateVmName } from '../validate.js';
import { InvalidArgumentError } from '../../rpc/errors.js';
import { STATE_CONFLICT, VIRSH_RULES, VmStateError } from './errors.js';
import { parseDomjobinfo, parseKeyValues, type DomainJobInfo } from './jobinfo.js';
import { parseDomainXml, parseSnapshotXml, type DebvisorMetadata, type DomainDisk, type DomainInterface, type DomainState } from './xml.js';

export type { DebvisorMetadata, DomainDisk, DomainInterface, DomainState, DomainJobInfo };

export const DEFAULT_VIRSH = '/usr/bin/virsh';

/**
 * What virsh may see of the daemon's environment. HOME and XDG_* locate qemu:///session sockets
 * and virsh's config/known-hosts; PATH and SSH_AUTH_SOCK let qemu+ssh:// URIs find ssh and its agent.
 */
export const VIRSH_ENV_ALLOW_LIST = ['PATH', 'HOME', 'XDG_RUNTIME_DIR', 'XDG_CONFIG_HOME', 'XDG_CACHE_HOME', 'SSH_AUTH_SOCK'] as const;

export const MAX_DESCRIPTION_LENGTH = 1024;

export interface LibvirtOptions {
  /** libvirt connection URI, e.g. qemu:///system or test+unix:///default?socket=/path. */
  readonly uri: string;
  readonly registry: Registry;
  /** Absolute path of virsh; default /usr/bin/virsh. */
  readonly virshPath?: string;
  readonly maxConcurrent?: number;
  readonly defaultTimeoutMs?: number;
  readonly maxOutputBytes?: number;
  readonly killGraceMs?: number;
  /** Extra variables for virsh (after the allow-list), e.g. LIBVIRT_AUTH_FILE. */
  readonly extraEnv?: Readonly<Record<string, string>>;
  readonly onSpawn?: (event: SpawnEvent) => void;
}

export interface CallOptions {
  readonly signal?: AbortSignal;
  readonly timeoutMs?: number;
}

/** One VM as ListVms reports it. */
export interface DomainSummary {
  readonly name: string;
  readonly uuid: string;
  readonly state: DomainState;
  readonly vcpus: number;
  readonly memoryBytes: number;
  readonly autostart: boolean;
  readonly persistent: boolean;
  /** Principal that created it with CreateVm; empty or absent when unknown. */
  readonly owner?: string;
}

/** One VM as GetVm reports it. */
export interface Domain extends DomainSummary {
  readonly owner: string;
  readonly description: string;
  /** What CreateVm recorded in the domain's <metadata>. */
  readonly metadata: DebvisorMetadata;
  readonly disks: readonly DomainDisk[];
  readonly interfaces: readonly DomainInterface[];
  /** Name of the current snapshot; empty when none. */
  readonly currentSnapshot: string;
}

export interface DomainSnapshot {
  readonly name: string;
  readonly vmName: string;
  readonly description: string;
  readonly createTime: Date;
  /** VM state when the snapshot was taken. */
  readonly vmState: DomainState;
  /** Parent snapshot; empty for a root. */
  readonly parent: string;
  readonly current: boolean;
}

export interface ShutdownWaitOptions extends CallOptions {
  /** How long to wait for the VM to be off after the ACPI request. */
  readonly waitMs: number;
  /** destroy the VM if it is still on after waitMs. */
  readonly force?: boolean;
  /** State polling interval; default 500 ms. */
  readonly pollMs?: number;
  /** Called with each polled state (operation progress). */
  readonly onPoll?: (state: DomainState, elapsedMs: number) => void;
}

// `virsh domstate` words (LC_ALL=C) → state.
const DOMSTATE: Record<string, DomainState> = {
  'no state': 'nostate',
  running: 'running',
  idle: 'blocked',
  blocked: 'blocked',
  paused: 'paused',
  'in shutdown': 'shutdown',
  'shut off': 'shutoff',
  crashed: 'crashed',
  pmsuspended: 'pmsuspended',
};

/** Parses `virsh domstate` output ("shut off"). */
export function parseDomstate(stdout: string): DomainState {
  return DOMSTATE[stdout.trim().toLowerCase()] ?? 'nostate';
}

/** Non-empty lines (`list --name`, `snapshot-list --name`). */
function lines(stdout: string): string[] {
  return stdout.split(/\r?\n/).map((l) => l.trim()).filter((l) => l.length > 0);
}

const NUMBERED_STATES: readonly DomainState[] = ['nostate', 'running', 'blocked', 'paused', 'shutdown', 'shutoff', 'crashed', 'pmsuspended'];

/** `virsh domstats` output → name → its `key=value` fields. */
export function parseDomstats(stdout: string): Map<string, Map<string, string>> {
  const out = new Map<string, Map<string, string>>();
  let current: Map<string, string> | undefined;
  for (const raw of stdout.split(/\r?\n/)) {
    const line = raw.trim();
    if (line.startsWith("Domain: '") && line.endsWith("'")) out.set(line.slice(9, -1), (current = new Map<string, string>()));
    else if (current !== undefined && line.includes('=')) current.set(line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1));
  }
  return out;
}

function statsState(fields: ReadonlyMap<string, string>): DomainState {
  return NUMBERED_STATES[Number(fields.get('state.state'))] ?? 'nostate';
}

/** `virsh domstats --state` output → name → state (virDomainState numbers). */
export function parseDomstatsState(stdout: string): Map<string, DomainState> {
  const out = new Map<string, DomainState>();
  for (const [name, fields] of parseDomstats(stdout)) if (fields.has('state.state')) out.set(name, statsState(fields));
  return out;
}

/**
 * One domain as the cheap listings show it (the VM inventory's resync compares these to decide
 * which domains need their details read again). vcpus and memory are absent when the driver does
 * not report them in domstats (the test driver does not).
 */
export interface DomainListing {
  readonly name: string;
  readonly uuid: string;
  readonly state: DomainState;
  readonly vcpus: number | undefined;
  readonly memoryBytes: number | undefined;
  readonly autostart: boolean;
  readonly persistent: boolean;
}

/** A domain's full facts, and for a persistent one its inactive XML (what FailoverVM defines elsewhere). */
export interface DomainDetails extends Domain {
  readonly maxMemoryBytes: number;
  /** `dumpxml --inactive`; undefined for a transient domain. */
  readonly inactiveXml: string | undefined;
}

/** Splits the output of `echo MARKER; cmd; echo MARKER; ...` into the text after each marker. */
export function splitSections(stdout: string, markers: readonly string[]): Map<string, string> {
  const wanted = new Set(markers);
  const sections = new Map<string, string>();
  let current: string | undefined;
  let body: string[] = [];
  const flush = () => {
    if (current !== undefined) sections.set(current, body.join('\n'));
  };
  for (const line of stdout.split('\n')) {
    if (wanted.has(line)) {
      flush();
      current = line;
      body = [];
    } else {
      body.push(line);
    }
  }
  flush();
  return sections;
}

/** Domains per virsh process when details of many are read at once (each adds about 4 KiB of output). */
const DETAILS_PER_PROCESS = 25;

function isValidVmName(name: string): boolean {
  try {
    validateVmName(name, 'vm_name');
    return true;
  } catch {
    return false;
  }
}

/** Details from dumpxml, dumpxml --inactive, dominfo and snapshot-current outputs. */
function detailsFrom(xmlText: string, inactiveText: string, info: string, currentSnapshot: string): DomainDetails {
  const xml = parseDomainXml(xmlText);
  const kv = parseKeyValues(info);
  const persistent = kv.Persistent === 'yes';
  const inactive = inactiveText.trim();
  return {
    name: xml.name,
    uuid: xml.uuid,
    state: parseDomstate(kv.State ?? ''),
    vcpus: xml.vcpus,
    memoryBytes: xml.memoryBytes,
    maxMemoryBytes: persistent && inactive !== '' ? parseDomainXml(inactive).maxMemoryBytes : xml.maxMemoryBytes,
    autostart: kv.Autostart === 'enable',
    persistent,
    disks: xml.disks,
    interfaces: xml.interfaces,
    owner: xml.metadata.owner,
    description: xml.description,
    metadata: xml.metadata,
    currentSnapshot,
    // virsh ends its output with a newline the publication has always stored.
    inactiveXml: persistent && inactive !== '' ? `${inactive}\n` : undefined,
  };
}

function validateDescription(value: unknown): string {
  if (value === undefined) return '';
  return validateText(value, 'description', MAX_DESCRIPTION_LENGTH);
}

function validateUri(uri: string): string {
  // A config value, not client input, but it lands in argv: one token, a scheme, nothing option-like.
  if (!/^[a-z][a-z0-9+.-]*:\/\/[^\s]*$/i.test(uri)) throw new ExecUsageError('libvirt uri must look like driver[+transport]://[host]/path');
  return uri;
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason as Error);
      return;
    }
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason as Error);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });

export interface MigrateOptions {
  /** `--compressed`: compress the memory stream. */
  readonly compressed?: boolean;
  /** `--bandwidth N`: limit in MiB/s; 0 or absent = unlimited. */
  readonly bandwidthMiBs?: number;
  /** Kills virsh (not the job: abort the job with jobAbort first, so libvirt cleans up). */
  readonly signal?: AbortSignal;
  readonly timeoutMs?: number;
}

/**
 * `virsh migrate` failures, tried before VIRSH_RULES. With --p2p the source libvirtd opens the
 * target URI itself, so a connection error WITHOUT virsh's own "failed to connect to the
 * hypervisor" line is the target's (captured: migrate-aborted.stderr, connect failure in
 * docs/libvirt-migration.md case 6).
 */
export const MIGRATE_RULES: readonly ClassifyRule[] = [
  // "error: operation aborted: migration out: canceled by client" (domjobabort)
  { kind: 'cancelled', stderr: /operation aborted|canceled by client|cancelled by client/i, message: 'the migration job was aborted' },
  { kind: 'unavailable', stderr: /failed to connect to the hypervisor/i, message: 'the source libvirt is unreachable; retry later' },
  {
    kind: 'unavailable',
    stderr: /Failed to connect socket|Connection refused|End of file while reading data|Cannot recv data|no connection driver available|unable to connect to server|Could not resolve hostname|Host key verification failed|Permission denied \(publickey/i,
    message: "the target node's libvirt is unreachable from the source",
  },
  ...VIRSH_RULES,
];

export class Libvirt {
  readonly uri: string;
  readonly executor: Executor;

  /** A new virsh executor from options, or (connectTo) another URI over an existing one. */
  constructor(options: LibvirtOptions | { readonly uri: string; readonly executor: Executor }) {
    this.uri = validateUri(options.uri);
    if ('executor' in options) {
      this.executor = options.executor;
      return;
    }
    this.executor = createExecutor({
      backend: 'libvirt',
      binaries: { virsh: options.virshPath ?? DEFAULT_VIRSH },
      envAllowList: VIRSH_ENV_ALLOW_LIST,
      extraEnv: options.extraEnv,
      maxConcurrent: options.maxConcurrent ?? 4,
      defaultTimeoutMs: options.defaultTimeoutMs ?? 60_000,
      maxOutputBytes: options.maxOutputBytes ?? 4 * 1024 * 1024,
      killGraceMs: options.killGraceMs ?? 2_000,
      registry: options.registry,
      onSpawn: options.onSpawn,
    });
  }

  /** The same virsh, concurrency limit and metrics, connected to another libvirt (a migration or failover target). */
  connectTo(uri: string): Libvirt {
    return new Libvirt({ uri, executor: this.executor });
  }

  // ------------------------------------------------------------------ plumbing

  /** Runs `virsh --connect URI ARGS` and returns the raw result (any exit code). */
  private run(args: readonly string[], opts: RunOptions = {}): Promise<ExecResult> {
    return this.executor.run('virsh', ['--connect', this.uri, ...args], opts);
  }

  /** Runs and classifies: throws ExecError (not_found, unavailable, …) on failure. */
  private async virsh(args: readonly string[], opts: CallOptions = {}): Promise<string> {
    return this.executor.check(await this.run(args, opts), VIRSH_RULES).stdout;
  }

  /** A lifecycle call: a wrong-state failure becomes VmStateError carrying the VM's current state. */
  private async lifecycle(operation: string, vm: string, args: readonly string[], opts: CallOptions): Promise<void> {
    const result = await this.run(args, opts);
    if (result.code !== 0 && STATE_CONFLICT.test(result.stderr)) {
      const cause = new ExecError({ kind: 'failed', backend: 'libvirt', command: 'virsh', args, exitCode: result.code, stderr: result.stderr });
      let state: DomainState = 'nostate';
      try {
        state = await this.state(vm, { signal: opts.signal });
      } catch {
        // The state is a courtesy for the message; the precondition failure stands.
      }
      throw new VmStateError(vm, state, operation, { cause });
    }
    this.executor.check(result, VIRSH_RULES);
  }

  // ------------------------------------------------------------------ reading

  /** `virsh uri`: succeeds when libvirt answers (readiness / PrepareMigration reachability). */
  async ping(opts: CallOptions = {}): Promise<void> {
    await this.virsh(['uri'], opts);
  }

  /** The VM's state (`virsh domstate`). */
  async state(vmName: string, opts: CallOptions = {}): Promise<DomainState> {
    const vm = validateVmName(vmName, 'vm_name');
    return parseDomstate(await this.virsh(['domstate', '--domain', vm], opts));
  }

  /** The domain XML (`virsh dumpxml`), e.g. to define the VM on another node. */
  async dumpXml(vmName: string, opts: CallOptions & { inactive?: boolean } = {}): Promise<string> {
    const vm = validateVmName(vmName, 'vm_name');
    return this.virsh(['dumpxml', '--domain', vm, ...(opts.inactive ? ['--inactive'] : [])], opts);
  }

  /** One domain's facts, read now (a migration target's, which has no inventory here). */
  async getDomain(vmName: string, opts: CallOptions = {}): Promise<Domain> {
    const vm = validateVmName(vmName, 'vm_name');
    const [xml, info, currentSnapshot] = await Promise.all([this.virsh(['dumpxml', '--domain', vm], opts), this.virsh(['dominfo', '--domain', vm], opts), this.snapshotCurrent(vm, opts)]);
    return detailsFrom(xml, '', info, currentSnapshot);
  }

  /** ListVms: every domain (defined or transient), ordered by name. Paging and filters are the caller's. */
  async listDomains(opts: CallOptions = {}): Promise<DomainSummary[]> {
    const [domains, autostart, persistent, stats] = await Promise.all([
      this.domainXmls(opts),
      this.virsh(['list', '--all', '--name', '--autostart'], opts).then((s) => new Set(lines(s))),
      this.virsh(['list', '--all', '--name', '--persistent'], opts).then((s) => new Set(lines(s))),
      this.virsh(['domstats', '--state'], opts).then(parseDomstatsState),
    ]);
    return domains
      .map(({ name, xml }) => ({
        name: xml.name,
        uuid: xml.uuid,
        state: stats.get(name) ?? 'nostate',
        vcpus: xml.vcpus,
        memoryBytes: xml.memoryBytes,
        autostart: autostart.has(name),
        persistent: persistent.has(name),
      }))
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /**
   * The disks of every domain, defined or transient (running domains as they run now), for
   * whoever must know what uses a volume.
   */
  async domainDisks(opts: CallOptions = {}): Promise<{ readonly name: string; readonly disks: readonly DomainDisk[] }[]> {
    return (await this.domainXmls(opts)).map(({ name, xml }) => ({ name, disks: xml.disks }));
  }

  /** Every domain's (live) XML, by the name it was listed under; one undefined meanwhile is simply gone. */
  private async domainXmls(opts: CallOptions): Promise<{ readonly name: string; readonly xml: ReturnType<typeof parseDomainXml> }[]> {
    const names = lines(await this.virsh(['list', '--all', '--name'], opts));
    const domains = await Promise.all(
      names.map(async (name) => {
        try {
          // Names come from libvirt, not a client; `--domain NAME` keeps even odd ones a value.
          return { name, xml: parseDomainXml(await this.virsh(['dumpxml', '--domain', name], opts)) };
        } catch (err) {
          if (err instanceof ExecError && err.kind === 'not_found') return undefined;
          throw err;
        }
      }),
    );
    return domains.filter((d) => d !== undefined);
  }

  // ------------------------------------------------------------------ the VM inventory's reads

  /**
   * Every domain (defined or transient) as the cheap listings show it, from ONE virsh process:
   * `list --all --uuid --name`, `domstats --state --vcpu --balloon`, and the autostart and persistent
   * lists, delimited by echoed markers (virsh runs `a; b` in one process and goes on after a failure,
   * so any stderr fails the whole listing).
   */
  async domainListing(opts: CallOptions = {}): Promise<DomainListing[]> {
    const nonce = randomBytes(6).toString('hex');
    const marks = ['uuids', 'stats', 'autostart', 'persistent'].map((part) => `::${nonce}:${part}::`) as [string, string, string, string];
    const commands = ['list --all --uuid --name', 'domstats --state --vcpu --balloon', 'list --all --name --autostart', 'list --all --name --persistent'];
    const script = commands.map((command, i) => `echo ${marks[i]}; ${command}`).join('; ');
    const result = await this.run([script], opts);
    if (result.stderr.trim() !== '' || result.code !== 0) this.executor.check({ ...result, code: result.code || 1 }, VIRSH_RULES);
    const sections = splitSections(result.stdout, marks);
    const stats = parseDomstats(sections.get(marks[1]) ?? '');
    const autostart = new Set(lines(sections.get(marks[2]) ?? ''));
    const persistent = new Set(lines(sections.get(marks[3]) ?? ''));
    return lines(sections.get(marks[0]) ?? '').flatMap((line) => {
      const space = line.indexOf(' ');
      if (space < 0) return [];
      const name = line.slice(space + 1).trim();
      const fields = stats.get(name) ?? new Map<string, string>();
      const vcpus = fields.get('vcpu.current');
      const balloon = fields.get('balloon.current');
      return [
        {
          name,
          uuid: line.slice(0, space),
          state: statsState(fields),
          vcpus: vcpus === undefined ? undefined : Number(vcpus),
          // domstats reports the balloon in KiB.
          memoryBytes: balloon === undefined ? undefined : Number(balloon) * 1024,
          autostart: autostart.has(name),
          persistent: persistent.has(name),
        },
      ];
    });
  }

  /**
   * Details of the named domains (names as libvirt reported them): name → details, or null when
   * the domain does not exist. Names that pass validateVmName are read many per virsh process,
   * their commands joined with echoed markers; anything else (a name virsh's command parser could
   * misread) takes one process per command, with the name as its own argv element.
   */
  async domainDetails(names: readonly string[], opts: CallOptions = {}): Promise<Map<string, DomainDetails | null>> {
    const safe: string[] = [];
    const odd: string[] = [];
    for (const name of names) (isValidVmName(name) ? safe : odd).push(name);
    const out = new Map<string, DomainDetails | null>();
    const batches: string[][] = [];
    for (let i = 0; i < safe.length; i += DETAILS_PER_PROCESS) batches.push(safe.slice(i, i + DETAILS_PER_PROCESS));
    const undecided: string[] = [];
    await Promise.all(
      batches.map(async (batch) => {
        for (const [name, details] of await this.detailsBatch(batch, opts)) {
          if (details === undefined) undecided.push(name);
          else out.set(name, details);
        }
      }),
    );
    // An empty dumpxml in a batch: gone, or a failure the shared stderr cannot attribute. Ask alone.
    await Promise.all([...odd, ...undecided].map(async (name) => out.set(name, await this.detailsOneByOne(name, opts))));
    return out;
  }

  /** name → details, null (gone: a single-domain batch whose stderr says so) or undefined (unknown). */
  private async detailsBatch(batch: readonly string[], opts: CallOptions): Promise<Map<string, DomainDetails | null | undefined>> {
    const nonce = randomBytes(6).toString('hex');
    const mark = (i: number, part: string) => `::${nonce}:${i}:${part}::`;
    const markers: string[] = [];
    const script = batch
      .flatMap((name, i) => {
        const parts: [string, string][] = [
          ['xml', `dumpxml --domain ${name}`],
          ['inactive', `dumpxml --inactive --domain ${name}`],
          ['info', `dominfo --domain ${name}`],
          ['snapshot', `snapshot-current --domain ${name} --name`],
        ];
        return parts.map(([part, command]) => {
          markers.push(mark(i, part));
          return `echo ${mark(i, part)}; ${command}`;
        });
      })
      .concat(`echo ${mark(-1, 'end')}`)
      .join('; ');
    markers.push(mark(-1, 'end'));
    const result = await this.run([script], opts);
    // stderr is shared by the whole batch: only a lost connection is everyone's failure. A domain
    // whose section is missing or empty (gone, busy, output cut at the cap) is asked about alone.
    const failed = { ...result, code: result.code || 1 };
    const failure = result.stderr.trim() !== '' || result.code !== 0 ? classify(failed, VIRSH_RULES, 'libvirt') : undefined;
    if (failure?.kind === 'unavailable') this.executor.check(failed, VIRSH_RULES);
    const sections = splitSections(result.stdout, markers);
    const out = new Map<string, DomainDetails | null | undefined>();
    batch.forEach((name, i) => {
      const xml = sections.get(mark(i, 'xml'))?.trim() ?? '';
      if (xml === '') {
        out.set(name, batch.length === 1 && failure?.kind === 'not_found' ? null : undefined);
        return;
      }
      out.set(name, detailsFrom(xml, sections.get(mark(i, 'inactive')) ?? '', sections.get(mark(i, 'info')) ?? '', (sections.get(mark(i, 'snapshot')) ?? '').trim()));
    });
    return out;
  }

  /** Details with one virsh per command (`--domain NAME` keeps even an odd name one argument). */
  private async detailsOneByOne(name: string, opts: CallOptions): Promise<DomainDetails | null> {
    try {
      const xml = await this.virsh(['dumpxml', '--domain', name], opts);
      const [inactive, info, snapshot] = await Promise.all([
        this.virsh(['dumpxml', '--inactive', '--domain', name], opts),
        this.virsh(['dominfo', '--domain', name], opts),
        this.run(['snapshot-current', '--domain', name, '--name'], opts).then((r) => (r.code === 0 ? r.stdout.trim() : '')),
      ]);
      return detailsFrom(xml, inactive, info, snapshot);
    } catch (err) {
      if (err instanceof ExecError && err.kind === 'not_found') return null;
      throw err;
    }
  }

  // ------------------------------------------------------------------ definition

  /** `virsh define` from XML text (via a private temp file); returns the domain name. */
  async defineXml(xml: string, opts: CallOptions = {}): Promise<string> {
    const name = parseDomainXml(xml).name;
    validateVmName(name, 'vm_name');
    // virsh reads the file itself; node's stdin "pipe" is a socketpair, which /dev/stdin cannot open.
    const dir = await mkdtemp(join(tmpdir(), 'debvisor-define-'));
    try {
      const file = join(dir, 'domain.xml');
      await writeFile(file, xml, { mode: 0o600 });
      await this.virsh(['define', '--file', file], opts);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    return name;
  }

  /** This host as libvirt sees it: logical CPUs and memory (`virsh nodeinfo`, `virsh freecell`). */
  async nodeResources(opts: CallOptions = {}): Promise<{ cpus: number; memoryBytes: number; freeMemoryBytes: number | undefined }> {
    const [info, free] = await Promise.all([this.virsh(['nodeinfo'], opts), this.run(['freecell'], opts)]);
    const kv = parseKeyValues(info);
    const cpus = Number(kv['CPU(s)'] ?? '0');
    const memoryKiB = Number((kv['Memory size'] ?? '0').replace(/\s*KiB$/, ''));
    // "Total: 3072 KiB" (the whole host when NUMA cells are not listed); absent when the driver cannot tell.
    const freeKiB = free.code === 0 ? /([0-9]+)\s*KiB/.exec(free.stdout)?.[1] : undefined;
    return { cpus: Number.isInteger(cpus) ? cpus : 0, memoryBytes: Number.isFinite(memoryKiB) ? memoryKiB * 1024 : 0, freeMemoryBytes: freeKiB === undefined ? undefined : Number(freeKiB) * 1024 };
  }

  /** CPU model names libvirt knows for x86_64 (`virsh cpu-models`); empty when the driver cannot list them. */
  async cpuModels(opts: CallOptions = {}): Promise<string[]> {
    const result = await this.run(['cpu-models', 'x86_64'], opts);
    return result.code === 0 ? lines(result.stdout) : [];
  }

  /** `virsh autostart [--disable]`. */
  async setAutostart(vmName: string, enabled: boolean, opts: CallOptions = {}): Promise<void> {
    const vm = validateVmName(vmName, 'vm_name');
    await this.virsh(['autostart', '--domain', vm, ...(enabled ? [] : ['--disable'])], opts);
  }

  /**
   * Applies a device change (`attach-device`/`detach-device` with the device XML in a private temp
   * file): `live` also changes the running VM. Throws the classified virsh failure.
   */
  async changeDevice(vmName: string, change: 'attach' | 'detach', deviceXml: string, scope: { live: boolean; config: boolean }, opts: CallOptions = {}): Promise<void> {
    const vm = validateVmName(vmName, 'vm_name');
    const dir = await mkdtemp(join(tmpdir(), 'debvisor-device-'));
    try {
      const file = join(dir, 'device.xml');
      await writeFile(file, deviceXml, { mode: 0o600 });
      await this.virsh([`${change}-device`, '--domain', vm, '--file', file, ...(scope.live ? ['--live'] : []), ...(scope.config ? ['--config'] : [])], opts);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** `virsh setvcpus N --live`: the running VM's vCPUs (within its maximum). */
  async setLiveVcpus(vmName: string, vcpus: number, opts: CallOptions = {}): Promise<void> {
    const vm = validateVmName(vmName, 'vm_name');
    if (!Number.isInteger(vcpus) || vcpus < 1) throw new InvalidArgumentError('vcpus', 'must be a positive integer');
    await this.virsh(['setvcpus', '--domain', vm, '--count', String(vcpus), '--live'], opts);
  }

  /** `virsh setmem --live` (the balloon, within the VM's maximum memory). */
  async setLiveMemory(vmName: string, memoryBytes: bigint, opts: CallOptions = {}): Promise<void> {
    const vm = validateVmName(vmName, 'vm_name');
    await this.virsh(['setmem', '--domain', vm, '--size', `${memoryBytes / 1024n}KiB`, '--live'], opts);
  }

  /**
   * `virsh undefine` with the snapshot metadata and, with `nvram` (a UEFI VM), its NVRAM file. The
   * test driver refuses --nvram ("unsupported flags"), so only a VM that has NVRAM asks for it.
   */
  async undefineVm(vmName: string, opts: CallOptions & { nvram?: boolean } = {}): Promise<void> {
    const vm = validateVmName(vmName, 'vm_name');
    await this.virsh(['undefine', '--domain', vm, '--snapshots-metadata', ...(opts.nvram ? ['--nvram'] : [])], opts);
  }

  /** `virsh undefine` (also drops snapshot metadata, which libvirt otherwise refuses). */
  async undefine(vmName: string, opts: CallOptions = {}): Promise<void> {
    const vm = validateVmName(vmName, 'vm_name');
    await this.virsh(['undefine', '--domain', vm, '--snapshots-metadata'], opts);
  }

  // ------------------------------------------------------------------ lifecycle

  async start(vmName: string, opts: CallOptions = {}): Promise<void> {
    const vm = validateVmName(vmName, 'vm_name');
    await this.lifecycle('start', vm, ['start', '--domain', vm], opts);
  }

  /** Resumes a paused VM (StartVm on a paused VM). */
  async resume(vmName: string, opts: CallOptions = {}): Promise<void> {
    const vm = validateVmName(vmName, 'vm_name');
    await this.lifecycle('resume', vm, ['resume', '--domain', vm], opts);
  }

  /** Asks the guest to shut down (ACPI) and returns at once. */
  async shutdown(vmName: string, opts: CallOptions = {}): Promise<void> {
    const vm = validateVmName(vmName, 'vm_name');
    await this.lifecycle('shut down', vm, ['shutdown', '--domain', vm], opts);
  }

  /**
   * shutdown, then poll until the VM is off for up to `waitMs`; with `force`, destroy it after that.
   * Resolves with the final state and whether it was forced; a VM still on without force is not an error.
   */
  async shutdownAndWait(vmName: string, opts: ShutdownWaitOptions): Promise<{ state: DomainState; forced: boolean }> {
    const vm = validateVmName(vmName, 'vm_name');
    const call: CallOptions = { signal: opts.signal };
    await this.shutdown(vm, call);
    const started = performance.now();
    const pollMs = opts.pollMs ?? 500;
    for (;;) {
      const state = await this.state(vm, call);
      const elapsed = performance.now() - started;
      opts.onPoll?.(state, elapsed);
      if (state === 'shutoff' || state === 'crashed') return { state, forced: false };
      if (elapsed >= opts.waitMs) break;
      await sleep(Math.min(pollMs, Math.max(1, opts.waitMs - elapsed)), opts.signal);
    }
    if (!opts.force) return { state: await this.state(vm, call), forced: false };
    try {
      await this.destroy(vm, call);
    } catch (err) {
      // It went off by itself between the last poll and the destroy.
      if (!(err instanceof VmStateError)) throw err;
    }
    return { state: await this.state(vm, call), forced: true };
  }

  async reboot(vmName: string, opts: CallOptions = {}): Promise<void> {
    const vm = validateVmName(vmName, 'vm_name');
    await this.lifecycle('reboot', vm, ['reboot', '--domain', vm], opts);
  }

  /** Hard power-off; `graceful` = SIGTERM only (fails if the process does not exit). */
  async destroy(vmName: string, opts: CallOptions & { graceful?: boolean } = {}): Promise<void> {
    const vm = validateVmName(vmName, 'vm_name');
    await this.lifecycle('destroy', vm, ['destroy', '--domain', vm, ...(opts.graceful ? ['--graceful'] : [])], opts);
  }

  // ------------------------------------------------------------------ snapshots

  /** `snapshot-create-as`; returns the new snapshot (now the current one). */
  async snapshotCreate(vmName: string, snapshotName: string, description?: string, opts: CallOptions = {}): Promise<DomainSnapshot> {
    const vm = validateVmName(vmName, 'vm_name');
    const snap = validateSnapshotName(snapshotName, 'snapshot_name');
    const desc = validateDescription(description);
    // "--opt=value" keeps a description starting with "-" a value.
    const args = ['snapshot-create-as', '--domain', vm, '--name', snap];
    if (desc !== '') args.push(`--description=${desc}`);
    await this.virsh(args, opts);
    return this.snapshotInfo(vm, snap, snap, opts);
  }

  private async snapshotInfo(vm: string, snap: string, current: string, opts: CallOptions): Promise<DomainSnapshot> {
    const s = parseSnapshotXml(await this.virsh(['snapshot-dumpxml', '--domain', vm, '--snapshotname', snap], opts));
    return { name: s.name, vmName: vm, description: s.description, createTime: s.createTime, vmState: s.state, parent: s.parent, current: s.name === current };
  }

  /** Name of the VM's current snapshot; empty when it has none. */
  async snapshotCurrent(vmName: string, opts: CallOptions = {}): Promise<string> {
    const vm = validateVmName(vmName, 'vm_name');
    const result = await this.run(['snapshot-current', '--domain', vm, '--name'], opts);
    // "error: domain 'vm1' has no current snapshot"
    if (result.code !== 0 && /has no current snapshot/.test(result.stderr)) return '';
    return this.executor.check(result, VIRSH_RULES).stdout.trim();
  }

  /** Snapshot names, parents before children (`snapshot-list --topological`). */
  async snapshotNames(vmName: string, opts: CallOptions = {}): Promise<string[]> {
    const vm = validateVmName(vmName, 'vm_name');
    return lines(await this.virsh(['snapshot-list', '--domain', vm, '--name', '--topological'], opts));
  }

  /** ListVmSnapshots: every snapshot with its metadata, oldest first. */
  async snapshotList(vmName: string, opts: CallOptions = {}): Promise<DomainSnapshot[]> {
    const vm = validateVmName(vmName, 'vm_name');
    const [names, current] = await Promise.all([this.snapshotNames(vm, opts), this.snapshotCurrent(vm, opts)]);
    const snaps = await Promise.all(names.map((n) => this.snapshotInfo(vm, n, current, opts)));
    // Stable sort: equal creation seconds keep the topological order.
    return snaps.sort((a, b) => a.createTime.getTime() - b.createTime.getTime());
  }

  async snapshotRevert(vmName: string, snapshotName: string, opts: CallOptions = {}): Promise<void> {
    const vm = validateVmName(vmName, 'vm_name');
    const snap = validateSnapshotName(snapshotName, 'snapshot_name');
    await this.virsh(['snapshot-revert', '--domain', vm, '--snapshotname', snap], opts);
  }

  /** Deletes a snapshot (and with `children`, its descendants); returns every name deleted. */
  async snapshotDelete(vmName: string, snapshotName: string, opts: CallOptions & { children?: boolean } = {}): Promise<string[]> {
    const vm = validateVmName(vmName, 'vm_name');
    const snap = validateSnapshotName(snapshotName, 'snapshot_name');
    let deleted = [snap];
    if (opts.children) {
      const descendants = lines(await this.virsh(['snapshot-list', '--domain', vm, '--from', snap, '--descendants', '--name'], opts));
      deleted = [snap, ...descendants.filter((n) => n !== snap)];
    }
    await this.virsh(['snapshot-delete', '--domain', vm, '--snapshotname', snap, ...(opts.children ? ['--children'] : [])], opts);
    return deleted;
  }

  // ------------------------------------------------------------------ jobs (migration progress)

  /** `virsh domjobinfo`: the VM's active job (type "None" when there is none). */
  async jobInfo(vmName: string, opts: CallOptions & { completed?: boolean } = {}): Promise<DomainJobInfo> {
    const vm = validateVmName(vmName, 'vm_name');
    return parseDomjobinfo(await this.virsh(['domjobinfo', '--domain', vm, ...(opts.completed ? ['--completed'] : [])], opts));
  }

  /**
   * Live migration, peer to peer and tunnelled (the source libvirtd connects to `targetUri` and
   * carries the memory over that connection, so no migration port has to be open):
   * `virsh migrate --live --persistent --undefinesource --p2p --tunnelled [--compressed] [--bandwidth N] --domain VM --desturi URI`.
   * Resolves when libvirt reports the migration complete; throws ExecError classified by MIGRATE_RULES.
   */
  async migrate(vmName: string, targetUri: string, opts: MigrateOptions = {}): Promise<void> {
    const vm = validateVmName(vmName, 'vm_name');
    const uri = validateUri(targetUri);
    const bandwidth = opts.bandwidthMiBs ?? 0;
    if (!Number.isInteger(bandwidth) || bandwidth < 0) throw new InvalidArgumentError('bandwidth_mib_s', 'must be a non-negative integer');
    const args = ['migrate', '--live', '--persistent', '--undefinesource', '--p2p', '--tunnelled'];
    if (opts.compressed) args.push('--compressed');
    if (bandwidth > 0) args.push('--bandwidth', String(bandwidth));
    args.push('--domain', vm, '--desturi', uri);
    const result = await this.run(args, { ...(opts.signal ? { signal: opts.signal } : {}), ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}) });
    this.executor.check(result, MIGRATE_RULES);
  }

  /** `virsh domjobabort`: cancels the VM's active job (a migration). */
  async jobAbort(vmName: string, opts: CallOptions = {}): Promise<void> {
    const vm = validateVmName(vmName, 'vm_name');
    await this.virsh(['domjobabort', '--domain', vm], opts);
  }
}
