// debvisorctl vm snapshot create|list|revert|delete over VmService's snapshot RPCs (libvirt
// domain snapshots). Mutations carry a request_id (--request-id, else a fresh UUID): a script
// that retries with the same id after a lost answer gets the first result, not a second change.
import { randomUUID } from 'node:crypto';
import type { Command } from 'commander';
import {
  CreateVmSnapshotResponseSchema,
  DeleteVmSnapshotResponseSchema,
  ListVmSnapshotsResponseSchema,
  RevertVmSnapshotResponseSchema,
  VmService,
  VmState,
  type RevertVmSnapshotResponse,
  type VmSnapshot,
} from '../gen/debvisor/v1/vm_pb.js';
import { create } from '@bufbuild/protobuf';
import { enumName, when, withService, type GlobalFlags } from './command.js';
import { printJson, printRecord, printTable } from './output.js';

export function snapshotRecord(snapshot: VmSnapshot): Record<string, string> {
  return {
    vm: snapshot.vmName,
    name: snapshot.name,
    ...(snapshot.description ? { description: snapshot.description } : {}),
    created: when(snapshot.createTime),
    'vm state': enumName(VmState, snapshot.vmState),
    parent: snapshot.parent || '-',
    current: snapshot.current ? 'yes' : 'no',
  };
}

const REQUEST_ID_HELP = 'idempotency key (default: a fresh UUID); repeat a call with the same one to retry it safely';

export function registerVmSnapshotCommands(vm: Command, program: Command): void {
  const withVms = withService(program, VmService);
  const snapshot = vm.command('snapshot').description('libvirt snapshots of a VM: create, list, revert, delete');
  const requestId = (given: string | undefined) => given ?? randomUUID();

  snapshot
    .command('create')
    .description('take a snapshot of a VM (counts against the snapshots quota)')
    .argument('<vm>', 'VM name')
    .argument('<snapshot>', 'name of the new snapshot (unique per VM)')
    .option('-d, --description <text>', 'free-form description')
    .option('--request-id <id>', REQUEST_ID_HELP)
    .action(
      withVms(async ({ client, options, flags }, vmName: string, snapshotName: string, opts: { description?: string; requestId?: string }) => {
        const response = await client.createVmSnapshot({ vmName, snapshotName, description: opts.description ?? '', requestId: requestId(opts.requestId) }, options);
        if (flags.output === 'json') printJson(CreateVmSnapshotResponseSchema, response);
        else if (response.snapshot) printRecord(snapshotRecord(response.snapshot));
      }),
    );

  snapshot
    .command('list')
    .description("list a VM's snapshots, oldest first; * marks the current one")
    .argument('<vm>', 'VM name')
    .action(
      withVms(async ({ client, options, flags }, vmName: string) => {
        const snapshots: VmSnapshot[] = [];
        let pageToken = '';
        do {
          const page = await client.listVmSnapshots({ vmName, pageSize: 1000, pageToken }, options);
          snapshots.push(...page.snapshots);
          pageToken = page.nextPageToken;
        } while (pageToken);
        if (flags.output === 'json') {
          printJson(ListVmSnapshotsResponseSchema, create(ListVmSnapshotsResponseSchema, { snapshots }));
          return;
        }
        printTable(
          ['current', 'name', 'created', 'vm state', 'parent', 'description'],
          snapshots.map((each) => [each.current ? '*' : '', each.name, when(each.createTime), enumName(VmState, each.vmState), each.parent || '-', each.description]),
        );
      }),
    );

  snapshot
    .command('revert')
    .description('revert a VM to a snapshot (its disks and, for a running snapshot, its memory)')
    .argument('<vm>', 'VM name')
    .argument('<snapshot>', 'snapshot to revert to')
    .option('--request-id <id>', REQUEST_ID_HELP)
    .action(
      withVms(async ({ client, options, flags }, vmName: string, snapshotName: string, opts: { requestId?: string }) => {
        const response = await client.revertVmSnapshot({ vmName, snapshotName, requestId: requestId(opts.requestId) }, options);
        printReverted(response, flags);
      }),
    );

  snapshot
    .command('delete')
    .description('delete a snapshot of a VM')
    .argument('<vm>', 'VM name')
    .argument('<snapshot>', 'snapshot to delete')
    .option('--children', "also delete the snapshot's descendants")
    .option('--request-id <id>', REQUEST_ID_HELP)
    .action(
      withVms(async ({ client, options, flags }, vmName: string, snapshotName: string, opts: { children?: boolean; requestId?: string }) => {
        const response = await client.deleteVmSnapshot({ vmName, snapshotName, deleteChildren: opts.children ?? false, requestId: requestId(opts.requestId) }, options);
        if (flags.output === 'json') printJson(DeleteVmSnapshotResponseSchema, response);
        else process.stdout.write(`deleted ${response.deleted.join(', ')}\n`);
      }),
    );
}

function printReverted(response: RevertVmSnapshotResponse, flags: GlobalFlags): void {
  if (flags.output === 'json') {
    printJson(RevertVmSnapshotResponseSchema, response);
    return;
  }
  if (response.vm) printRecord({ vm: response.vm.name, state: enumName(VmState, response.vm.state), 'current snapshot': response.vm.currentSnapshot || '-' });
}
