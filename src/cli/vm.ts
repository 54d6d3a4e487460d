// debvisorctl vm list|get|start|shutdown|reboot|destroy over VmService; vm snapshot in vm-snapshot.ts, create|update|delete in vm-create.ts.
import type { Command } from 'commander';
import { durationFromMs } from '@bufbuild/protobuf/wkt';
import { GetVmResponseSchema, ListVmsResponseSchema, VmSchema, VmService, VmState, type Vm } from '../gen/debvisor/v1/vm_pb.js';
import { bytes, enumName, enumParser, withService, type GlobalFlags } from './command.js';
import { waitAndExit, waitSeconds, WAIT_HELP } from './operation.js';
import { UsageError } from './exit-codes.js';
import { registerVmSnapshotCommands } from './vm-snapshot.js';
import { printJson, printRecord, printTable } from './output.js';
import { registerVmProvisioningCommands } from './vm-create.js';

function vmRecord(vm: Vm): Record<string, string> {
  return {
    name: vm.name,
    uuid: vm.uuid,
    state: enumName(VmState, vm.state),
    vcpus: String(vm.vcpus),
    memory: bytes(vm.memoryBytes),
    autostart: String(vm.autostart),
    persistent: String(vm.persistent),
    ...(vm.node ? { node: vm.node } : {}),
    ...(vm.owner ? { owner: vm.owner } : {}),
    ...(vm.description ? { description: vm.description } : {}),
    ...(vm.currentSnapshot ? { 'current snapshot': vm.currentSnapshot } : {}),
    disks: vm.disks.map((disk) => `${disk.targetDev} ${disk.device} ${disk.format} ${disk.sourcePath}`.trim()).join('\n       ') || '(none)',
    interfaces: vm.interfaces.map((nic) => `${nic.type} ${nic.source} ${nic.mac} ${nic.model}`.trim()).join('\n       ') || '(none)',
  };
}

function printVm(vm: Vm | undefined, flags: GlobalFlags): void {
  if (!vm) return;
  if (flags.output === 'json') printJson(VmSchema, vm);
  else printRecord(vmRecord(vm));
}

export function registerVmCommands(program: Command): void {
  const withVms = withService(program, VmService);
  const vm = program.command('vm').description('virtual machines (libvirt domains) on the node');
  registerVmSnapshotCommands(vm, program);

  vm.command('list')
    .description('list VMs, ordered by name')
    .option('--state <state>', 'only VMs in this state, e.g. running or shut_off', enumParser(VmState))
    .option('--name <glob>', 'only VMs whose name matches this glob ("*", "?")')
    .option('--owner <principal>', 'only VMs this principal created')
    .action(
      withVms(async ({ client, options, flags }, opts: { state?: VmState; name?: string; owner?: string }) => {
        const response = await client.listVms({ pageSize: 1000, state: opts.state ?? VmState.UNSPECIFIED, nameGlob: opts.name ?? '', owner: opts.owner ?? '' }, options);
        if (flags.output === 'json') {
          printJson(ListVmsResponseSchema, response);
          return;
        }
        printTable(
          ['name', 'state', 'vcpus', 'memory', 'autostart', 'node', 'owner'],
          response.vms.map((each) => [each.name, enumName(VmState, each.state), String(each.vcpus), bytes(each.memoryBytes), String(each.autostart), each.node, each.owner]),
        );
      }),
    );

  vm.command('get')
    .description('show one VM with its disks and interfaces')
    .argument('<name>', 'VM name')
    .action(
      withVms(async ({ client, options, flags }, name: string) => {
        const response = await client.getVm({ vmName: name }, options);
        if (flags.output === 'json') printJson(GetVmResponseSchema, response);
        else {
          printVm(response.vm, flags);
          if (response.etag) printRecord({ etag: response.etag });
        }
      }),
    );

  vm.command('start')
    .description('start (boot) a VM')
    .argument('<name>', 'VM name')
    .action(withVms(async ({ client, options, flags }, name: string) => printVm((await client.startVm({ vmName: name }, options)).vm, flags)));

  vm.command('reboot')
    .description('ask the guest to reboot')
    .argument('<name>', 'VM name')
    .action(withVms(async ({ client, options, flags }, name: string) => printVm((await client.rebootVm({ vmName: name }, options)).vm, flags)));

  vm.command('destroy')
    .description('power a VM off at once, like pulling the plug (the definition is kept)')
    .argument('<name>', 'VM name')
    .action(withVms(async ({ client, options, flags }, name: string) => printVm((await client.destroyVm({ vmName: name }, options)).vm, flags)));

  vm.command('shutdown')
    .description('ask the guest to shut down; with --wait, follow the shutdown operation until the VM is off')
    .argument('<name>', 'VM name')
    .option('--wait', 'wait until the VM is off')
    .option('--force', 'with --wait: power the VM off if it is still running after the timeout')
    .addHelpText('after', `\nWith --wait, the global --timeout is also the graceful-shutdown timeout sent to the daemon.${WAIT_HELP}`)
    .action(
      withVms(async (call, name: string, opts: { wait?: boolean; force?: boolean }) => {
        if (opts.force && !opts.wait) throw new UsageError('--force needs --wait');
        if (!opts.wait) {
          printVm((await call.client.shutdownVm({ vmName: name }, call.options)).vm, call.flags);
          return;
        }
        const seconds = waitSeconds(call);
        const response = await call.client.shutdownVm(
          { vmName: name, wait: true, forceAfterTimeout: opts.force ?? false, ...(call.timeoutGiven ? { timeout: durationFromMs(seconds * 1000) } : {}) },
          call.options,
        );
        // The forced power-off happens at the graceful timeout; give it a little longer to report.
        await waitAndExit(call, response.operation, `shutdown operation for ${name}`, seconds + (opts.force ? 15 : 0));
      }),
    );

  registerVmProvisioningCommands(program, vm);
}
