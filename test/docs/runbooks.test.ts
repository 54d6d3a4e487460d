// Every command the runbooks show is one this test runs, so a page cannot keep a command
// that no longer works: debvisorctl and debvisor-rpcd command lines are parsed by their
// real command-line programs (every action replaced by a no-op), and any other tool must
// be installed and know every long option the page gives it (from its own --help).
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CommanderError, type Command } from 'commander';
import { parse } from 'shell-quote';
import { describe, expect, it } from 'vitest';
import { debvisorctlFullProgram } from '../../src/cli/program.js';
import { daemonProgram } from '../../src/daemon/command-line.js';

const RUNBOOKS = join(import.meta.dirname, '..', '..', 'docs', 'runbooks');
/** Inline `code` starting with one of these is a command too (fenced sh blocks always are). */
const TOOLS = ['debvisorctl', 'debvisor-rpcd', 'systemctl', 'journalctl', 'etcdctl', 'openssl', 'curl', 'jq', 'virsh', 'ceph', 'vgs', 'df', 'apt-get'];

interface ShownCommand {
  readonly page: string;
  readonly text: string;
  readonly argv: readonly string[];
  /** Named in the prose (`debvisorctl apikey revoke`) rather than shown to run: its arguments may be left out. */
  readonly reference: boolean;
}

/** The simple commands of one shell line: pipelines, lists and $(…) split apart, redirections and env assignments dropped. */
export function simpleCommands(line: string): string[][] {
  const substitutions: string[] = [];
  const outer = line
    .replace(/\$\(([^()]*)\)/g, (_, inner: string) => {
      substitutions.push(inner);
      return 'SUBSTITUTED';
    })
    // A placeholder the reader fills in (<key-id>) is an argument, not a redirection.
    .replace(/<([a-z][a-z0-9-]*)>/g, 'PLACEHOLDER-$1');
  const commands: string[][] = [];
  let current: string[] = [];
  let skipNext = false;
  for (const token of parse(outer)) {
    if (typeof token === 'string') {
      if (skipNext) skipNext = false;
      else current.push(token);
      continue;
    }
    if (!('op' in token)) continue; // a comment
    if (token.op === 'glob') {
      if (skipNext) skipNext = false;
      else current.push(token.pattern);
      continue;
    }
    if (['>', '>>', '<', '>&', '<&'].includes(token.op)) {
      // "2>/dev/null": the fd was read as a word of its own.
      if (/^\d$/.test(current.at(-1) ?? '')) current.pop();
      skipNext = true;
      continue;
    }
    if (current.length > 0) commands.push(current);
    current = [];
  }
  if (current.length > 0) commands.push(current);
  const withoutEnv = commands.map((argv) => argv.slice(argv.findIndex((word) => !/^[A-Z_][A-Z0-9_]*=/.test(word))));
  return [...withoutEnv, ...substitutions.flatMap(simpleCommands)].filter((argv) => argv.length > 0);
}

