// `debvisorctl audit ...`: offline tools for the daemon's audit log.
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { InvalidArgumentError, Option, type Command, type CommanderError } from 'commander';
import { AuditKeyError, readHmacKeySync } from '../audit/key.js';
import { DEFAULT_AUDIT_KEY_PATH, DEFAULT_AUDIT_LOG_PATH } from '../audit/log.js';
import { AUDIT_EVENT_TYPES, type AuditEntry, type AuditEventType } from '../audit/types.js';
import { auditFilesInOrder, verifyAuditFiles } from '../audit/verify.js';
import { escapeUnsafeJson } from '../rpc/text.js';
import { collect, count } from './command.js';
import { formatTable } from './output.js';

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

/** The FILES given, else the rotated files of `log` and `log` itself; undefined (said on stderr) when there are none. */
function auditTargets(files: string[], log: string, io: AuditCliIo): string[] | undefined {
  const targets = files.length > 0 ? files : auditFilesInOrder(log);
  if (targets.length > 0) return targets;
  io.err(`debvisorctl: no audit log files found for ${log}\n`);
  return undefined;
}

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
  const targets = auditTargets(files, flags.log, io);
  if (!targets) return AUDIT_EXIT.ERROR;
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

interface ListFlags {
  log: string;
  principal?: string;
  impersonatedBy?: string;
  type?: AuditEventType[];
  limit?: number;
}

/** Which entries `audit list` shows; a principal matches the user of an impersonated call and the certificate acting for it. */
export interface AuditFilter {
  readonly principal?: string | undefined;
  readonly impersonatedBy?: string | undefined;
  readonly types?: readonly AuditEventType[];
}

export function auditEntryMatches(entry: AuditEntry, filter: AuditFilter): boolean {
  const principal = entry.principal;
  const impersonator = principal?.impersonated_by?.id;
  if (filter.principal !== undefined && principal?.id !== filter.principal && impersonator !== filter.principal) return false;
  if (filter.impersonatedBy !== undefined && impersonator !== filter.impersonatedBy) return false;
  return !filter.types?.length || filter.types.includes(entry.type);
}

/** The matching entries of `files` in order, and how many lines were not entries. */
async function readMatching(files: readonly string[], filter: AuditFilter, limit: number | undefined): Promise<{ entries: AuditEntry[]; unreadable: number }> {
  const entries: AuditEntry[] = [];
  let unreadable = 0;
  for (const file of files) {
    const lines = createInterface({ input: createReadStream(file), crlfDelay: Infinity });
    for await (const line of lines) {
      let entry: unknown;
      try {
        entry = JSON.parse(line);
      } catch {
        unreadable++;
        continue;
      }
      if (entry === null || typeof entry !== 'object' || typeof (entry as Partial<AuditEntry>).seq !== 'number') {
        unreadable++;
        continue;
      }
      if (!auditEntryMatches(entry as AuditEntry, filter)) continue;
      entries.push(entry as AuditEntry);
      // --limit keeps the newest: drop the older ones now and then, not per entry.
      if (limit !== undefined && entries.length >= 2 * limit + 1024) entries.splice(0, entries.length - limit);
    }
  }
  return { entries: limit === undefined ? entries : entries.slice(Math.max(0, entries.length - limit)), unreadable };
}

function tableOf(entries: readonly AuditEntry[]): string {
  return formatTable(
    ['seq', 'time', 'type', 'principal', 'impersonated by', 'method', 'code', 'object'],
    entries.map((entry) => [
      String(entry.seq),
      entry.time,
      entry.type,
      entry.principal?.id ?? '-',
      entry.principal?.impersonated_by?.id ?? '-',
      entry.method ?? '-',
      entry.code ?? entry.decision ?? '-',
      entry.object ?? '-',
    ]),
  );
}

async function runList(files: string[], flags: ListFlags, json: boolean, io: AuditCliIo): Promise<number> {
  const targets = auditTargets(files, flags.log, io);
  if (!targets) return AUDIT_EXIT.ERROR;
  let result;
  try {
    result = await readMatching(targets, { principal: flags.principal, impersonatedBy: flags.impersonatedBy, types: flags.type }, flags.limit);
  } catch (err) {
    io.err(`debvisorctl: ${err instanceof Error ? err.message : String(err)}\n`);
    return AUDIT_EXIT.ERROR;
  }
  // Entries as logged, one JSON object per line; escaped, as the log may hold anything a caller sent.
  if (json) io.out(result.entries.map((entry) => `${escapeUnsafeJson(JSON.stringify(entry))}\n`).join(''));
  else io.out(tableOf(result.entries));
  if (result.unreadable > 0) io.err(`warning: ${result.unreadable} lines are not audit entries (damaged or not an audit log; \`audit verify\` says which)\n`);
  return AUDIT_EXIT.OK;
}

function eventType(value: string): AuditEventType {
  const type = value.toUpperCase() as AuditEventType;
  if (!AUDIT_EVENT_TYPES.includes(type)) throw new InvalidArgumentError(`expected one of ${AUDIT_EVENT_TYPES.join(', ').toLowerCase()}`);
  return type;
}

/** Adds `audit verify [FILES...]` and `audit list [FILES...]` to a debvisorctl-style program. */
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
  const list = audit
    .command('list')
    .description('show audit entries, filtered (does not check the chain: use `audit verify`)')
    .argument('[files...]', 'audit files, oldest first (default: all rotated files of --log, then --log)')
    .option('--log <path>', 'current audit log file, used when no FILES are given', DEFAULT_AUDIT_LOG_PATH)
    .option('--principal <id>', 'entries of this principal: the caller, or for an impersonated call the user or the certificate acting for it')
    .option('--impersonated-by <id>', 'only impersonated calls made by this certificate principal')
    .addOption(new Option('--type <type>', `event type, repeatable: ${AUDIT_EVENT_TYPES.join(', ').toLowerCase()}`).argParser((value: string, previous: AuditEventType[] | undefined) => collect(eventType(value), previous) as AuditEventType[]))
    .option('--limit <n>', 'only the newest N matching entries', count)
    .addHelpText('after', '\nOutput: a table, or with -o json one entry per line as logged.\nExit status: 0 listed (also when nothing matches), 2 usage or I/O error.')
    .action(async (files: string[], flags: ListFlags, command: Command) => {
      const json = command.optsWithGlobals<{ output?: string }>().output === 'json';
      io.exit(await runList(files, flags, json, io));
    });
  for (const command of [audit, verify, list]) {
    command.configureOutput({ writeOut: io.out, writeErr: io.err });
    // Usage errors exit 2 (commander's default would be 1, which here means "tampered").
    command.exitOverride((err: CommanderError) => io.exit(err.exitCode === 0 ? 0 : AUDIT_EXIT.ERROR));
  }
}
