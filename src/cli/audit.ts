// `debvisorctl audit ...`: offline tools for the daemon's audit log.
import type { Command, CommanderError } from 'commander';
import { AuditKeyError, readHmacKeySync } from '../audit/key.js';
import { DEFAULT_AUDIT_KEY_PATH, DEFAULT_AUDIT_LOG_PATH } from '../audit/log.js';
import { auditFilesInOrder, verifyAuditFiles } from '../audit/verify.js';

export interface AuditCliIo {
  out: (text: string) => void;
  err: (text: string) => void;
  /** Ends the command with this exit code; must not return. */
  exit: (code: number) => never;
}

const processIo: AuditCliIo = {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
  exit: (code) => process.exit(code),
};

/** Exit codes: 0 chain intact, 1 tampering or damage found, 2 usage or I/O error. */
export const AUDIT_EXIT = { OK: 0, TAMPERED: 1, ERROR: 2 } as const;

interface VerifyFlags {
  keyFile: string;
  log: string;
  legacy?: boolean;
}

/** The first word of a failed verification, by problem. */
const VERDICTS: Record<string, string> = { empty: 'EMPTY', legacy: 'UNVERIFIED' };

function runVerify(files: string[], flags: VerifyFlags, io: AuditCliIo): number {
  let key: Buffer;
  try {
    const loaded = readHmacKeySync(flags.keyFile);
    key = loaded.key;
    if (loaded.loose) io.err(`warning: ${flags.keyFile} is readable by group/other; the daemon refuses such a key file\n`);
  } catch (err) {
    io.err(`debvisorctl: ${err instanceof AuditKeyError ? err.message : String(err)}\n`);
    return AUDIT_EXIT.ERROR;
  }
  const targets = files.length > 0 ? files : auditFilesInOrder(flags.log);
  if (targets.length === 0) {
    io.err(`debvisorctl: no audit log files found for ${flags.log}\n`);
    return AUDIT_EXIT.ERROR;
  }
  let result;
  try {
    result = verifyAuditFiles(targets, key, { legacy: flags.legacy === true });
  } catch (err) {
    io.err(`debvisorctl: ${err instanceof Error ? err.message : String(err)}\n`);
    return AUDIT_EXIT.ERROR;
  }
  if (!result.ok) {
    const where = result.line > 0 ? `${result.file}:${result.line}: ` : '';
    io.out(`${VERDICTS[result.problem] ?? 'TAMPERED'}: ${where}${result.problem}: ${result.message}\n`);
    io.out(`(${result.entries} entries verified before it)\n`);
    return AUDIT_EXIT.TAMPERED;
  }
  const seqs = result.entries > 0 ? ` (seq ${result.firstSeq}–${result.lastSeq})` : '';
  io.out(`OK: ${result.entries} entries${seqs} in ${result.files} file${result.files === 1 ? '' : 's'}\n`);
  const link = result.startLink;
  if (link) {
    const previous = link.previous_file === undefined ? '' : `, previously ${link.previous_file}`;
    io.out(`note: the chain starts mid-way at seq ${result.firstSeq}, at a link record (${link.cause}${previous}); the entries before it are not among these files\n`);
  } else if (result.startsMidChain) {
    io.out(`note: the chain starts mid-way at seq ${result.firstSeq} without a link record (accepted with --legacy); the first entry's link was not checked\n`);
  }
  return AUDIT_EXIT.OK;
}

/** Adds `audit verify [FILES...]` to a debvisorctl-style program. */
export function registerAuditCommands(program: Command, io: AuditCliIo = processIo): void {
  const audit = program.command('audit').description('inspect the daemon audit log');
  const verify = audit
    .command('verify')
    .description('check the HMAC chain of the audit log: every entry present, unmodified and in order')
    .argument('[files...]', 'audit files, oldest first (default: all rotated files of --log, then --log)')
    .option('--key-file <path>', 'audit HMAC key', DEFAULT_AUDIT_KEY_PATH)
    .option('--log <path>', 'current audit log file, used when no FILES are given', DEFAULT_AUDIT_LOG_PATH)
    .option('--legacy', 'also accept logs of earlier releases: one-MAC-per-entry entries, and a chain starting mid-way without a link record')
    .addHelpText(
      'after',
      '\nExit status: 0 intact, 1 tampered, damaged, empty, or starting mid-way without a link record, 2 usage or I/O error.\n' +
        'Files renamed by another program (e.g. rpc-audit.log.1) are not found by name: list them, oldest first.',
    )
    .action((files: string[], flags: VerifyFlags) => {
      io.exit(runVerify(files, flags, io));
    });
  for (const command of [audit, verify]) {
    command.configureOutput({ writeOut: io.out, writeErr: io.err });
    // Usage errors exit 2 (commander's default would be 1, which here means "tampered").
    command.exitOverride((err: CommanderError) => io.exit(err.exitCode === 0 ? 0 : AUDIT_EXIT.ERROR));
  }
}
