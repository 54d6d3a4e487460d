// Opens the configured backend.
import { readFileSync } from 'node:fs';
import type { Config } from '../config/schema.js';
import { openEmbeddedStore } from './embedded/store.js';
import type { Store } from './store.js';

export async function openStore(config: Config['store'], onBackgroundError: (err: unknown) => void): Promise<Store> {
  if (config.backend === 'embedded') {
    return openEmbeddedStore({
      dir: config.embedded.dir,
      compactionIntervalMs: config.compaction_interval_seconds * 1000,
      retainRevisions: config.retain_revisions,
      onBackgroundError,
    });
  }
  // Loaded only for this backend: the etcd client and its protobuf runtime hold several MB
  // of heap, which a single-host daemon would otherwise carry (and mark on every full GC).
  const { openEtcdStore } = await import('./etcd/store.js');
  const etcd = config.etcd;
  return openEtcdStore({
    endpoints: etcd.endpoints,
    ...(etcd.ca_file ? { tls: { caFile: etcd.ca_file, ...(etcd.cert_file ? { certFile: etcd.cert_file, keyFile: etcd.key_file } : {}) } } : {}),
    ...(etcd.username ? { auth: { username: etcd.username, password: readFileSync(etcd.password_file, 'utf8').trim() } } : {}),
    dialTimeoutMs: etcd.dial_timeout_ms,
    waitForCluster: false,
    requestTimeoutMs: etcd.request_timeout_ms,
    attemptTimeoutMs: etcd.attempt_timeout_ms,
  });
}
