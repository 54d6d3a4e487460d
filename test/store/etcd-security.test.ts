// etcd backend over mutual TLS, and with etcd user authentication.
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openEtcdStore } from '../../src/store/etcd/store.js';
import { StoreError, StoreUnavailableError } from '../../src/store/errors.js';
import { startEtcd, type EtcdCluster } from '../support/etcd.js';

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const dec = (b: Uint8Array): string => new TextDecoder().decode(b);

describe('etcd store over mutual TLS', () => {
  let etcd: EtcdCluster;

  beforeAll(async () => {
    etcd = await startEtcd({ tls: true });
  });
  afterAll(async () => {
    await etcd.stop();
  });

  it('works with the CA, client certificate and key', async () => {
    expect(etcd.endpoints[0]).toMatch(/^https:/);
    const store = await openEtcdStore({ endpoints: etcd.endpoints, tls: etcd.tls! });
    try {
      const { revision } = await store.put('/tls/a', enc('secret'));
      expect(dec((await store.get('/tls/a'))!.value)).toBe('secret');
      for await (const e of store.watch('/tls/', { fromRevision: revision })) {
        expect(e.key).toBe('/tls/a');
        break;
      }
      const lease = await store.grantLease(10);
      expect(await store.keepAliveOnce(lease)).toBeGreaterThan(0);
    } finally {
      await store.close();
    }
  });

  it('without a client certificate the handshake fails, reported as unavailable', async () => {
    await expect(
      openEtcdStore({ endpoints: etcd.endpoints, tls: { caFile: etcd.tls!.caFile }, dialTimeoutMs: 1_000 }),
    ).rejects.toBeInstanceOf(StoreUnavailableError);
  });

  it('rejects mixing TLS settings with http endpoints', async () => {
    await expect(
      openEtcdStore({ endpoints: ['http://127.0.0.1:1'], tls: etcd.tls! }),
    ).rejects.toBeInstanceOf(StoreError);
  });
});

describe('etcd store with user authentication', () => {
  let etcd: EtcdCluster;

  beforeAll(async () => {
    etcd = await startEtcd({ extraArgs: ['--auth-token-ttl', '1'] });
    const ctl = (...args: string[]): void => {
      execFileSync('etcdctl', ['--endpoints', etcd.endpoints[0]!, ...args], { env: { ...process.env, ETCDCTL_API: '3' }, stdio: 'pipe' });
    };
    ctl('user', 'add', 'root', '--new-user-password', 'rootpw');
    ctl('user', 'grant-role', 'root', 'root');
    ctl('user', 'add', 'rpcd', '--new-user-password', 'rpcd-pw');
    ctl('role', 'add', 'debvisor');
    ctl('role', 'grant-permission', 'debvisor', '--prefix=true', 'readwrite', '/debvisor/');
    ctl('user', 'grant-role', 'rpcd', 'debvisor');
    ctl('auth', 'enable');
  });
  afterAll(async () => {
    await etcd.stop();
  });

  it('authenticates with a username and password', async () => {
    const store = await openEtcdStore({ endpoints: etcd.endpoints, auth: { username: 'rpcd', password: 'rpcd-pw' } });
    try {
      const { revision } = await store.put('/debvisor/auth/a', enc('1'));
      expect(dec((await store.get('/debvisor/auth/a'))!.value)).toBe('1');
      for await (const e of store.watch('/debvisor/auth/', { fromRevision: revision })) {
        expect(e.key).toBe('/debvisor/auth/a');
        break;
      }
      // Outside the granted prefix: a permanent error, not "unavailable".
      const denied = await store.put('/elsewhere', enc('x')).catch((e: unknown) => e);
      expect(denied).toBeInstanceOf(StoreError);
      expect(denied).not.toBeInstanceOf(StoreUnavailableError);
    } finally {
      await store.close();
    }
  });

  it('renews an expired auth token for streams (watch, lease keepalive) too', async () => {
    const store = await openEtcdStore({ endpoints: etcd.endpoints, auth: { username: 'rpcd', password: 'rpcd-pw' } });
    try {
      const lease = await store.grantLease(30);
      const { revision } = await store.put('/debvisor/auth/b', enc('2'));
      await new Promise((r) => setTimeout(r, 2_500)); // the simple token's TTL is 1 s here
      expect(await store.keepAliveOnce(lease)).toBeGreaterThan(0);
      await new Promise((r) => setTimeout(r, 2_500));
      for await (const e of store.watch('/debvisor/auth/', { fromRevision: revision })) {
        expect(e.key).toBe('/debvisor/auth/b');
        break;
      }
    } finally {
      await store.close();
    }
  });

  it('a wrong password is a permanent StoreError', async () => {
    const error = await openEtcdStore({ endpoints: etcd.endpoints, auth: { username: 'rpcd', password: 'wrong' } }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StoreError);
    expect(error).not.toBeInstanceOf(StoreUnavailableError);
  });
});
