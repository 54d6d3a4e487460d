// Probes the store on a timer so readiness follows it: NOT_SERVING soon after it
// becomes unreachable, SERVING again once it answers. The daemon stays up throughout.
import type { Store } from './store.js';

export interface StoreMonitor {
  stop(): void;
}

export function monitorStore(store: Store, intervalMs: number, onChange: (reachable: boolean, err?: unknown) => void): StoreMonitor {
  let reachable: boolean | undefined;
  let inFlight = false;
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
      .then(() => report(true), (err: unknown) => report(false, err))
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
