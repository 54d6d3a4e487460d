// debvisorctl access blocks | unblock: the daemon's authentication-failure blocks.
import type { Command } from 'commander';
import { AccessService, BlockKind, ListBlocksResponseSchema, UnblockResponseSchema, type AuthBlock } from '../gen/debvisor/v1/access_pb.js';
import { enumName, when, withService } from './command.js';
import { printJson, printTable } from './output.js';

function blockRows(blocks: readonly AuthBlock[]): string[][] {
  return blocks.map((block) => [enumName(BlockKind, block.kind), block.subject, String(block.failures), when(block.createTime), when(block.expireTime)]);
}

const HEAD = ['kind', 'subject', 'failures', 'since', 'until'];

export function registerAccessBlockCommands(program: Command): void {
  const withAccess = withService(program, AccessService);
  const access = program
    .command('access')
    .description('authentication-failure blocks of the daemon connected to (each daemon keeps its own)');
  access
    .command('blocks')
    .description('list source addresses and API key ids blocked after repeated authentication failures')
    .action(
      withAccess(async ({ client, options, flags }) => {
        const response = await client.listBlocks({}, options);
        if (flags.output === 'json') { printJson(ListBlocksResponseSchema, response); return; }
        printTable(HEAD, blockRows(response.blocks));
      }),
    );
  access
    .command('unblock <address|key-id>')
    .description('lift the block on a source address or an API key id, and forget its failures')
    .action(
      withAccess(async ({ client, options, flags }, subject: string) => {
        const response = await client.unblock({ subject }, options);
        if (flags.output === 'json') { printJson(UnblockResponseSchema, response); return; }
        process.stdout.write(response.lifted.length > 0 ? `unblocked ${subject}\n` : `${subject} was not blocked (its failures are forgotten)\n`);
      }),
    );
}
