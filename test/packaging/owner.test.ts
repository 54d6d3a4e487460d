// --owner on the two certificate writers: the daemon runs as debvisor and must be able to read
// the key an operator (root) issues for it. Handing files to another user needs root, so the
// ownership checks run as root only (CI); the refusals run everywhere.
import { execFile } from 'node:child_process';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveOwner } from '../../src/cli/pki.js';
import { REPO_ROOT } from '../support/daemon.js';

const run = promisify(execFile);
const isRoot = process.getuid?.() === 0;
const SCRIPT = join(REPO_ROOT, 'scripts', 'generate-rpc-certificates.sh');

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'owner-test-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('--owner', () => {
  it('resolves a user (and its primary group), a user:group, or numeric ids; refuses an unknown user', async () => {
    expect(await resolveOwner('root')).toEqual({ uid: 0, gid: 0 });
    expect(await resolveOwner('root:root')).toEqual({ uid: 0, gid: 0 });
    expect(await resolveOwner('1234:5678')).toEqual({ uid: 1234, gid: 5678 });
    await expect(resolveOwner('no-such-user-debvisor-test')).rejects.toThrow('--owner: no user "no-such-user-debvisor-test" on this host');
  });

  it('generate-rpc-certificates.sh refuses an unknown user before writing anything', async () => {
    const failed = await run(SCRIPT, ['--owner', 'no-such-user-debvisor-test', join(dir, 'refused')]).then(
      () => ({ code: 0, stderr: '' }),
      (err: unknown) => err as { code: number; stderr: string },
    );
    expect(failed.code).toBe(2);
    expect(failed.stderr).toContain('--owner: no user no-such-user-debvisor-test');
  });

  it.skipIf(!isRoot)('generate-rpc-certificates.sh hands the server pair, and only it, to that user', async () => {
    const certs = join(dir, 'rpc');
    await run(SCRIPT, ['--owner', 'nobody', certs]);
    const nobody = Number((await run('id', ['-u', 'nobody'])).stdout.trim());
    for (const file of ['server-key.pem', 'server-cert.pem']) expect((await stat(join(certs, file))).uid, file).toBe(nobody);
    for (const file of ['ca-key.pem', 'client-key.pem']) expect((await stat(join(certs, file))).uid, file).toBe(0);
    expect((await stat(join(certs, 'server-key.pem'))).mode & 0o777).toBe(0o600);
  });
});
