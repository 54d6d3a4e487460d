// The fuzz suite's argv check (test/fuzz/argv.ts) flags what correct code never spawns, and
// nothing that correct code does.
import { describe, expect, it } from 'vitest';
import { argvProblems } from './argv.js';

const sent = new Set(['vm1', 'fuzz-pool', 'vol-a', '-x;id', '--help', '-zq', '../../etc/passwd', 'a b', '--all', '-n', 'vm1\u202e', 'nightly\u2028', 'x:conf=/etc/ceph', '..', '-']);
const cmd = (...args: string[]) => ({ backend: 'test', command: 'tool', args });

describe('argvProblems', () => {
  it('accepts validated names, the daemon\'s own options, and free text after -- or inside --opt=TEXT', () => {
    for (const args of [
      ['--connect', 'test:///default', 'start', '--domain', 'vm1'],
      ['info', 'fuzz-pool/vol-a@snap', '--format', 'json'],
      ['list', '--all', '--name'],
      ['lvcreate', '--yes', '-n', 'vol-a', '-L', '8m', '--addtag', 'debvisor.label=a#20b', 'vg0'],
      ['snapshot-create-as', '--domain', 'vm1', '--name', 's', '--description=-x;id a b ../../etc/passwd'],
      ['image-meta', 'set', 'fuzz-pool/vol-a', 'debvisor.snap.s.label', '--', '-x;id'],
      // The bare '-' is the daemon's own stdin marker, even if a request happened to send '-'.
      ['-I', '-', '/etc/ceph/ceph.conf', 'fuzz-pool'],
    ]) {
      expect(argvProblems(cmd(...args), sent)).toEqual([]);
    }
  });

  it('flags refused request text as an argument or part of one, control characters anywhere, and ".." parts', () => {
    expect(argvProblems(cmd('start', '-x;id'), sent)).toHaveLength(2);
    expect(argvProblems(cmd('start', '--help'), sent)).toHaveLength(1);
    expect(argvProblems(cmd('info', 'fuzz-pool/a b'), sent)).toHaveLength(1);
    expect(argvProblems(cmd('info', '../../etc/passwd'), sent).length).toBeGreaterThan(0);
    expect(argvProblems(cmd('start', 'vm1\u202e'), sent).length).toBeGreaterThan(0);
    expect(argvProblems(cmd('image-meta', 'set', 'i', 'k', '--', 'nightly\u2028'), sent)).toHaveLength(1);
    expect(argvProblems(cmd('info', 'pool/../x'), new Set())).toHaveLength(1);
  });
});
