// `debvisorctl pki ...`: run the internal CA offline. Nothing here talks to the
// daemon; it reads and writes files (keys 0600, atomically; a CA is never overwritten).
import { readdirSync, readFileSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { chown, readFile, stat } from 'node:fs/promises';
import { promisify } from 'node:util';
import { basename, join, resolve } from 'node:path';
import { createInterface } from 'node:readline/promises';
import { InvalidArgumentError, Option, type Command, type CommanderError } from 'commander';
import Table from 'cli-table3';
import { loadConfig } from '../config/load.js';
import { principalOfNames, reservedPrincipalProblem } from '../authn/x509.js';
import { collect } from './command.js';
import { UsageError } from './exit-codes.js';
import {
  CERTIFICATE_MODE,
  PRIVATE_KEY_MODE,
  REVOCATION_REASONS,
  caDirectory,
  describeCertificate,
  exportPkcs12,
  formatSans,
  initCa,
  inspectCsr,
  issueCertificate,
  loadCa,
  parseCrl,
  parseSanList,
  refreshCrl,
  renewCertificate,
  revokeSerials,
  signCsr,
  splitPemCertificates,
  verifyCrl,
  writeFileAtomic,
  writeLeafFiles,
  type CaKeyAlgorithm,
  type CertificateInfo,
  type CertificateProfile,
  type SanLists,
  type RevocationReason,
} from '../pki/index.js';

// Option names avoid debvisorctl's global --cert, --key and --ca: commander matches
// a parent's options anywhere on the command line.
export const DEFAULT_PKI_DIR = '/etc/debvisor/rpc';
export const DEFAULT_CA_COMMON_NAME = 'DebVisor RPC CA';
const DAY_MS = 86_400_000;

export interface PkiCliIo {
  out: (text: string) => void;
  err: (text: string) => void;
  /** Ends the command with this exit code; must not return. */
  exit: (code: number) => never;
  env: NodeJS.ProcessEnv;
  now: () => Date;
  /** Asks a yes/no question on a terminal; absent when there is none to ask on. */
  confirm?: (question: string) => Promise<boolean>;
}

async function confirmOnTerminal(question: string): Promise<boolean> {
  const prompt = createInterface({ input: process.stdin, output: process.stderr });
  try {
    return /^y(es)?$/i.test((await prompt.question(question)).trim());
  } finally {
    prompt.close();
  }
}

const processIo: PkiCliIo = {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
  exit: (code) => process.exit(code),
  env: process.env,
  now: () => new Date(),
  ...(process.stdin.isTTY && { confirm: confirmOnTerminal }),
};

/** 0 done; 1 failed (or, for status, something expired or due); 2 usage error. */
export const PKI_EXIT = { OK: 0, FAILED: 1, USAGE: 2 } as const;


/** A client certificate the daemon would refuse for its principal (user:/group:) is not issued. */
function refuseReservedPrincipal(principal: string | undefined): void {
  const reserved = principal === undefined ? undefined : reservedPrincipalProblem(principal);
  if (reserved) throw new UsageError(`the daemon would refuse this certificate: ${reserved}`);
}

function positiveNumber(name: string): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${name} must be a positive number.`);
    return n;
  };
}

async function readText(file: string, what: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read ${what} ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { cause: err });
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch {
    return false;
  }
}

/** Refuses a directory option naming nothing (or a file) up front, rather than failing on a temp file inside it. */
async function requireDirectory(dir: string, option: string): Promise<void> {
  let isDirectory: boolean;
  try {
    isDirectory = (await stat(dir)).isDirectory();
  } catch (err) {
    throw new UsageError(`${option} ${dir}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such directory (create it first)' : (err as Error).message}`);
  }
  if (!isDirectory) throw new UsageError(`${option} ${dir}: not a directory`);
}

export interface FileOwner {
  readonly uid: number;
  readonly gid: number;
}

/** A numeric id from `getent DATABASE NAME` (0-based field: passwd 2 uid, 3 gid; group 2 gid); digits pass through. */
async function getentId(database: 'passwd' | 'group', name: string, field: 2 | 3): Promise<number> {
  if (/^\d+$/.test(name)) return Number(name);
  let stdout: string;
  try {
    ({ stdout } = await promisify(execFile)('getent', [database, name]));
  } catch {
    throw new UsageError(`--owner: no ${database === 'passwd' ? 'user' : 'group'} "${name}" on this host`);
  }
  return Number(stdout.split(':')[field]);
}

