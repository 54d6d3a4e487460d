// What a TypeScript application (a CI tool, a web panel's backend) does with the SDK:
//   node panel.ts --target 127.0.0.1:7443 --ca ca.pem --cert client.pem --key client-key.pem [--vm web-1]
// Node.js 24 runs this file as it is (type stripping); `tsc --noEmit` checks it against the
// package's declarations. See README.md next to it.
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { connect, errorDetails, type DebvisorClient } from 'debvisor-rpcd/client';
import { OperationState } from 'debvisor-rpcd/gen/debvisor/v1/operation_pb';
import { VmState } from 'debvisor-rpcd/gen/debvisor/v1/vm_pb';

const { values } = parseArgs({
  options: {
    target: { type: 'string' },
    ca: { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' },
    'api-key-file': { type: 'string' },
    vm: { type: 'string' },
  },
});
if (!values.target || !values.ca) {
  console.error('usage: node panel.ts --target HOST:PORT --ca FILE (--cert FILE --key FILE | --api-key-file FILE) [--vm NAME]');
  process.exit(2);
}

async function run(client: DebvisorClient, vm: string | undefined): Promise<void> {
  // Reads get the default deadline (30 s) and are retried on UNAVAILABLE.
  const me = await client.access.whoAmI({});
  console.log(`whoami: ${me.principalId} roles=${me.roles.join(',') || '-'}`);
  if (vm === undefined) return;

  const { vms } = await client.vms.listVms({ nameGlob: vm });
  for (const found of vms) console.log(`vm: ${found.name} ${VmState[found.state]}`);

  // A mutation is retried only with a request_id: the daemon answers a repeated one with the first reply.
  const reply = await client.vms.shutdownVm({ vmName: vm, wait: true, forceAfterTimeout: true, requestId: randomUUID() }, { timeoutMs: 60_000 });
  if (!reply.operation) return;
  const done = await client.waitFor(reply.operation, {
    onProgress: (op) => console.log(`operation ${op.id}: ${OperationState[op.state]} ${op.progressPercent}% ${op.stage}`),
    timeoutMs: 300_000,
  });
  console.log(`operation ${done.id} done: ${OperationState[done.state]}${done.error ? ` (${done.error.message})` : ''}`);
}

const client = await connect({
  address: values.target,
  credentials: { ca: values.ca, cert: values.cert, key: values.key, apiKeyFile: values['api-key-file'] },
});
try {
  await run(client, values.vm);
} catch (err) {
  const failure = err as { code?: number; details?: string; metadata?: unknown };
  console.error(`error: code ${failure.code}: ${failure.details ?? String(err)}`);
  if (failure.metadata) {
    const details = errorDetails(err as Parameters<typeof errorDetails>[0]);
    if (details.retryDelayMs !== undefined) console.error(`  retry after ${details.retryDelayMs} ms`);
    for (const v of details.quotaViolations) console.error(`  quota ${v.subject}: ${v.description}`);
    for (const v of details.fieldViolations) console.error(`  field ${v.field}: ${v.description}`);
  }
  process.exitCode = 1;
} finally {
  client.close();
}
