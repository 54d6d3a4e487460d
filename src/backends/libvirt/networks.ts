// This node's networks, read-only: libvirt networks (virsh, two processes however many there
// are) and host Linux bridges (sysfs, no process). NodeService.ListNetworks lists them; VM
// creation asks `requireNetwork` / `requireBridge` whether an interface's network exists.
import { randomBytes } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { DomainError, type DomainErrorKind } from '../../errors/domain.js';
import { classify, ExecError, type ClassifyRule } from '../exec.js';
import { validateBridgeName, validateNetworkName } from '../validate.js';
import { VIRSH_RULES } from './errors.js';
import { splitSections, type CallOptions, type Libvirt } from './virsh.js';
import { parseNetworkXml } from './xml.js';

export type NetworkKind = 'libvirt' | 'bridge';

export interface NetworkAddress {
  /** The host's address on the network (IPv4 or IPv6). */
  readonly address: string;
  readonly prefixLength: number;
  readonly dhcpRanges: readonly { readonly start: string; readonly end: string }[];
}

/** A libvirt network or a host bridge, as NodeService.ListNetworks reports it. */
export interface HostNetwork {
  readonly name: string;
  readonly kind: NetworkKind;
  /** The bridge device VM interfaces join: a host bridge's own name; empty for a libvirt network without one. */
  readonly bridge: string;
  /** Libvirt network: started. Host bridge: administratively up (IFF_UP). */
  readonly active: boolean;
  /** Libvirt networks: <forward mode>, "isolated" without <forward>. Host bridges: empty. */
  readonly forwardMode: string;
  /** Libvirt networks: the host's addresses on it. Host bridges: empty. */
  readonly addresses: readonly NetworkAddress[];
}

/** A network or bridge a request names does not exist on this node (NOT_FOUND, naming it). */
export class NetworkNotFoundError extends DomainError {
  readonly meaning: DomainErrorKind = 'not_found';
  readonly safeMessage: string;
  constructor(
    readonly kind: NetworkKind,
    /** Validated before this is built, so safe to show. */
    readonly networkName: string,
  ) {
    const message = kind === 'libvirt' ? `libvirt network ${JSON.stringify(networkName)} does not exist` : `host bridge ${JSON.stringify(networkName)} does not exist on this node`;
    super(message);
    this.name = 'NetworkNotFoundError';
    this.safeMessage = message;
  }
}

/**
 * virsh net-* failures, tried before VIRSH_RULES (whose not_found rule is about domains).
 * "error: failed to get network 'x'" / "Network not found: no network with matching name 'x'" (libvirt 9.0).
 */
export const NETWORK_RULES: readonly ClassifyRule[] = [
  // Connection failures first: they may mention a network too.
  ...VIRSH_RULES.filter((rule) => rule.kind === 'unavailable'),
  { kind: 'not_found', stderr: /failed to get network|Network not found|no network with matching/i, message: 'the libvirt network does not exist' },
  ...VIRSH_RULES.filter((rule) => rule.kind !== 'unavailable'),
];

/** Networks per virsh process when many are read at once (each adds about 0.5 KiB of output). */
const NETWORKS_PER_PROCESS = 50;

/** IFF_UP in /sys/class/net/NAME/flags (linux/if.h). */
const IFF_UP = 0x1;

export interface HostNetworksOptions {
  readonly libvirt: Libvirt;
  /** Where the kernel lists network interfaces; default /sys/class/net. */
  readonly sysClassNet?: string;
}

function lines(stdout: string): string[] {
  return stdout.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
}

function isBatchable(name: string): boolean {
  try {
    validateNetworkName(name, 'network');
    return true;
  } catch {
    return false;
  }
}

const byName = (a: HostNetwork, b: HostNetwork) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

export class HostNetworks {
  private readonly libvirt: Libvirt;
  private readonly sysClassNet: string;

  constructor(options: HostNetworksOptions) {
    this.libvirt = options.libvirt;
    this.sysClassNet = options.sysClassNet ?? '/sys/class/net';
  }

  /** Libvirt networks, then host bridges, each ordered by name. */
  async list(opts: CallOptions = {}): Promise<HostNetwork[]> {
    const [networks, bridges] = await Promise.all([this.libvirtNetworks(opts), this.hostBridges()]);
    return [...networks, ...bridges];
  }

  /**
   * Every libvirt network (active or not), ordered by name: `net-list --all --name`, then one
   * process with each network's `net-dumpxml` and the active list, delimited by echoed markers.
   */
  async libvirtNetworks(opts: CallOptions = {}): Promise<HostNetwork[]> {
    const names = lines(await this.virsh(['net-list', '--all', '--name'], opts));
    const safe = names.filter(isBatchable);
    const odd = names.filter((name) => !isBatchable(name));
    const found = new Map<string, HostNetwork>();
    const batches: string[][] = [];
    for (let i = 0; i < safe.length; i += NETWORKS_PER_PROCESS) batches.push(safe.slice(i, i + NETWORKS_PER_PROCESS));
    const undecided: string[] = [...odd];
    await Promise.all(
      batches.map(async (batch) => {
        for (const [name, network] of await this.describeBatch(batch, opts)) {
          if (network === undefined) undecided.push(name);
          else if (network !== null) found.set(name, network);
        }
      }),
    );
    // Gone meanwhile, or a failure the batch's shared stderr cannot attribute: ask alone.
    await Promise.all(
      undecided.map(async (name) => {
        const network = await this.describeOne(name, opts);
        if (network) found.set(name, network);
      }),
    );
    return [...found.values()].sort(byName);
  }

