// End-to-end: examples/python/panel_client.py, on Debian's python3-grpcio and
// python3-grpc-tools, against the real daemon over mTLS with a real libvirtd (test driver).
// Its output is what a panel author would see; the refusals carry decoded google.rpc details.
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { QuotaResource } from '../../src/gen/debvisor/v1/options_pb.js';
import { VmService } from '../../src/gen/debvisor/v1/vm_pb.js';
import { REPO_ROOT, clientFor, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { grpcHealth } from '../support/health.js';
import { defineTestDomain, startLibvirt, type TestLibvirt } from '../support/libvirt.js';
import { issueClientFor } from '../support/security.js';

/** Debian's interpreter: the one python3-grpcio and python3-grpc-tools install into. */
const PYTHON = '/usr/bin/python3';
const SCRIPT = join(REPO_ROOT, 'examples/python/panel_client.py');
const ADMIN = 'spiffe://debvisor/admin/admin';
const LIMITED = 'spiffe://debvisor/panel/limited';

let lv: TestLibvirt;
let daemon: RunningDaemon;
let dir: string;
let limited: { cert: string; key: string };

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

function panelClient(args: string[], identity?: { cert: string; key: string }): Promise<Run> {
  const credentials = ['--ca', daemon.pki.caCert, '--cert', identity?.cert ?? daemon.pki.adminCert, '--key', identity?.key ?? daemon.pki.adminKey];
  return new Promise((resolve) => {
    execFile(
      PYTHON,
      [SCRIPT, '--target', daemon.grpcAddress, ...credentials, '--build-dir', join(dir, 'pb'), ...args],
      { env: { PATH: '/usr/bin:/bin', LC_ALL: 'C.UTF-8' }, timeout: 120_000 },
      (error, stdout, stderr) => resolve({ code: error ? (typeof error.code === 'number' ? error.code : null) : 0, stdout, stderr }),
    );
  });
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'rpcd-python-'));
  lv = await startLibvirt();
  await defineTestDomain(lv, 'vm1', '555555555555');
  daemon = await startDaemon({
    env: { DEBVISOR_RPCD_LIBVIRT_URI: lv.uri },
    // The admin is not limited; any other principal gets 20 calls a minute, a burst of 2.
    config: { rate_limit: { per_role_per_minute: { admin: 1_000_000 }, default_per_minute: 20, global_per_minute: 10_000_000 } },
  });
  await vi.waitFor(async () => expect(await grpcHealth(daemon, VmService.typeName)).toBe('SERVING'), { timeout: 60_000, interval: 50 });
  const access = await clientFor(AccessService, daemon);
  const vms = await clientFor(VmService, daemon);
  try {
    await access.setQuota({ principal: ADMIN, resource: QuotaResource.SNAPSHOTS, limit: 1n }, { timeoutMs: 10_000 });
    await vms.startVm({ vmName: 'vm1' }, { timeoutMs: 15_000 });
  } finally {
    access.close();
    vms.close();
  }
  const pair = await issueClientFor(daemon.pki, LIMITED);
  limited = { cert: join(dir, 'limited.crt'), key: join(dir, 'limited.key') };
  await writeFile(limited.cert, pair.cert);
  await writeFile(limited.key, pair.key, { mode: 0o600 });
});

afterAll(async () => {
  await (daemon as RunningDaemon | undefined)?.cleanup();
  await (lv as TestLibvirt | undefined)?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('examples/python/panel_client.py', () => {
  // First: the quota guard runs before the handler validates names, and the next test fills the quota.
  it('prints the BadRequest of a refused snapshot name, naming the field', async () => {
    const run = await panelClient(['--vm', 'vm1', '--snapshot', 'my snap']);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/^error: INVALID_ARGUMENT: snapshot_name: .+\(trace_id=[^)]+\)\n {2}BadRequest: field=snapshot_name description=\S.*\n$/);
  });

  it('calls WhoAmI and ListVms over mTLS, snapshots with a request_id and waits for a shutdown operation', async () => {
    const run = await panelClient(['--vm', 'vm1', '--snapshot', 'panel-1', '--shutdown']);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    const lines = run.stdout.trim().split('\n');
    expect(lines[0]).toBe(`whoami: ${ADMIN} auth=mtls roles=admin`);
    expect(lines).toContain('vm: vm1 VM_STATE_RUNNING');
    expect(lines.find((l) => l.startsWith('snapshot: '))).toMatch(/^snapshot: vm1\/panel-1 request_id=[0-9a-f-]{36}$/);
    expect(lines).toContain('snapshot retried with the same request_id: vm1/panel-1 (same reply)');
    expect(lines.at(-1)).toMatch(/^operation [0-9a-f-]{36} done: OPERATION_STATE_SUCCEEDED$/);
  });

  it('prints the QuotaFailure when the snapshots quota is used up', async () => {
    const run = await panelClient(['--vm', 'vm1', '--snapshot', 'panel-2']);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain('error: RESOURCE_EXHAUSTED: ');
    expect(run.stderr).toContain(`  QuotaFailure: subject=principal:${ADMIN}/snapshots description=`);
  });

  it('prints the RetryInfo when the rate limit refuses a burst', async () => {
    const run = await panelClient(['--burst', '10'], limited);
    expect(run.code).toBe(1);
    expect(run.stdout).toMatch(new RegExp(`^whoami: ${LIMITED} auth=mtls roles=-\n$`));
    expect(run.stderr).toContain(`error: RESOURCE_EXHAUSTED: rate limit of 20 requests per minute exceeded for ${LIMITED}`);
    expect(run.stderr).toMatch(/\n {2}RetryInfo: retry_delay=\d+\.\d{3}s \(retry-after trailer: \d+\)\n$/);
  });
});
