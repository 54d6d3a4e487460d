// systemd readiness (Type=notify) without a native addon: Node has no AF_UNIX
// datagram sockets, so the notification is sent by the systemd-notify helper,
// which the unit allows with NotifyAccess=all. A no-op outside systemd.
import { execFile } from 'node:child_process';
import type { Logger } from 'pino';

/** Sends e.g. ['--ready'] or ['STOPPING=1'] to systemd when NOTIFY_SOCKET is set. */
export function sdNotify(args: readonly string[], log: Pick<Logger, 'warn'>, env: NodeJS.ProcessEnv = process.env): Promise<boolean> {
  if (!env.NOTIFY_SOCKET) return Promise.resolve(false);
  return new Promise((resolve) => {
    execFile('systemd-notify', [...args], { env, timeout: 10_000 }, (err) => {
      if (err) log.warn({ err: err.message, args }, 'systemd-notify failed');
      resolve(!err);
    });
  });
}