/**
 * `--owner user[:group]`: the daemon runs as its own user (debvisor) and must read the key it
 * serves with, so the operator, usually root, hands the written files over. The group defaults
 * to the user's primary group.
 */
export async function resolveOwner(spec: string): Promise<FileOwner> {
  const [user = '', group] = spec.split(':');
  if (user === '') throw new UsageError('--owner takes user[:group], e.g. debvisor');
  const uid = await getentId('passwd', user, 2);
  const gid = group !== undefined && group !== '' ? await getentId('group', group, 2) : await getentId('passwd', user, 3);
  return { uid, gid };
}

/** The p12 password: from a file (first line) or DEBVISORCTL_P12_PASSWORD; never a flag value. */
async function p12Password(file: string | undefined, io: PkiCliIo): Promise<string> {
  const password = file ? (await readText(file, 'password file')).split('\n')[0] : io.env.DEBVISORCTL_P12_PASSWORD;
  if (!password) throw new UsageError('a PKCS#12 password is needed: --password-file FILE or DEBVISORCTL_P12_PASSWORD');
  return password;
}

function formatInfo(info: CertificateInfo, now: Date): Record<string, string> {
  return {
    subject: info.subject,
    serial: info.serialNumber,
    issuer: info.issuer,
    sans: info.sanStrings.join(', ') || '-',
    'not before': info.notBefore.toISOString(),
    'not after': info.notAfter.toISOString(),
    'days left': String(Math.floor((info.notAfter.getTime() - now.getTime()) / DAY_MS)),
  };
}

function printRecord(io: PkiCliIo, record: Record<string, string>): void {
  const width = Math.max(...Object.keys(record).map((key) => key.length));
  for (const [key, value] of Object.entries(record)) io.out(`${`${key}:`.padEnd(width + 2)}${value}\n`);
}

interface DirFlags {
  dir: string;
}

// ---- status ---------------------------------------------------------------------

interface StatusRow {
  name: string;
  file: string;
  info?: CertificateInfo;
  problem?: string;
}

type State = 'ok' | 'RENEW SOON' | 'EXPIRED' | 'NOT YET VALID' | 'MISSING' | 'UNREADABLE';

function stateOf(row: StatusRow, now: Date, warnDays: number): State {
  if (row.problem === 'missing') return 'MISSING';
  if (!row.info) return 'UNREADABLE';
  const t = now.getTime();
  if (row.info.notAfter.getTime() <= t) return 'EXPIRED';
  if (row.info.notBefore.getTime() > t) return 'NOT YET VALID';
  if (row.info.notAfter.getTime() - t < warnDays * DAY_MS) return 'RENEW SOON';
  return 'ok';
}

function certificateRows(name: string, file: string): StatusRow[] {
  let pem: string;
  try {
    pem = readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return [{ name, file, problem: code === 'ENOENT' ? 'missing' : (code ?? String(err)) }];
  }
  const blocks = splitPemCertificates(pem);
  if (blocks.length === 0) return [{ name, file, problem: 'no PEM certificate in file' }];
  return blocks.map((block, i) => {
    try {
      return { name: blocks.length > 1 ? `${name}[${i}]` : name, file, info: describeCertificate(block) };
    } catch (err) {
      return { name, file, problem: (err as Error).message };
    }
  });
}

interface StatusFlags {
  config?: string;
  certFile?: string[];
  dir?: string;
  warnDays?: number;
  output?: string;
}

