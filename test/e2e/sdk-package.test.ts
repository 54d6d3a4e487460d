// The SDK as a user gets it: `npm pack`, the tarball installed into a scratch project, imported
// by its public name 'debvisor-rpcd/client', type-checked against the packed declarations and
// run (examples/typescript/panel.ts) against a real daemon over mTLS.
import { execFile } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT, startDaemon, type RunningDaemon } from '../support/daemon.js';

const run = promisify(execFile);
const ADMIN = 'spiffe://debvisor/admin/admin';
const TSC = join(REPO_ROOT, 'node_modules/typescript/bin/tsc');

let dir: string;
let project: string;
let packed: { filename: string; files: { path: string }[] };
let daemon: RunningDaemon;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'rpcd-sdk-'));
  // dist/ (JavaScript) is built by the daemon suites' global setup; the declarations come from
  // tsconfig.client.json, as `npm run build` (and so `npm pack`'s prepack) makes them.
  await run(process.execPath, [TSC, '-p', 'tsconfig.client.json'], { cwd: REPO_ROOT });
  const { stdout } = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], { cwd: REPO_ROOT, maxBuffer: 16 * 1024 * 1024 });
  packed = (JSON.parse(stdout) as (typeof packed)[])[0]!;
  project = join(dir, 'user-project');
  await mkdir(project);
  await writeFile(join(project, 'package.json'), JSON.stringify({ name: 'sdk-user', private: true, type: 'module' }));
  // Dependencies come from the npm cache when it has them (the registry otherwise).
  await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--ignore-scripts', join(dir, packed.filename)], { cwd: project, timeout: 600_000 });
  await copyFile(join(REPO_ROOT, 'examples/typescript/panel.ts'), join(project, 'panel.ts'));
  daemon = await startDaemon();
}, 900_000);

afterAll(async () => {
  await (daemon as RunningDaemon | undefined)?.cleanup();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('the packed SDK', () => {
  it('ships the built client with its declarations, and no sources or tests', () => {
    const paths = packed.files.map((file) => file.path);
    expect(paths).toEqual(expect.arrayContaining(['package.json', 'dist/client/index.js', 'dist/client/index.d.ts', 'dist/gen/debvisor/v1/vm_pb.d.ts']));
    expect(paths.filter((path) => path.startsWith('src/') || path.startsWith('test/'))).toEqual([]);
  });

  it('type-checks the example against the installed declarations', async () => {
    const result = await run(
      process.execPath,
      [TSC, '--noEmit', '--strict', '--target', 'es2024', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--typeRoots', join(REPO_ROOT, 'node_modules/@types'), '--types', 'node', 'panel.ts'],
      { cwd: project },
    ).catch((err: unknown) => err as { stdout: string; code: number });
    expect('code' in result ? result.stdout : '').toBe('');
  });

  it('imports debvisor-rpcd/client by name and calls WhoAmI over mTLS', async () => {
    const { stdout, stderr } = await run(process.execPath, ['panel.ts', '--target', daemon.grpcAddress, '--ca', daemon.pki.caCert, '--cert', daemon.pki.adminCert, '--key', daemon.pki.adminKey], {
      cwd: project,
    });
    expect(stderr.replace(/^\(node:\d+\) \[DEP0123\].*\n.*--trace-deprecation.*\n/m, '')).toBe('');
    expect(stdout).toBe(`whoami: ${ADMIN} roles=admin\n`);
  });

  it('keeps the daemon internals out of reach (exports)', async () => {
    const script = "import('debvisor-rpcd/dist/rpc/adapter.js').then(() => console.log('imported'), (err) => console.log(err.code))";
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], { cwd: project });
    expect(stdout.trim()).toBe('ERR_PACKAGE_PATH_NOT_EXPORTED');
  });
});
