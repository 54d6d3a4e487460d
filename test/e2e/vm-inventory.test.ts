// The VM inventory end to end, one daemon and one libvirtd (test driver): ListVms and GetVm run
// no host process (every spawn is traced to a file); a VM defined and started with plain virsh
// shows up; libvirtd stopped: VmService alone turns NOT_SERVING, reads answer with stale_since,
// then UNAVAILABLE past the (small) configured bound; libvirtd back: everything recovers.
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { GenService } from '@bufbuild/protobuf/codegenv2';
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { TypedClient } from '../../src/client/client.js';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { VmService, VmState } from '../../src/gen/debvisor/v1/vm_pb.js';
import { clientFor, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { grpcHealth } from '../support/health.js';
import { defineTestDomain, startLibvirt, VIRSH, type TestLibvirt } from '../support/libvirt.js';
import { rejection } from '../support/security.js';

const run = promisify(execFile);
const T = { timeoutMs: 15_000 };
const WAIT = { timeout: 30_000, interval: 50 };
const MAX_STALENESS_SECONDS = 5;
type MethodsOf<S> = S extends GenService<infer M> ? M : never;

let lv: TestLibvirt;
let daemon: RunningDaemon;
let vms: TypedClient<MethodsOf<typeof VmService>>;
let traceFile: string;

const spawns = () => (existsSync(traceFile) ? readFileSync(traceFile, 'utf8').split('\n').filter((l) => l.includes('"backend":"libvirt"')).length : 0);
const virsh = (...args: string[]) => run(VIRSH, ['-q', '-c', lv.uri, ...args], { env: { LC_ALL: 'C', PATH: '/usr/bin:/bin' } });
const vmHealth = () => grpcHealth(daemon, VmService.typeName);

/** PIDs of `virsh ... event --all --loop --timestamp` on this libvirtd: the daemon's subscription (the test helper's holder has no --timestamp). */
function subscriptionPids(): number[] {
  return readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry))
    .filter((pid) => {
      try {
        const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
        return argv.includes(lv.uri) && argv.some((a) => a.includes('event --all --loop --timestamp'));
      } catch {
        return false;
      }
    })
    .map(Number);
}

beforeAll(async () => {
  lv = await startLibvirt();
  await defineTestDomain(lv, 'vm1', '555555555555');
  traceFile = join(mkdtempSync(join(tmpdir(), 'debvisor-trace-')), 'exec.jsonl');
  daemon = await startDaemon({
    env: { DEBVISOR_RPCD_LIBVIRT_URI: lv.uri, DEBVISOR_EXEC_TRACE: traceFile },
    config: { libvirt: { inventory: { max_staleness_seconds: MAX_STALENESS_SECONDS, subscription_backoff_max_seconds: 1 } } },
  });
  await vi.waitFor(async () => expect(await vmHealth()).toBe('SERVING'), WAIT);
  vms = await clientFor(VmService, daemon);
});

afterAll(async () => {
  (vms as TypedClient<MethodsOf<typeof VmService>> | undefined)?.close();
  await (daemon as RunningDaemon | undefined)?.cleanup();
  await (lv as TestLibvirt | undefined)?.stop();
  if (traceFile) rmSync(join(traceFile, '..'), { recursive: true, force: true });
});

describe('the VM inventory behind VmService', () => {
  it('answers ListVms and GetVm without running a host process', async () => {
    const before = spawns();
    expect(before).toBeGreaterThan(0);
    for (let i = 0; i < 20; i++) {
      expect((await vms.listVms({}, T)).vms.map((v) => v.name)).toEqual(['vm1']);
      expect((await vms.getVm({ vmName: 'vm1' }, T)).vm?.uuid).toBe('11111111-2222-3333-4444-555555555555');
    }
    expect(spawns()).toBe(before);
  });

  it('shows VMs defined and started with plain virsh', async () => {
    await defineTestDomain(lv, 'side-1', '0000000000c1');
    await virsh('start', 'side-1');
    await vi.waitFor(async () => expect((await vms.listVms({ state: VmState.RUNNING }, T)).vms.map((v) => v.name)).toEqual(['side-1']), WAIT);
    await virsh('destroy', 'side-1');
    await virsh('undefine', 'side-1');
    await vi.waitFor(async () => expect((await vms.listVms({}, T)).vms.map((v) => v.name)).toEqual(['vm1']), WAIT);
  });

  it('libvirtd down: VmService alone NOT_SERVING, stale answers, then UNAVAILABLE past the bound; back: recovers', async () => {
    const dir = lv.dir;
    await lv.stop();
    await vi.waitFor(async () => expect(await vmHealth()).toBe('NOT_SERVING'), WAIT);
    expect(await grpcHealth(daemon)).toBe('SERVING');
    expect(await grpcHealth(daemon, AccessService.typeName)).toBe('SERVING');
    const readyz = await fetch(`http://${daemon.httpAddress}/readyz`);
    expect(readyz.status).toBe(200);
    expect(await readyz.text()).toMatch(/^ready\nlibvirt: libvirt unreachable; VM inventory stale since \S+\ndebvisor\.v1\.VmService: NOT_SERVING \(libvirt\)\n$/);

    // Within the bound: the last known VMs, with stale_since.
    const stale = await vms.listVms({}, T);
    expect(stale.vms.map((v) => v.name)).toEqual(['vm1']);
    expect(stale.staleSince).toBeDefined();
    // Past it: UNAVAILABLE, for GetVm too.
    await vi.waitFor(async () => expect((await rejection(vms.listVms({}, T))).code).toBe(Status.UNAVAILABLE), WAIT);
    const err = await rejection(vms.getVm({ vmName: 'vm1' }, T));
    expect(err.code).toBe(Status.UNAVAILABLE);
    expect(err.details).toContain('libvirt is unreachable; the VM inventory is stale since');

    // Back (the test driver starts empty): the subscription reconnects, resyncs, and VmService serves again.
    lv = await startLibvirt({ dir });
    await vi.waitFor(async () => expect(await vmHealth()).toBe('SERVING'), WAIT);
    await defineTestDomain(lv, 'back-1', '0000000000c2');
    await vi.waitFor(async () => {
      const listed = await vms.listVms({}, T);
      expect(listed.staleSince).toBeUndefined();
      expect(listed.vms.map((v) => v.name)).toEqual(['back-1']);
    }, WAIT);
  });

  it('stopping the daemon kills its virsh event process', async () => {
    const pids = subscriptionPids();
    expect(pids).toHaveLength(1);
    await daemon.stop('SIGTERM');
    await vi.waitFor(() => expect(subscriptionPids()).toEqual([]), WAIT);
  });
});