function shownCommands(page: string, markdown: string): ShownCommand[] {
  const lines: { text: string; reference: boolean }[] = [];
  const blocks = /^\s*```sh\n([\s\S]*?)^\s*```/gm;
  for (const block of markdown.matchAll(blocks)) {
    const body = (block[1] ?? '').replace(/\\\n\s*/g, ' ');
    for (const text of body.split('\n').map((l) => l.trim())) if (text !== '' && !text.startsWith('#')) lines.push({ text, reference: false });
  }
  for (const span of markdown.replace(blocks, '').matchAll(/`([^`\n]+)`/g)) {
    const text = span[1] ?? '';
    if (TOOLS.includes(text.split(' ')[0] ?? '')) lines.push({ text, reference: true });
  }
  return lines.flatMap(({ text, reference }) => simpleCommands(text).map((argv) => ({ page, text, argv, reference })));
}

const pages = readdirSync(RUNBOOKS).filter((name) => name.endsWith('.md'));
const commands = pages.flatMap((page) => shownCommands(page, readFileSync(join(RUNBOOKS, page), 'utf8')));

/** What a command named in prose may leave out: its arguments and required options. */
const OMITTED_IN_REFERENCES = new Set(['commander.missingArgument', 'commander.missingMandatoryOptionValue']);

/**
 * Parses argv with `program`, every action a no-op: throws a CommanderError on an unknown
 * command, option or missing argument. --help and --version (exit code 0) pass.
 */
async function dryParse(program: Command, argv: readonly string[], reference = false): Promise<void> {
  const silence = (command: Command): void => {
    command.exitOverride().configureOutput({ writeOut: () => undefined, writeErr: () => undefined });
    command.action(() => undefined);
    for (const sub of command.commands) silence(sub);
  };
  silence(program);
  try {
    await program.parseAsync([...argv], { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError && (err.exitCode === 0 || (reference && OMITTED_IN_REFERENCES.has(err.code)))) return;
    throw err;
  }
}

const helpCache = new Map<string, string>();
/** `tool [subcommands] --help`, stdout and stderr, whatever the exit status. */
function helpOf(argv: readonly string[]): string {
  const key = argv.join(' ');
  let text = helpCache.get(key);
  if (text === undefined) {
    try {
      text = execFileSync(argv[0] ?? '', [...argv.slice(1), '--help'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
    } catch (err) {
      const failed = err as { stdout?: string; stderr?: string; code?: string };
      if (failed.code === 'ENOENT') throw new Error(`${argv[0]} is not installed (add it to scripts/install-deps)`, { cause: err });
      text = `${failed.stdout ?? ''}${failed.stderr ?? ''}`;
    }
    helpCache.set(key, text);
  }
  return text;
}

/** The bare words of a command line that are not an option's value: its subcommands, then its arguments. */
function bareWords(argv: readonly string[]): string[] {
  const words: string[] = [];
  for (let i = 1; i < argv.length; i++) {
    const word = argv[i] ?? '';
    if (word.startsWith('-')) {
      // A long option without "=" followed by a bare word is taken to have that word as its value.
      if (word.startsWith('--') && !word.includes('=') && !(argv[i + 1] ?? '-').startsWith('-')) i++;
      continue;
    }
    words.push(word);
  }
  return words;
}

function checkTool(argv: readonly string[]): void {
  const tool = argv[0] ?? '';
  const longOptions = argv.filter((word) => /^--[a-z]/.test(word)).map((word) => word.split('=')[0] ?? word);
  if (longOptions.length === 0) {
    helpOf([tool]);
    return;
  }
  // Subcommand help (etcdctl endpoint health --help) lists the global options too.
  const subcommands = bareWords(argv).filter((word) => /^[a-z][a-z-]*$/.test(word)).slice(0, 2);
  const help = helpOf([tool]) + helpOf([tool, ...subcommands]);
  for (const option of longOptions) expect(help, `${tool} knows no ${option}`).toMatch(new RegExp(`${option}\\b`));
}

describe('runbooks', () => {
  it('show commands (the extraction works)', () => {
    expect(pages.length).toBeGreaterThanOrEqual(10);
    expect(commands.filter((c) => c.argv[0] === 'debvisorctl').length).toBeGreaterThan(10);
    expect(simpleCommands("ETCDCTL_API=3 etcdctl x --a b 2>/dev/null | jq -c '.x' && echo $(date +%F) <id> /a/* </dev/null")).toEqual([
      ['etcdctl', 'x', '--a', 'b'],
      ['jq', '-c', '.x'],
      ['echo', 'SUBSTITUTED', 'PLACEHOLDER-id', '/a/*'],
      ['date', '+%F'],
    ]);
  });

  const ours = (tool: string) => commands.filter((c) => c.argv[0] === tool).map((c) => [c.page, c.argv.join(' '), c.argv.slice(1), c.reference] as const);

  it.each(ours('debvisorctl'))('%s: %s parses', async (_page, _line, args, reference) => {
    await expect(dryParse(await debvisorctlFullProgram(), args, reference)).resolves.toBeUndefined();
  });

  it.each(ours('debvisor-rpcd'))('%s: %s parses', async (_page, _line, args, reference) => {
    await expect(dryParse(daemonProgram(), args, reference)).resolves.toBeUndefined();
  });

  it('a wrong option or command is caught', async () => {
    await expect(dryParse(await debvisorctlFullProgram(), ['apikey', 'rotate', 'k1', '--overlapp', '1h'])).rejects.toBeInstanceOf(CommanderError);
    await expect(dryParse(await debvisorctlFullProgram(), ['apikey', 'rotat', 'k1'])).rejects.toBeInstanceOf(CommanderError);
    await expect(dryParse(await debvisorctlFullProgram(), ['apikey', 'rotate'])).rejects.toBeInstanceOf(CommanderError);
    await expect(dryParse(await debvisorctlFullProgram(), ['apikey', 'rotate'], true)).resolves.toBeUndefined();
    expect(() => checkTool(['systemctl', '--no-such-option'])).toThrow(/knows no --no-such-option/);
  });

  it.each(commands.filter((c) => !['debvisorctl', 'debvisor-rpcd'].includes(c.argv[0] ?? '')).map((c) => [c.page, c.argv] as const))('%s: %j is installed and knows its options', (_page, argv) => {
    checkTool(argv);
  });
});
