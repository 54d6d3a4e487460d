// Backup files of the embedded store: taken online while writes go on, restored offline
// into a fresh directory, refused when damaged, and never restored over a running store.
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setImmediate } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BackupFileError, extractEtcdSnapshot, saveBackup, verifyBackupFile } from '../../src/store/backup-file.js';
import { openEmbeddedStore } from '../../src/store/embedded/store.js';
import { restoreEmbedded } from '../../src/store/embedded/restore.js';
import type { Store } from '../../src/store/store.js';

const enc = (text: string) => new TextEncoder().encode(text);
const dec = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

let root: string;
beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'debvisor-backup-'));
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

async function backupOf(store: Store, path: string) {
  return saveBackup(path, { chunks: store.snapshot(), summary: () => ({ backend: store.backend, takenBy: 'test' }) });
}

async function allKeys(store: Store): Promise<Map<string, string>> {
  const { kvs } = await store.list('/');
  return new Map(kvs.map((kv) => [kv.key, dec(kv.value)]));
}

describe('embedded store backup', () => {
  it('is a consistent copy taken while writes go on, restored into a fresh directory', async () => {
    const store = await openEmbeddedStore({ dir: join(root, 'live') });
    for (let i = 0; i < 200; i++) await store.put(`/debvisor/k/${String(i).padStart(4, '0')}`, enc(`v${i}`));
    const state = { writing: true };
    let written = 200;
    // The embedded store answers at once: the writer yields a turn after each put, as calls do.
    const load = (async () => {
      while (state.writing) {
        await store.put(`/debvisor/k/${String(written).padStart(4, '0')}`, enc(`v${written}`));
        written++;
        await setImmediate();
      }
    })();
    const header = await backupOf(store, join(root, 'b.backup'));
    state.writing = false;
    await load;
    expect(header).toMatchObject({ format: 'debvisor-store-backup', version: 1, backend: 'embedded' });
    expect(statSync(join(root, 'b.backup')).mode & 0o777).toBe(0o600);

    await restoreEmbedded({ from: join(root, 'b.backup'), dataDir: join(root, 'restored'), force: false });
    const restored = await openEmbeddedStore({ dir: join(root, 'restored') });
    const keys = await allKeys(restored);
    // A prefix of the writes: every key up to some point, each with its value, no gap.
    expect(keys.size).toBeGreaterThanOrEqual(200);
    for (let i = 0; i < keys.size; i++) expect(keys.get(`/debvisor/k/${String(i).padStart(4, '0')}`)).toBe(`v${i}`);
    expect(await restored.revision()).toBe(keys.size);
    await restored.put('/debvisor/after', enc('x'));
    await restored.close();
    await store.close();
  });

  it('refuses a damaged or truncated file, and an etcd snapshot, before touching the directory', async () => {
    const store = await openEmbeddedStore({ dir: join(root, 'live') });
    await store.put('/debvisor/a', enc('1'));
    const file = join(root, 'b.backup');
    await backupOf(store, file);
    await store.close();
    const bytes = readFileSync(file);

    const flipped = Buffer.from(bytes);
    flipped[flipped.length - 100] = (flipped[flipped.length - 100] as number) ^ 0xff;
    writeFileSync(join(root, 'flipped'), flipped);
    await expect(restoreEmbedded({ from: join(root, 'flipped'), dataDir: join(root, 'r1'), force: false })).rejects.toThrow(/SHA-256 does not match/);

    writeFileSync(join(root, 'short'), bytes.subarray(0, bytes.length - 10));
    await expect(verifyBackupFile(join(root, 'short'))).rejects.toThrow(/truncated/);

    writeFileSync(join(root, 'junk'), 'hello\n');
    await expect(verifyBackupFile(join(root, 'junk'))).rejects.toThrow(BackupFileError);

    const etcd = await saveBackup(join(root, 'etcd.backup'), { chunks: [enc('snapshot bytes')].values(), summary: () => ({ backend: 'etcd', takenBy: 'test' }) });
    expect(etcd.backend).toBe('etcd');
    await expect(restoreEmbedded({ from: join(root, 'etcd.backup'), dataDir: join(root, 'r2'), force: false })).rejects.toThrow(/etcd snapshot/);
    await extractEtcdSnapshot(join(root, 'etcd.backup'), join(root, 'etcd.db'));
    expect(readFileSync(join(root, 'etcd.db'), 'utf8')).toBe('snapshot bytes');
  });

  it('refuses a non-empty directory without --force, and a directory a running store holds even with it', async () => {
    const store = await openEmbeddedStore({ dir: join(root, 'live') });
    await store.put('/debvisor/a', enc('1'));
    await backupOf(store, join(root, 'b.backup'));
    await expect(restoreEmbedded({ from: join(root, 'b.backup'), dataDir: join(root, 'live'), force: true })).rejects.toThrow(/in use by a running debvisor-rpcd \(pid \d+\)/);
    await store.put('/debvisor/b', enc('2'));
    await store.close();

    await expect(restoreEmbedded({ from: join(root, 'b.backup'), dataDir: join(root, 'live'), force: false })).rejects.toThrow(/not empty .*--force/);
    await restoreEmbedded({ from: join(root, 'b.backup'), dataDir: join(root, 'live'), force: true });
    const restored = await openEmbeddedStore({ dir: join(root, 'live') });
    expect([...(await allKeys(restored)).keys()]).toEqual(['/debvisor/a']);
    await restored.close();
  });

  it('refuses to save when what arrived differs from what was sent', async () => {
    const chunks = [enc('abc')].values();
    await expect(saveBackup(join(root, 'x.backup'), { chunks, summary: () => ({ backend: 'embedded', takenBy: 'test', sent: { bytes: 4, sha256: '0'.repeat(64) } }) })).rejects.toThrow(/differs/);
    expect(() => statSync(join(root, 'x.backup'))).toThrow();
  });
});
