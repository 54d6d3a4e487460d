// How this daemon reaches a node's libvirt: its own `libvirt.uri` for itself, and
// `migration.target_uri_template` with {hostname} replaced for every other node.
import { validateHostname } from '../backends/validate.js';
import type { Libvirt } from '../backends/libvirt/virsh.js';

/** The template with {hostname} replaced; the hostname is validated (RFC 1123) first, so it cannot add URI syntax. */
export function nodeUri(template: string, hostname: string, field = 'target_node'): string {
  const host = validateHostname(hostname, field);
  return template.replaceAll('{hostname}', host);
}

export class NodeConnections {
  constructor(
    private readonly local: Libvirt,
    /** This daemon's node name (config node.name). */
    readonly localNode: string,
    /** Read per call, so a reloaded template applies to the next migration. */
    private readonly template: () => string,
  ) {}

  /** The libvirt of this daemon's own host. */
  get localLibvirt(): Libvirt {
    return this.local;
  }

  /** The libvirt of `hostname`: the local one for this node, else one built from the template. */
  of(hostname: string, field = 'target_node'): Libvirt {
    if (hostname === this.localNode) return this.local;
    return this.local.connectTo(nodeUri(this.template(), hostname, field));
  }
}
