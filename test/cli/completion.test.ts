// Shell completion generated from the commander tree (src/cli/completion.ts), run in the real
// shells: bash's completion function, zsh's (with compadd and _files stood in for, as they only
// exist inside zsh's completion system: the stand-in prints what would be offered), fish's
// `complete -C`. Every command path of the tree is in every script, so they cannot drift.
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bashCompletion, commandTree, fishCompletion, zshCompletion } from '../../src/cli/completion.js';
import { debvisorctlFullProgram } from '../../src/cli/program.js';

const run = promisify(execFile);
let program: Command;
let dir: string;
const script = (name: string) => join(dir, name);

beforeAll(async () => {
  program = await debvisorctlFullProgram();
  dir = mkdtempSync(join(tmpdir(), 'dv-ctl-completion-'));
  writeFileSync(script('bash'), bashCompletion(program));
  writeFileSync(script('zsh'), zshCompletion(program));
  writeFileSync(script('fish'), fishCompletion(program));
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function bash(words: string[]): Promise<string[]> {
  const line = `source ${script('bash')}; COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _debvisorctl; printf '%s\\n' "\${COMPREPLY[@]}"`;
  return (await run('bash', ['-c', line])).stdout.split('\n').filter(Boolean);
}

/** What zsh would offer for `words` (the last one being completed), before its prefix matching. */
async function zsh(words: string[]): Promise<string[]> {
  const line = [
    'compdef() { :; }',
    `source ${script('zsh')}`,
    'compadd() { [[ "$1" == -a ]] && print -rl -- ${(P)2} }',
    '_files() { : }',
    `words=(${words.map((w) => `'${w}'`).join(' ')})`,
    `CURRENT=${words.length}`,
    '_debvisorctl',
  ].join('\n');
  return (await run('zsh', ['-f', '-c', line])).stdout.split('\n').filter(Boolean);
}

async function fish(commandLine: string): Promise<string[]> {
  // In the scripts' directory: fish also offers file names, and none there starts like a command.
  const { stdout } = await run('fish', ['--no-config', '-c', `source ${script('fish')}; complete -C '${commandLine}'`], { cwd: dir });
  return stdout.split('\n').filter(Boolean).map((line) => line.split('\t')[0] ?? line);
}

describe('bash', () => {
  it('completes commands, subcommands and options of the path typed so far, skipping options', async () => {
    expect(await bash(['debvisorctl', 'vm', 'snap'])).toEqual(['snapshot']);
    expect(await bash(['debvisorctl', '-o', 'json', 'vm', 'snapshot', 're'])).toEqual(['revert']);
    expect(await bash(['debvisorctl', 'config', 'use'])).toEqual(['use-context']);
    expect(await bash(['debvisorctl', 'pki', 'issue', '--ow'])).toEqual(['--owner']);
    expect(await bash(['debvisorctl', '--cont'])).toEqual(['--context']);
  });
});

describe.runIf(existsSync('/usr/bin/zsh') || existsSync('/bin/zsh'))('zsh', () => {
  it('offers the words of the path typed so far', async () => {
    const offered = await zsh(['debvisorctl', 'vm', 'snapshot', '']);
    expect(offered).toEqual(expect.arrayContaining(['create', 'list', 'revert', 'delete', '--help']));
    expect(await zsh(['debvisorctl', '--server', 'h:1', 'config', ''])).toEqual(expect.arrayContaining(['get-contexts', 'set-context', 'use-context', 'current-context']));
    expect(await zsh(['debvisorctl', ''])).toEqual(expect.arrayContaining(['whoami', 'vm', 'completion', '--output']));
  });
});

describe.runIf(existsSync('/usr/bin/fish'))('fish', () => {
  it('completes with descriptions from the commands', async () => {
    expect(await fish('debvisorctl vm snap')).toEqual(['snapshot']);
    expect(await fish('debvisorctl vm snapshot c')).toEqual(['create']);
    const { stdout } = await run('fish', ['--no-config', '-c', `source ${script('fish')}; complete -C 'debvisorctl whoa'`], { cwd: dir });
    expect(stdout).toBe('whoami\tshow the identity the daemon sees for these credentials\n');
  });
});

describe('every script', () => {
  it('holds every command path of the tree', () => {
    const scripts = [bashCompletion(program), zshCompletion(program), fishCompletion(program)];
    for (const { names } of commandTree(program)) {
      for (const text of scripts) expect(text).toContain(`'${names.join(' ')}'`);
    }
  });
});
