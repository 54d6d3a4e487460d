// Every launcher of the daemon passes the V8 flags of src/daemon/node-flags.ts: they only
// take effect on node's command line, so a launcher that drops them silently costs memory.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DAEMON_NODE_FLAGS, missingNodeFlags } from '../../src/daemon/node-flags.js';
import { REPO_ROOT } from '../support/daemon.js';

describe("the daemon's V8 flags", () => {
  it.each(['bin/debvisor-rpcd', 'packaging/deb/debvisor-rpcd'])('%s passes them to node before dist/main.js', (launcher) => {
    const text = readFileSync(join(REPO_ROOT, launcher), 'utf8');
    const exec = text.split('\n').find((line) => line.startsWith('exec '));
    expect(exec, launcher).toMatch(new RegExp(`/?node ${DAEMON_NODE_FLAGS.join(' ')} "?\\S*dist/main\\.js"? "\\$@"$`));
  });

  it('scripts/dev starts the daemon through bin/debvisor-rpcd', () => {
    const text = readFileSync(join(REPO_ROOT, 'scripts', 'dev'), 'utf8');
    expect(text).toContain('bin/debvisor-rpcd --config');
    expect(text).not.toMatch(/node dist\/main\.js/);
  });

  it('are reported missing when node was started without them', () => {
    expect(missingNodeFlags([])).toEqual(DAEMON_NODE_FLAGS);
    expect(missingNodeFlags(['--enable-source-maps', ...DAEMON_NODE_FLAGS])).toEqual([]);
  });
});