  /** Host Linux bridges (a `bridge` directory under /sys/class/net/NAME), ordered by name. */
  async hostBridges(): Promise<HostNetwork[]> {
    let entries: string[];
    try {
      entries = await readdir(this.sysClassNet);
    } catch (err) {
      // No sysfs (a container without /sys): no bridges to offer.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const bridges = await Promise.all(entries.map((name) => this.bridge(name)));
    return bridges.filter((b) => b !== undefined).sort(byName);
  }

  /**
   * The libvirt network `name` (validated first: InvalidArgumentError naming `field`), or
   * NetworkNotFoundError (NOT_FOUND, naming it). One virsh process (`field` e.g. "spec.interfaces[0].network").
   */
  async requireNetwork(name: string, field: string, opts: CallOptions = {}): Promise<HostNetwork> {
    const valid = validateNetworkName(name, field);
    let network = (await this.describeBatch([valid], opts)).get(valid);
    if (network === undefined) network = await this.describeOne(valid, opts);
    if (!network) throw new NetworkNotFoundError('libvirt', valid);
    return network;
  }

  /** The host bridge `name` (validated first: InvalidArgumentError naming `field`), or NetworkNotFoundError. No process. */
  async requireBridge(name: string, field: string): Promise<HostNetwork> {
    const bridge = await this.bridge(validateBridgeName(name, field));
    if (!bridge) throw new NetworkNotFoundError('bridge', name);
    return bridge;
  }

  // ------------------------------------------------------------------ plumbing

  private async virsh(args: readonly string[], opts: CallOptions): Promise<string> {
    const result = await this.libvirt.executor.run('virsh', ['--connect', this.libvirt.uri, ...args], opts);
    return this.libvirt.executor.check(result, NETWORK_RULES).stdout;
  }

  /**
   * name → network; null when gone (a one-network batch whose stderr says so); undefined when its
   * section is empty for a reason the batch's shared stderr cannot attribute (ask about it alone).
   */
  private async describeBatch(batch: readonly string[], opts: CallOptions): Promise<Map<string, HostNetwork | null | undefined>> {
    const nonce = randomBytes(6).toString('hex');
    const mark = (part: string) => `::${nonce}:${part}::`;
    const markers = [...batch.map((_, i) => mark(String(i))), mark('active')];
    // Names passed validateNetworkName: no quote, space, ';' or '#' that virsh's command parser would act on.
    const script = [...batch.map((name, i) => `echo ${mark(String(i))}; net-dumpxml --network ${name}`), `echo ${mark('active')}; net-list --name`].join('; ');
    const result = await this.libvirt.executor.run('virsh', ['--connect', this.libvirt.uri, script], opts);
    // stderr is shared by the batch: only a lost connection (or no active list) fails it all.
    const failed = { ...result, code: result.code || 1 };
    const failure = result.stderr.trim() !== '' || result.code !== 0 ? classify(failed, NETWORK_RULES, 'libvirt') : undefined;
    if (failure?.kind === 'unavailable') this.libvirt.executor.check(failed, NETWORK_RULES);
    const sections = splitSections(result.stdout, markers);
    const activeSection = sections.get(mark('active'));
    if (activeSection === undefined) this.libvirt.executor.check(failed, NETWORK_RULES);
    const active = new Set(lines(activeSection ?? ''));
    const out = new Map<string, HostNetwork | null | undefined>();
    batch.forEach((name, i) => {
      const xml = sections.get(mark(String(i)))?.trim() ?? '';
      if (xml !== '') out.set(name, networkOf(xml, active.has(name)));
      else out.set(name, batch.length === 1 && failure?.kind === 'not_found' ? null : undefined);
    });
    return out;
  }

  /** One network by itself (`--network NAME` keeps any name one argument); null when it does not exist. */
  private async describeOne(name: string, opts: CallOptions): Promise<HostNetwork | null> {
    try {
      const [xml, info] = await Promise.all([this.virsh(['net-dumpxml', '--network', name], opts), this.virsh(['net-info', '--network', name], opts)]);
      return networkOf(xml, /^Active:\s+yes$/m.test(info));
    } catch (err) {
      if (err instanceof ExecError && err.kind === 'not_found') return null;
      throw err;
    }
  }

  private async bridge(name: string): Promise<HostNetwork | undefined> {
    const dir = join(this.sysClassNet, name);
    try {
      if (!(await stat(join(dir, 'bridge'))).isDirectory()) return undefined;
      const flags = Number.parseInt((await readFile(join(dir, 'flags'), 'utf8')).trim(), 16);
      return { name, kind: 'bridge', bridge: name, active: Number.isInteger(flags) && (flags & IFF_UP) !== 0, forwardMode: '', addresses: [] };
    } catch (err) {
      // Not a bridge, or removed between readdir and here.
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
      throw err;
    }
  }
}

function networkOf(xml: string, active: boolean): HostNetwork {
  const parsed = parseNetworkXml(xml);
  return { name: parsed.name, kind: 'libvirt', bridge: parsed.bridge, active, forwardMode: parsed.forwardMode, addresses: parsed.addresses };
}
