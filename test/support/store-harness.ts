// One harness per store backend, so the contract suite runs unchanged against both.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Store } from '../../src/store/store.js';
import { openEmbeddedStore } from '../../src/store/embedded/store.js';
import { openEtcdStore } from '../../src/store/etcd/store.js';
import { startEtcd } from './etcd.js';

export interface StoreHarness {
  readonly name: 'embedded' | 'etcd';
  /** A client on the backend. */
  open(): Promise<Store>;
  /** Drops the client's connection and makes a new client on the same data. */
  reconnect(store: Store): Promise<Store>;
  /** Restarts the backend itself (embedded: close and reopen; etcd: restart the member). */
  restart(store: Store): Promise<Store>;
  cleanup(): Promise<void>;
}

export function embeddedHarness(): Promise<StoreHarness> {
  const dir = mkdtempSync(join(tmpdir(), 'debvisor-store-'));
  const open = () => openEmbeddedStore({ dir, leaseSweepIntervalMs: 100 });
  const reopen = async (store: Store) => {
    await store.close();
    return open();
  };
  return Promise.resolve({
    name: 'embedded',
    open,
    reconnect: reopen,
    restart: reopen,
    cleanup: () => {
      rmSync(dir, { recursive: true, force: true });
      return Promise.resolve();
    },
  });
}

export async function etcdHarness(): Promise<StoreHarness> {
  const etcd = await startEtcd();
  const open = () => openEtcdStore({ endpoints: etcd.endpoints, requestTimeoutMs: 3000 });
  return {
    name: 'etcd',
    open,
    reconnect: async (store) => {
      await store.close();
      return open();
    },
    restart: async (store) => {
      await etcd.restartMember(0);
      return store;
    },
    cleanup: () => etcd.stop(),
  };
}

export const HARNESSES: ReadonlyArray<readonly [string, () => Promise<StoreHarness>]> = [
  ['embedded', embeddedHarness],
  ['etcd', etcdHarness],
];
