// debvisorctl(1) is generated from the command tree at build (src/dev/manpages.ts, run by
// scripts/build-deb): it names every command, the exit statuses of --help and the contexts file.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { commandTree } from '../../src/cli/completion.js';
import { EXIT } from '../../src/cli/exit-codes.js';
import { debvisorctlFullProgram } from '../../src/cli/program.js';
import { ctlManPage } from '../../src/dev/manpages.js';

const run = promisify(execFile);
/** roff text as man shows it: hyphens unescaped. */
const plain = (roff: string) => roff.replace(/\\-/g, '-').replace(/\\e/g, '\\');

describe('debvisorctl(1)', () => {
  it('documents every command, every exit status and the contexts file', async () => {
    const page = plain(await ctlManPage());
    for (const { names } of commandTree(await debvisorctlFullProgram())) expect(page).toContain(`debvisorctl ${names.join(' ')}`);
    for (const code of Object.values(EXIT)) expect(page).toMatch(new RegExp(`^\\.B ${code}\\n`, 'm'));
    expect(page).toContain('DEADLINE_EXCEEDED');
    expect(page).toContain('~/.config/debvisor/ctl.yaml');
    expect(page).toContain('an explicit --api-key is never joined by DEBVISORCTL_CERT');
  });

  it('renders with man without warnings', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'dv-ctl-man-'));
    try {
      const file = join(dir, 'debvisorctl.1');
      writeFileSync(file, await ctlManPage());
      const { stdout, stderr } = await run('man', ['--warnings', '-E', 'UTF-8', '-l', file], { env: { ...process.env, MANWIDTH: '80', MAN_KEEP_FORMATTING: '0' } }).catch((err: unknown) => {
        const failed = err as { code?: string };
        if (failed.code === 'ENOENT') return { stdout: readFileSync(file, 'utf8'), stderr: '' };
        throw err;
      });
      expect(stderr).toBe('');
      // Without a terminal man still overstrikes bold text (X, backspace, X).
      expect(stdout.replaceAll('\b', '').replace(/(.)\1/g, '$1')).toContain('EXIT STATUS');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
