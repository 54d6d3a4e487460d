// A host Linux bridge that an unprivileged QEMU session (startLibvirt({driver:'qemu'}), libvirtd as
// `nobody`) can put NICs on. Unprivileged libvirt connects an <interface type='bridge'> through
// qemu.conf's `bridge_helper` (QEMU's qemu-bridge-helper): it creates the tap, makes it a port of the
// bridge and passes the tap's fd back to libvirt for QEMU. Debian installs the helper without
// privileges, so the test gives a private copy of it what it needs (needs root):
//  - file capabilities CAP_NET_ADMIN (tap, bridge port) and CAP_DAC_OVERRIDE (/dev/net/tun may be
//    root-only, 0600, as on this CI machine). Not setuid root: a setuid helper drops to the caller's
//    uid keeping only CAP_NET_ADMIN, and `nobody` then cannot open a 0600 /dev/net/tun;
//  - the helper only joins bridges its ACL allows, read from /etc/qemu/bridge.conf, a path compiled
//    into the binary (no option, no environment variable). The file is written ("allow <bridge>")
//    only when it does not exist, never edited, and removed by stop() (with /etc/qemu if this made it).
// Everything has a unique name and goes in stop(), or at process exit if stop() was never called.
import { execFile, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, rmSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
export const BRIDGE_HELPER = '/usr/lib/qemu/qemu-bridge-helper';
/** Compiled into qemu-bridge-helper (`strings` shows it; Debian's package does not ship the file). */
export const BRIDGE_ACL = '/etc/qemu/bridge.conf';
const IP = '/usr/sbin/ip';
const SETCAP = '/usr/sbin/setcap';
const env = { LC_ALL: 'C', PATH: '/usr/sbin:/usr/bin:/sbin:/bin' };

export interface TestBridge {
  /** The bridge's interface name (dvbr + 6 hex digits), up. */
  readonly name: string;
  /** What the session's qemu.conf needs: startLibvirt({ driver: 'qemu', qemuConf }). */
  readonly qemuConf: string;
  /** Removes the bridge, the ACL file (and /etc/qemu if created here) and the helper copy. Idempotent. */
  stop(): Promise<void>;
}

/** True when the tools are here and we are root (a test can say why it cannot run otherwise). */
export function bridgeSupported(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (creates a bridge, gives a helper file capabilities)';
  for (const tool of [BRIDGE_HELPER, IP, SETCAP]) if (!existsSync(tool)) return `${tool} is missing (qemu-system-common, iproute2, libcap2-bin)`;
  return undefined;
}

export async function startBridge(): Promise<TestBridge> {
  const unsupported = bridgeSupported();
  if (unsupported !== undefined) throw new Error(`cannot make a test bridge: ${unsupported}`);
  const name = `dvbr${randomBytes(3).toString('hex')}`;
  const undo: (() => void)[] = [];
  let stopped = false;
  const cleanUp = () => {
    for (const step of undo.splice(0).reverse()) step();
  };
  const onExit = () => cleanUp();
  process.once('exit', onExit);
  const stop = (): Promise<void> => {
    if (!stopped) {
      stopped = true;
      process.removeListener('exit', onExit);
      cleanUp();
    }
    return Promise.resolve();
  };
  try {
    // The ACL first: if an operator's file is there, nothing else is made.
    if (existsSync(BRIDGE_ACL)) throw new Error(`${BRIDGE_ACL} exists: this test does not edit an existing ACL (the helper has no per-user one); run it where the file does not exist`);
    const madeEtcQemu = (await mkdir('/etc/qemu', { recursive: true })) !== undefined;
    // Only what this made goes: /etc/qemu only when empty again.
    if (madeEtcQemu) undo.push(() => spawnSync('/usr/bin/rmdir', ['/etc/qemu'], { env, stdio: 'ignore' }));
    // 'wx': a concurrent writer wins, and we fail rather than overwrite its file.
    await writeFile(BRIDGE_ACL, `# written by a debvisor-rpcd test (test/support/bridge.ts); removed when it ends\nallow ${name}\n`, { flag: 'wx', mode: 0o644 });
    undo.push(() => rmSync(BRIDGE_ACL, { force: true }));

    await run(IP, ['link', 'add', name, 'type', 'bridge'], { env });
    undo.push(() => spawnSync(IP, ['link', 'del', name], { env, stdio: 'ignore' }));
    await run(IP, ['link', 'set', name, 'up'], { env });

    // World-traversable, so libvirtd as `nobody` can run the helper.
    const dir = await mkdtemp(join(tmpdir(), 'debvisor-bridge-helper-'));
    undo.push(() => rmSync(dir, { recursive: true, force: true }));
    await chmod(dir, 0o755);
    const helper = join(dir, 'qemu-bridge-helper');
    await copyFile(BRIDGE_HELPER, helper);
    await chmod(helper, 0o755);
    await run(SETCAP, ['cap_net_admin,cap_dac_override+ep', helper], { env });
    return { name, qemuConf: `bridge_helper = "${helper}"\n`, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
