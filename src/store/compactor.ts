// etcd keeps every revision until told otherwise. Each daemon compacts on a timer,
// keeping the newest `retain` revisions; concurrent compactions are harmless.
// (The embedded store compacts itself.)
import type { Store } from './store.js';

export function startCompactor(store: Store, intervalMs: number, retain: number, onError: (err: unknown) => void): { stop(): void } {
  const timer = setInterval(() => {
    store
      .revision()
      .then((revision) => (revision > retain ? store.compact(revision - retain) : undefined))
      .catch(onError);
  }, intervalMs);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}
