// Probes the store on a timer so readiness follows it: NOT_SERVING soon after it
// becomes unreachable, SERVING again once it answers. The daemon stays up throughout.
// On etcd a probe fails only when no member gives a linearizable answer (no quorum
// reachable): one slow member does not count. It takes two failed probes in a row to
// turn NOT_SERVING, so a leader election does not flap readiness.
import type { Store } from './store.js';

const FAILURES_BEFORE_UNREACHABLE = 2;

export interface StoreMonitor {
  stop(): void;
}

export function monitorStore(store: Store, intervalMs: number, onChange: (reachable: boolean, err?: unknown) => void): StoreMonitor {
  let reachable: boolean | undefined;
  let inFlight = false;
  let failures = 0;
  const report = (now: boolean, err?: unknown) => {
    if (now !== reachable) {
      reachable = now;
      onChange(now, err);
    }
  };
  const probe = () => {
    if (inFlight) return;
    inFlight = true;
    // A probe may not take longer than the interval plus a bit: a hung store counts as down.
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`store did not answer within ${intervalMs * 1.5} ms`)), intervalMs * 1.5);
    });
    Promise.race([store.ping(), timeout])
      .then(
        () => {
          failures = 0;
          report(true);
        },
        (err: unknown) => {
          failures++;
          // Before the first answer there is nothing to hold on to.
          if (failures >= FAILURES_BEFORE_UNREACHABLE || reachable !== true) report(false, err);
        },
      )
      .finally(() => {
        clearTimeout(timer);
        inFlight = false;
      });
  };
  probe();
  const interval = setInterval(probe, intervalMs);
  interval.unref();
  return { stop: () => clearInterval(interval) };
}
