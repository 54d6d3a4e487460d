// systemd readiness (Type=notify) without a native addon: Node has no AF_UNIX
// datagram sockets, so the notification is sent by the systemd-notify helper,
// which the unit allows with NotifyAccess=all. A no-op outside systemd.
// The helper runs through the exec layer like every host command: absolute path, an
// environment of NOTIFY_SOCKET only, a time limit and capped output.
import type { Logger } from 'pino';
import { Registry } from 'prom-client';
import { createExecutor, ExecError } from '../backends/exec.js';

export const DEFAULT_SYSTEMD_NOTIFY = '/usr/bin/systemd-notify';

/** Sends e.g. ['--ready'] or ['STOPPING=1'] to systemd when NOTIFY_SOCKET is set. */
export async function sdNotify(
  args: readonly string[],
  log: Pick<Logger, 'warn'>,
  env: NodeJS.ProcessEnv = process.env,
  systemdNotifyPath = DEFAULT_SYSTEMD_NOTIFY,
): Promise<boolean> {
  if (!env.NOTIFY_SOCKET) return false;
  try {
    // Two calls in the daemon's life: an executor each, its metrics in a private registry.
    const executor = createExecutor({
      backend: 'systemd',
      binaries: { 'systemd-notify': systemdNotifyPath },
      envAllowList: [],
      extraEnv: { NOTIFY_SOCKET: env.NOTIFY_SOCKET },
      maxConcurrent: 1,
      defaultTimeoutMs: 10_000,
      maxOutputBytes: 64 * 1024,
      killGraceMs: 1000,
      registry: new Registry(),
    });
    executor.check(await executor.run('systemd-notify', args));
    return true;
  } catch (err) {
    log.warn({ err: (err as Error).message, ...(err instanceof ExecError && err.stderr ? { stderr: err.stderr } : {}), args }, 'systemd-notify failed');
    return false;
  }
}
