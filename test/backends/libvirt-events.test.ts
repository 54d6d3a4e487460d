// The `virsh event --all --loop --timestamp` line parser: lines captured from libvirt 9.0's test
// driver, virsh's own lines, and garbage (which must be reported as unknown, never thrown on).
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { parseEventLine } from '../../src/backends/libvirt/events.js';

describe('parseEventLine', () => {
  it('parses lifecycle and other domain events as virsh prints them', () => {
    expect(parseEventLine("2026-12-07 17:57:31.911+0000: event 'lifecycle' for domain 'vm1': Started Booted")).toEqual({
      kind: 'domain',
      value: { time: new Date('2026-12-07T17:57:31.911Z'), event: 'lifecycle', domain: 'vm1', detail: 'Started Booted' },
    });
    for (const detail of ['Defined Added', 'Defined Updated', 'Suspended Paused', 'Resumed Unpaused', 'Stopped Destroyed', 'Undefined Removed']) {
      expect(parseEventLine(`2026-12-07 17:57:31.911+0000: event 'lifecycle' for domain 'web-1': ${detail}`)).toMatchObject({ kind: 'domain', value: { domain: 'web-1', detail } });
    }
    expect(parseEventLine("2026-12-07 17:57:31.911+0000: event 'metadata-change' for domain 'vm1': type description, uri <null>")).toMatchObject({
      kind: 'domain',
      value: { event: 'metadata-change', domain: 'vm1', detail: 'type description, uri <null>' },
    });
    // An event with nothing after the domain (reboot).
    expect(parseEventLine("2026-12-07 17:57:31.911+0000: event 'reboot' for domain 'vm1'")).toMatchObject({ kind: 'domain', value: { event: 'reboot', domain: 'vm1', detail: '' } });
    // Another zone offset.
    expect(parseEventLine("2026-12-07 18:57:31.911+0100: event 'lifecycle' for domain 'a': Started Booted")).toMatchObject({ value: { time: new Date('2026-12-07T17:57:31.911Z') } });
    // A name with spaces and quotes (libvirt allows them; virsh prints them raw).
    expect(parseEventLine("2026-12-07 17:57:31.911+0000: event 'lifecycle' for domain 'my vm's': Stopped Destroyed")).toMatchObject({ value: { domain: "my vm's", detail: 'Stopped Destroyed' } });
  });

  it("ignores virsh's own lines", () => {
    expect(parseEventLine('')).toEqual({ kind: 'ignored' });
    expect(parseEventLine('events received: 12')).toEqual({ kind: 'ignored' });
  });

  it('reports garbage as unknown', () => {
    for (const line of [
      'garbage',
      "event 'lifecycle' for domain 'vm1': Started Booted",
      "2026-12-07 17:57:31.911+0000: event 'lifecycle' for domain '': Started Booted",
      "2026-13-45 99:99:99.999+0000: event 'lifecycle' for domain 'vm1': Started Booted",
      "2026-12-07 17:57:31.911+0000: event 'LIFECYCLE!' for domain 'vm1'",
      "2026-12-07 17:57:31.911+0000: event 'lifecycle' for network 'default': Started",
      'error: Disconnected from test+unix:///default due to end of file',
    ]) {
      expect(parseEventLine(line), line).toEqual({ kind: 'unknown' });
    }
  });

  it('never throws, and a domain result always has a valid time and a non-empty name', () => {
    const prefix = fc.constantFrom('', '2026-12-07 17:57:31.911+0000: ', "2026-12-07 17:57:31.911+0000: event 'lifecycle' for domain '");
    fc.assert(
      fc.property(prefix, fc.string({ unit: 'binary', maxLength: 200 }), (start, rest) => {
        const parsed = parseEventLine(start + rest);
        if (parsed.kind === 'domain') {
          expect(Number.isNaN(parsed.value.time.getTime())).toBe(false);
          expect(parsed.value.domain.length).toBeGreaterThan(0);
        }
      }),
      { numRuns: Number(process.env.FUZZ_CASES ?? 2000) },
    );
  });
});