function runStatus(flags: StatusFlags, io: PkiCliIo): number {
  const { config, file: configFile } = loadConfig({ path: flags.config, env: io.env });
  const warnDays = flags.warnDays ?? config.tls.renewal.renew_before_days;
  const wanted: [string, string][] = [];
  // Without a config file the built-in paths are only guesses: skip them when told what to list.
  const fromConfig = configFile !== undefined || (!flags.dir && (flags.certFile ?? []).length === 0);
  if (fromConfig) {
    wanted.push(['ca', config.tls.ca_file], ['server', config.tls.cert_file]);
    if (config.tls.renewal.chain_ca_file) wanted.push(['chain ca', config.tls.renewal.chain_ca_file]);
  }
  if (fromConfig && config.store.backend === 'etcd') {
    if (config.store.etcd.ca_file) wanted.push(['etcd ca', config.store.etcd.ca_file]);
    if (config.store.etcd.cert_file) wanted.push(['etcd client', config.store.etcd.cert_file]);
  }
  if (flags.dir) {
    const dir = resolve(flags.dir);
    let names: string[];
    try {
      names = readdirSync(dir).filter((name) => name.endsWith('-cert.pem') || name.endsWith('.crt')).sort();
    } catch (err) {
      throw new Error(`cannot list ${dir}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { cause: err });
    }
    for (const name of names) wanted.push([name.replace(/(-cert\.pem|\.crt)$/, ''), join(dir, name)]);
  }
  for (const file of flags.certFile ?? []) wanted.push([basename(file).replace(/(-cert)?\.(pem|crt)$/, ''), file]);
  const seen = new Set<string>();
  const rows = wanted.flatMap(([name, file]) => {
    const abs = resolve(file);
    if (seen.has(abs)) return [];
    seen.add(abs);
    return certificateRows(name, abs);
  });
  const now = io.now();
  const results = rows.map((row) => ({ row, state: stateOf(row, now, warnDays) }));

  if (flags.output === 'json') {
    const json = results.map(({ row, state }) => ({
      name: row.name,
      file: row.file,
      state,
      ...(row.problem !== undefined && { problem: row.problem }),
      ...(row.info && {
        subject: row.info.subject,
        sans: row.info.sanStrings,
        issuer: row.info.issuer,
        serial: row.info.serialNumber,
        not_after: row.info.notAfter.toISOString(),
        days_left: Math.floor((row.info.notAfter.getTime() - now.getTime()) / DAY_MS),
      }),
    }));
    io.out(`${JSON.stringify(json, null, 2)}\n`);
  } else {
    const table = new Table({
      head: ['NAME', 'SUBJECT', 'SANS', 'ISSUER', 'NOT AFTER', 'DAYS LEFT', 'STATE'],
      style: { head: [], border: [], compact: true },
      wordWrap: true,
    });
    for (const { row, state } of results) {
      const info = row.info;
      table.push([
        `${row.name}\n${row.file}`,
        info?.subject ?? row.problem ?? '',
        info ? info.sanStrings.join('\n') || '-' : '',
        info?.issuer ?? '',
        info?.notAfter.toISOString() ?? '',
        info ? String(Math.floor((info.notAfter.getTime() - now.getTime()) / DAY_MS)) : '',
        state === 'ok' ? 'ok' : `!! ${state}`,
      ]);
    }
    io.out(`${table.toString()}\n`);
    const flagged = results.filter(({ state }) => state !== 'ok').length;
    io.out(flagged === 0 ? `all ${results.length} certificates ok (warning below ${warnDays} days)\n` : `${flagged} of ${results.length} need attention (warning below ${warnDays} days)\n`);
  }
  return results.some(({ state }) => state !== 'ok') ? PKI_EXIT.FAILED : PKI_EXIT.OK;
}

// ---- sign-csr ----------------------------------------------------------------------

interface SignCsrFlags extends DirFlags {
  csr: string;
  principal?: string;
  san: string[];
  cn?: string;
  days: number;
  out: string;
  yes?: boolean;
  allowAdmin?: boolean;
  config?: string;
}

interface SigningPlan {
  commonName: string;
  sans: SanLists;
  principal: string;
}

/** Subject and SANs from the operator's flags alone; the principal is what the daemon will see. */
function signingPlan(profile: CertificateProfile, flags: SignCsrFlags): SigningPlan {
  let sans: SanLists;
  try {
    sans = parseSanList(flags.san);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (profile === 'server') {
    if (flags.principal !== undefined) throw new UsageError('--principal is for client certificates; a server is named by its --san DNS:/IP: names');
    if (sans.dnsNames.length + sans.ipAddresses.length + sans.uris.length === 0) throw new UsageError('a server certificate needs at least one --san (DNS:host or IP:address)');
    const commonName = flags.cn ?? sans.dnsNames[0] ?? sans.ipAddresses[0] ?? '';
    return { commonName, sans, principal: principalOfNames({ ...sans, commonName }) ?? commonName };
  }
  const principal = flags.principal?.trim();
  if (!principal) throw new UsageError('--principal is required: the identity the certificate authenticates as (the CSR does not choose it)');
  if (sans.uris.length > 0) throw new UsageError('a client certificate carries exactly one URI SAN, the --principal; drop the --san URI: names');
  const isUri = URL.canParse(principal) && principal.includes('://');
  if (isUri) sans.uris.push(principal);
  const commonName = flags.cn ?? (isUri ? (new URL(principal).pathname.split('/').filter(Boolean).pop() ?? principal) : principal);
  if (!isUri && commonName !== principal) throw new UsageError(`a non-URI principal is the certificate's CN: --cn ${commonName} would name someone else`);
  refuseReservedPrincipal(principal);
  const effective = principalOfNames({ ...sans, commonName });
  if (effective !== principal) {
    throw new UsageError(`with these names the daemon would see principal "${String(effective)}", not "${principal}" (a DNS SAN takes precedence over the CN): use a URI principal or drop the DNS names`);
  }
  return { commonName, sans, principal };
}

/** Principals the daemon treats as admin by config: bootstrap admins and default bindings to the admin role. */
function configuredAdmins(flags: SignCsrFlags, io: PkiCliIo): { admins: Set<string>; source: string } {
  const { config, file } = loadConfig({ path: flags.config, env: io.env });
  const admins = new Set(config.auth.bootstrap_admins);
  for (const [principal, roles] of Object.entries(config.auth.default_bindings)) if (roles.includes('admin')) admins.add(principal);
  return { admins, source: file ?? 'built-in defaults and environment (no config file found)' };
}

async function runSignCsr(profileArg: string, flags: SignCsrFlags, io: PkiCliIo): Promise<number> {
  if (profileArg !== 'server' && profileArg !== 'client') throw new UsageError(`profile must be "server" or "client", got "${profileArg}"`);
  const profile: CertificateProfile = profileArg;
  const plan = signingPlan(profile, flags);
  const csrPem = await readText(flags.csr, 'CSR');
  const { info: requested } = await inspectCsr(csrPem);
  const { admins, source } = configuredAdmins(flags, io);
  if (profile === 'client' && admins.has(plan.principal) && !flags.allowAdmin) {
    throw new Error(`refusing to sign ${plan.principal}: it is an admin in ${source}; pass --allow-admin if that is really meant`);
  }
  const paths = caDirectory(flags.dir);
  const ca = await loadCa(paths.caCert, paths.caKey);
  const notAfter = new Date(Math.min(io.now().getTime() + flags.days * DAY_MS, describeCertificate(ca.certPem).notAfter.getTime()));

  io.out('about to sign:\n');
  printRecord(io, {
    subject: `CN=${plan.commonName}`,
    sans: formatSans(plan.sans).join(', ') || '-',
    eku: profile === 'client' ? 'clientAuth' : 'serverAuth',
    principal: `${plan.principal}${admins.has(plan.principal) ? ' (ADMIN)' : ''}`,
    'admins from': source,
    lifetime: `${flags.days} days, until ${notAfter.toISOString()}`,
    'requested (ignored)': [requested.commonName !== undefined ? `CN=${requested.commonName}` : '', ...formatSans(requested.sans)].filter((n) => n !== '').join(', ') || '-',
  });
  if (!flags.yes) {
    if (!io.confirm) throw new Error('refusing to sign without confirmation: stdin is not a terminal; review the above and pass --yes');
    if (!(await io.confirm('sign this certificate? [y/N] '))) {
      io.err('not signed\n');
      return PKI_EXIT.FAILED;
    }
  }
  const certPem = await signCsr({ ca, csrPem, profile, commonName: plan.commonName, ...plan.sans, validityDays: flags.days });
  await writeFileAtomic(resolve(flags.out), certPem, CERTIFICATE_MODE);
  io.out(`signed ${profile} certificate ${resolve(flags.out)}\n`);
  printRecord(io, formatInfo(describeCertificate(certPem), io.now()));
  return PKI_EXIT.OK;
}

// ---- registration -----------------------------------------------------------------

/** Adds `pki init-ca|issue|renew|revoke|crl|sign-csr|export-p12|status` to a debvisorctl-style program. */
export function registerPkiCommands(program: Command, io: PkiCliIo = processIo): void {
  const pki = program
    .command('pki')
    .description('run the internal CA: create it, issue, renew and revoke certificates, check expiry (offline, on files)')
    .addHelpText(
      'after',
      `\nFiles in --dir (default ${DEFAULT_PKI_DIR}): ca-cert.pem, ca-key.pem (0600), crl.pem, and\n` +
        '<name>-cert.pem / <name>-key.pem (0600) per issued certificate. Keys are written atomically;\n' +
        'an existing CA is never overwritten. CA rollover: append the new CA to the bundle the daemon\n' +
        'reads (tls.ca_file), reload, re-issue every certificate from the new CA, then drop the old CA.',
    );
  const dirOption = () => new Option('--dir <dir>', 'CA directory').default(DEFAULT_PKI_DIR);
  const commands: Command[] = [pki];
  const action =
    <A extends unknown[]>(fn: (...args: A) => Promise<number | undefined>) =>
    async (...args: A): Promise<void> => {
      let code: number;
      try {
        code = (await fn(...args)) ?? PKI_EXIT.OK;
      } catch (err) {
        io.err(`debvisorctl pki: ${err instanceof Error ? err.message : String(err)}\n`);
        code = err instanceof UsageError ? PKI_EXIT.USAGE : PKI_EXIT.FAILED;
      }
      io.exit(code);
    };

  commands.push(
    pki
      .command('init-ca')
      .description('create a new CA (and an empty CRL); refuses if a CA already exists in --dir')
      .addOption(dirOption())
      .option('--cn <name>', 'CA common name', DEFAULT_CA_COMMON_NAME)
      .addOption(new Option('--algorithm <alg>', 'CA key algorithm').choices(['ecdsa-p256', 'rsa-4096']).default('ecdsa-p256'))
      .option('--days <n>', 'CA validity in days', positiveNumber('--days'), 3650)
      .action(
        action(async (flags: DirFlags & { cn: string; algorithm: CaKeyAlgorithm; days: number }) => {
          const { paths, ca } = await initCa(flags.dir, { commonName: flags.cn, algorithm: flags.algorithm, validityDays: flags.days });
          io.out(`created CA in ${paths.dir}\n`);
          printRecord(io, { 'ca-cert': paths.caCert, 'ca-key': `${paths.caKey} (0600 — keep it offline if you can)`, crl: paths.crl, ...formatInfo(describeCertificate(ca.certPem), io.now()) });
          return PKI_EXIT.OK;
        }),
      ),
  );

  commands.push(
    pki
      .command('issue')
      .description('issue a server or client certificate with a fresh key, signed by the CA in --dir')
      .argument('<profile>', 'server (EKU serverAuth) or client (EKU clientAuth)')
      .requiredOption('--cn <name>', 'subject common name')
      .option('--san <san>', 'subject alternative name, repeatable: DNS:host, IP:addr, URI:spiffe://debvisor/panel/web-panel', collect, [])
      .option('--days <n>', 'validity in days', positiveNumber('--days'), 365)
      .addOption(dirOption())
      .option('--out-dir <dir>', 'where to write <name>-cert.pem and <name>-key.pem (default: --dir)')
      .option('--name <name>', 'file name prefix (default: the profile, "server" or "client")')
      .option('--force', 'replace existing files of that name')
      .option('--p12', 'also write <name>.p12 (PKCS#12 for browsers; password from --password-file or DEBVISORCTL_P12_PASSWORD)')
      .option('--password-file <file>', 'PKCS#12 password (first line)')
      .option('--owner <user[:group]>', 'chown the written files to this user (the daemon\'s: debvisor), so it can read its key')
      .addHelpText('after', '\nExample: debvisorctl pki issue client --cn web-panel --san URI:spiffe://debvisor/panel/web-panel --name web-panel')
      .action(
        action(
          async (
            profile: string,
            flags: DirFlags & {
              cn: string;
              san: string[];
              days: number;
              outDir?: string;
              name?: string;
              force?: boolean;
              p12?: boolean;
              passwordFile?: string;
              owner?: string;
            },
          ) => {
            if (profile !== 'server' && profile !== 'client') throw new UsageError(`profile must be "server" or "client", got "${profile}"`);
            const name = flags.name ?? profile;
            if (!/^[A-Za-z0-9._-]+$/.test(name)) throw new UsageError(`--name may only hold letters, digits, ".", "_" and "-"`);
            let sans;
            try {
              sans = parseSanList(flags.san);
            } catch (err) {
              throw new UsageError((err as Error).message);
            }
            if (profile === 'client' && sans.uris.length > 1) throw new UsageError('a client certificate carries exactly one URI SAN, its principal (SPIFFE); the daemon refuses more');
            if (profile === 'client') refuseReservedPrincipal(principalOfNames({ ...sans, commonName: flags.cn }));
            const password = flags.p12 ? await p12Password(flags.passwordFile, io) : undefined;
            const owner = flags.owner !== undefined ? await resolveOwner(flags.owner) : undefined;
            const paths = caDirectory(flags.dir);
            const outDir = resolve(flags.outDir ?? paths.dir);
            if (flags.outDir !== undefined) await requireDirectory(outDir, '--out-dir');
            const certFile = join(outDir, `${name}-cert.pem`);
            const keyFile = join(outDir, `${name}-key.pem`);
            if (!flags.force) {
              for (const file of [certFile, keyFile]) if (await exists(file)) throw new Error(`${file} exists; use --force to replace it, or --name`);
            }
            const ca = await loadCa(paths.caCert, paths.caKey);
            const pair = await issueCertificate({ ca, profile, commonName: flags.cn, ...sans, validityDays: flags.days });
            await writeLeafFiles(certFile, keyFile, pair);
            if (owner) for (const file of [keyFile, certFile]) await chown(file, owner.uid, owner.gid);
            io.out(`issued ${profile} certificate\n`);
            printRecord(io, { cert: certFile, key: `${keyFile} (0600)`, ...formatInfo(describeCertificate(pair.certPem), io.now()) });
            if (password !== undefined) {
              const p12File = join(outDir, `${name}.p12`);
              await writeFileAtomic(p12File, exportPkcs12({ ...pair, caPem: ca.certPem, password }), PRIVATE_KEY_MODE);
              if (owner) await chown(p12File, owner.uid, owner.gid);
              io.out(`pkcs12:     ${p12File} (0600)\n`);
            }
            return PKI_EXIT.OK;
          },
        ),
      ),
  );

  commands.push(
    pki
      .command('renew')
      .description('re-issue a certificate with the same subject, SANs and profile and a fresh key')
      .argument('[name]', 'renew <dir>/<name>-cert.pem and -key.pem', 'server')
      .addOption(dirOption())
      .option('--cert-file <file>', 'certificate to renew (instead of <name> in --dir)')
      .option('--key-file <file>', 'where its new key goes (default: the -cert.pem name with -key.pem)')
      .option('--days <n>', 'validity in days (default: the old certificate\'s lifetime)', positiveNumber('--days'))
      .addHelpText('after', '\nThe running daemon picks up the new files by itself (or on systemctl reload).')
      .action(
        action(async (name: string, flags: DirFlags & { certFile?: string; keyFile?: string; days?: number }) => {
          const paths = caDirectory(flags.dir);
          const certFile = resolve(flags.certFile ?? join(paths.dir, `${name}-cert.pem`));
          const keyFile = resolve(flags.keyFile ?? (certFile.endsWith('-cert.pem') ? certFile.replace(/-cert\.pem$/, '-key.pem') : `${certFile}.key`));
          const certPem = await readText(certFile, 'certificate');
          const ca = await loadCa(paths.caCert, paths.caKey);
          const { pair, previous, next } = await renewCertificate({ ca, certPem, ...(flags.days !== undefined && { validityDays: flags.days }) });
          await writeLeafFiles(certFile, keyFile, pair);
          io.out(`renewed ${certFile} (was serial ${previous.serialNumber}, expiring ${previous.notAfter.toISOString()})\n`);
          printRecord(io, { cert: certFile, key: `${keyFile} (0600)`, ...formatInfo(next, io.now()) });
          return PKI_EXIT.OK;
        }),
      ),
  );

  commands.push(
    pki
      .command('revoke')
      .description('add certificates to the CRL (re-signed with the next CRL number)')
      .option('--serial <hex>', 'serial number (hex, colons allowed), repeatable', collect, [])
      .option('--cert-file <file>', 'revoke this certificate file, repeatable', collect, [])
      .addOption(new Option('--reason <reason>', 'revocation reason').choices([...REVOCATION_REASONS]).default('unspecified'))
      .addOption(dirOption())
      .option('--crl <file>', 'CRL file (default: <dir>/crl.pem)')
      .option('--days <n>', 'CRL nextUpdate in days', positiveNumber('--days'), 30)
      .addHelpText('after', '\nThe daemon reads the CRL named by auth.crl_file on start and on SIGHUP (systemctl reload debvisor-rpcd).')
      .action(
        action(async (flags: DirFlags & { serial: string[]; certFile: string[]; reason: RevocationReason; crl?: string; days: number }) => {
          const serials = [...flags.serial];
          for (const file of flags.certFile) serials.push(describeCertificate(await readText(file, 'certificate')).serialNumber);
          if (serials.length === 0) throw new UsageError('nothing to revoke: give --serial or --cert-file');
          const paths = caDirectory(flags.dir);
          const crlFile = resolve(flags.crl ?? paths.crl);
          const ca = await loadCa(paths.caCert, paths.caKey);
          const crlPem = (await exists(crlFile)) ? await readText(crlFile, 'CRL') : undefined;
          const result = await revokeSerials({ ca, crlPem, serials, reason: flags.reason, validityDays: flags.days });
          await writeFileAtomic(crlFile, result.crlPem, CERTIFICATE_MODE);
          for (const serial of result.added) io.out(`revoked ${serial}\n`);
          for (const serial of result.alreadyRevoked) io.out(`already revoked ${serial}\n`);
          io.out(`CRL ${crlFile}: number ${String(result.info.crlNumber)}, ${result.info.entries.length} revoked, next update ${result.info.nextUpdate?.toISOString() ?? '-'}\n`);
          io.out('reload the daemon to apply it: systemctl reload debvisor-rpcd\n');
          return PKI_EXIT.OK;
        }),
      ),
  );

  commands.push(
    pki
      .command('crl')
      .description('print the CRL (signature checked against the CA); --update re-signs it with fresh dates')
      .addOption(dirOption())
      .option('--crl <file>', 'CRL file (default: <dir>/crl.pem)')
      .option('--update', 're-sign with a new thisUpdate/nextUpdate and the next CRL number (creates it if missing)')
      .option('--days <n>', 'with --update: nextUpdate in days', positiveNumber('--days'), 30)
      .addHelpText('after', '\nRun `crl --update` from a timer well before nextUpdate if your clients enforce it.')
      .action(
        action(async (flags: DirFlags & { crl?: string; update?: boolean; days: number }) => {
          const paths = caDirectory(flags.dir);
          const crlFile = resolve(flags.crl ?? paths.crl);
          let crlPem = (await exists(crlFile)) ? await readText(crlFile, 'CRL') : undefined;
          if (flags.update) {
            const ca = await loadCa(paths.caCert, paths.caKey);
            crlPem = await refreshCrl({ ca, crlPem, validityDays: flags.days });
            await writeFileAtomic(crlFile, crlPem, CERTIFICATE_MODE);
            io.out(`updated ${crlFile}\n`);
          }
          if (crlPem === undefined) throw new Error(`${crlFile} does not exist (create it with --update)`);
          const caPem = await readText(paths.caCert, 'CA certificate');
          const signed = (await Promise.all(splitPemCertificates(caPem).map((pem) => verifyCrl(crlPem, pem)))).some(Boolean);
          const info = parseCrl(crlPem);
          const now = io.now();
          printRecord(io, {
            file: crlFile,
            issuer: info.issuer,
            signature: signed ? `valid (${paths.caCert})` : `NOT signed by a CA in ${paths.caCert}`,
            number: String(info.crlNumber ?? '-'),
            'this update': info.thisUpdate.toISOString(),
            'next update': `${info.nextUpdate?.toISOString() ?? '-'}${info.nextUpdate && info.nextUpdate <= now ? ' (OVERDUE)' : ''}`,
            revoked: String(info.entries.length),
          });
          for (const entry of info.entries) io.out(`  ${entry.serialNumber}  ${entry.revocationDate.toISOString()}  ${entry.reason ?? 'unspecified'}\n`);
          return signed ? PKI_EXIT.OK : PKI_EXIT.FAILED;
        }),
      ),
  );

  commands.push(
    pki
      .command('sign-csr')
      .description('sign a PKCS#10 request for an identity YOU name: only the CSR\'s public key is used, never its subject or SANs')
      .argument('<profile>', 'server or client')
      .requiredOption('--csr <file>', 'the request (PEM); its signature proves the requester holds the key')
      .option('--principal <id>', 'client: the identity the certificate authenticates as, e.g. spiffe://debvisor/ci/runner (becomes the one URI SAN; a non-URI id becomes the CN)')
      .option('--san <san>', 'DNS:, IP: (and, for a server, URI:) names, repeatable; server: at least one', collect, [])
      .option('--cn <name>', 'subject common name (default: the principal\'s last path segment, or the first DNS SAN)')
      .option('--days <n>', 'validity in days', positiveNumber('--days'), 365)
      .requiredOption('--out <file>', 'where to write the certificate')
      .option('-y, --yes', 'sign without asking (needed when stdin is not a terminal)')
      .option('--allow-admin', 'allow signing a bootstrap admin (auth.bootstrap_admins or a default admin binding)')
      .option('-c, --config <file>', 'daemon config naming the bootstrap admins (default: /etc/debvisor/rpcd.yaml if present)')
      .addOption(dirOption())
      .addHelpText(
        'after',
        '\nThe request\'s subject and SANs are shown but ignored: a requester must not choose its own identity.\n' +
          'Example: debvisorctl pki sign-csr client --csr runner.csr --principal spiffe://debvisor/ci/runner --out runner-cert.pem',
      )
      .action(action(async (profile: string, flags: SignCsrFlags) => runSignCsr(profile, flags, io))),
  );

  commands.push(
    pki
      .command('export-p12')
      .description('bundle a client certificate, its key and the CA as PKCS#12 (.p12) for a browser or the web panel')
      .requiredOption('--cert-file <file>', 'certificate (PEM)')
      .requiredOption('--key-file <file>', 'private key (PEM)')
      .option('--ca-file <file>', 'CA certificate(s) to include (default: <dir>/ca-cert.pem if present)')
      .requiredOption('--out <file>', 'the .p12 file to write (0600)')
      .option('--password-file <file>', 'password (first line); or DEBVISORCTL_P12_PASSWORD')
      .option('--name <friendly>', 'name shown by the browser (default: the CN)')
      .option('--legacy', '3DES/SHA-1 encryption for old Windows/macOS importers')
      .addOption(dirOption())
      .action(
        action(async (flags: DirFlags & { certFile: string; keyFile: string; caFile?: string; out: string; passwordFile?: string; name?: string; legacy?: boolean }) => {
          const password = await p12Password(flags.passwordFile, io);
          const caFile = flags.caFile ?? caDirectory(flags.dir).caCert;
          const caPem = flags.caFile || (await exists(caFile)) ? await readText(caFile, 'CA certificate') : undefined;
          const p12 = exportPkcs12({
            certPem: await readText(flags.certFile, 'certificate'),
            keyPem: await readText(flags.keyFile, 'key'),
            password,
            ...(caPem !== undefined && { caPem }),
            ...(flags.name !== undefined && { friendlyName: flags.name }),
            legacy: flags.legacy ?? false,
          });
          await writeFileAtomic(resolve(flags.out), p12, PRIVATE_KEY_MODE);
          io.out(`wrote ${resolve(flags.out)} (0600)\n`);
          return PKI_EXIT.OK;
        }),
      ),
  );

  commands.push(
    pki
      .command('status')
      .description('every configured certificate: subject, SANs, issuer, not-after and days left, flagged when close to expiry')
      .option('-c, --config <file>', 'daemon config to read the certificate paths from (default: /etc/debvisor/rpcd.yaml if present)')
      .option('--dir <dir>', 'also list every *-cert.pem in this directory')
      .option('--cert-file <file>', 'also list this certificate, repeatable', collect, [])
      .option('--warn-days <n>', 'flag certificates with fewer days left (default: tls.renewal.renew_before_days)', positiveNumber('--warn-days'))
      .addHelpText('after', '\nExit status: 0 all ok, 1 something missing, expired or due (usable from a timer), 2 usage error.')
      .action(
        action((flags: StatusFlags, command: Command) => {
          const output = command.optsWithGlobals<{ output?: string }>().output;
          return Promise.resolve(runStatus({ ...flags, ...(output !== undefined && { output }) }, io));
        }),
      ),
  );

  for (const command of commands) {
    command.configureOutput({ writeOut: io.out, writeErr: io.err });
    command.exitOverride((err: CommanderError) => io.exit(err.exitCode === 0 ? 0 : PKI_EXIT.USAGE));
  }
}
