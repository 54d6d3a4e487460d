// The fuzz suite's check of the host commands the daemon spawned (DEBVISOR_EXEC_TRACE lines):
// nothing the validators refuse may reach an argv. Rules that hold for correct code:
//  - no argument holds a control, C1, separator, bidi or lone-surrogate character (every name and
//    text validator refuses them, so neither a name nor a description can bring one);
//  - before a `--` terminator, an argument (or a `/`- or `@`-separated part of one, as in
//    POOL/IMAGE@SNAP) that is exactly a string a request sent must pass a name validator: only
//    validated names go in as arguments of their own; free text goes only after `--`, inside
//    `--opt=TEXT`, or encoded into a `key=value` tag, and those are skipped here;
//  - no part of an argument before `--` is `..`.
import { UNSAFE_TEXT } from '../../src/rpc/text.js';
import { OPTION_LIKE } from './generate.js';
import { validateHostname, validateImageName, validateLvName, validateSnapshotName, validateVgName, validateVmName } from '../../src/backends/validate.js';

export interface TracedCommand {
  readonly backend: string;
  readonly command: string;
  readonly args: readonly string[];
}

const NAME_VALIDATORS = [validateVmName, validateVgName, validateLvName, validateImageName, validateSnapshotName, validateHostname];

function passesSomeValidator(value: string): boolean {
  return NAME_VALIDATORS.some((validate) => {
    try {
      validate(value, 'x');
      return true;
    } catch {
      return false;
    }
  });
}

/** Option-shaped text the daemon itself never passes, sent by the fuzzer: seen in an argv, it came from a request. */
const FUZZ_OPTIONS = new Set(OPTION_LIKE.filter((s) => /^-[^-]|^--./.test(s)));
/** An option, or the bare `-` (stdin, e.g. `python3 -I -` of the RBD ownership listing). */
const OPTION_SHAPE = /^(?:-|--?[A-Za-z][A-Za-z0-9-]*)$/;

/** The problems in one traced command; `sent` holds every string the requests carried. */
export function argvProblems(traced: TracedCommand, sent: ReadonlySet<string>): string[] {
  const problems: string[] = [];
  const terminator = traced.args.indexOf('--');
  traced.args.forEach((arg, i) => {
    if (UNSAFE_TEXT.test(arg)) problems.push(`argument ${i} holds a control, separator or bidi character: ${JSON.stringify(arg)}`);
    if (terminator !== -1 && i >= terminator) return;
    if (FUZZ_OPTIONS.has(arg)) problems.push(`argument ${i} is option-like request text: ${JSON.stringify(arg)}`);
    if (arg.includes('=')) return;
    for (const part of new Set([arg, ...arg.split(/[/@]/)])) {
      if (part === '..') problems.push(`argument ${i} has a '..' part: ${JSON.stringify(arg)}`);
      if (part === '' || !sent.has(part)) continue;
      // The daemon's own options may equal random text a request happened to send; other dash text may not.
      const refused = part.startsWith('-') ? !OPTION_SHAPE.test(part) : !passesSomeValidator(part);
      if (refused) problems.push(`argument ${i} carries request text no name validator accepts: ${JSON.stringify(part)} in ${JSON.stringify(arg)}`);
    }
  });
  return problems;
}
