// The lazily loaded command tree: the stubs --help lists say what the modules register, the
// first command word is found behind global options, and help is the same with and without
// the modules loaded. And the bundle that ships (scripts/bundle-ctl.ts) runs on its own.
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { bundleCtl } from '../../scripts/bundle-ctl.js';
import { COMMAND_MODULES, commandName, debvisorctlFullProgram, debvisorctlProgram, scanArguments } from '../../src/cli/program.js';
import { VERSION } from '../../src/version.js';
import { REPO_ROOT } from '../support/daemon.js';

const run = promisify(execFile);

describe('COMMAND_MODULES', () => {
  it.each(COMMAND_MODULES.map((module) => [Object.keys(module.commands).join(', '), module] as const))('%s: the stubs match what the module registers', async (_names, module) => {
    const program = new Command('debvisorctl');
    await module.register(program);
    const help = program.createHelp();
    expect(Object.fromEntries(program.commands.map((command) => [help.subcommandTerm(command), command.description()]))).toEqual(module.commands);
  });

  it('names every top-level command once', () => {
    const names = COMMAND_MODULES.flatMap((module) => Object.keys(module.commands).map(commandName));
    expect(new Set(names).size).toBe(names.length);
  });
});

describe('scanArguments', () => {
  it('finds the command word behind global options with values, and -o', () => {
    expect(scanArguments(['-o', 'json', '--server', 'h:1', '--as-group', 'ops', 'vm', 'list', '--state', 'running'])).toEqual({ command: 'vm', output: 'json', helpFor: undefined });
    expect(scanArguments(['--timeout=5', '-oyaml', 'whoami'])).toMatchObject({ command: 'whoami', output: 'yaml' });
    expect(scanArguments(['help', 'vm'])).toMatchObject({ command: 'help', helpFor: 'vm' });
    expect(scanArguments(['--version'])).toMatchObject({ command: undefined });
    expect(scanArguments(['-o', 'xml', 'vm'])).toMatchObject({ output: 'text' });
  });
});

describe('the program for one invocation', () => {
  it('loads only the module of the command given; the others are stubs', async () => {
    const program = await debvisorctlProgram(['vm', 'list']);
    const vm = program.commands.find((command) => command.name() === 'vm');
    expect(vm?.commands.map((command) => command.name())).toContain('snapshot');
    expect(program.commands.find((command) => command.name() === 'pki')?.commands).toEqual([]);
  });

  it('lists the same commands in --help as the full tree', async () => {
    const stubs = await debvisorctlProgram(['--help']);
    const full = await debvisorctlFullProgram();
    expect(stubs.helpInformation()).toBe(full.helpInformation());
  });
});

describe('the bundle', () => {
  it('runs --version, --help and a command parse on its own (no node_modules lookups needed)', async () => {
    const scratch = join(REPO_ROOT, '.vitest-tmp');
    mkdirSync(scratch, { recursive: true });
    // Under the repo: its package.json makes the .js files ES modules, as in dist/.
    const out = mkdtempSync(join(scratch, 'bundle-'));
    try {
      await bundleCtl(out);
      const entry = join(out, 'debvisorctl.js');
      expect((await run(process.execPath, [entry, '--version'])).stdout).toBe(`${VERSION}\n`);
      expect((await run(process.execPath, [entry, '--help'])).stdout).toContain('4  timeout');
      const usage = await run(process.execPath, [entry, 'vm', 'snapshot', 'create', 'only-vm']).catch((err: unknown) => err as { code: number; stderr: string });
      expect(usage).toMatchObject({ code: 2 });
      expect((usage as { stderr: string }).stderr).toContain("missing required argument 'snapshot'");
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  }, 120_000);
});
