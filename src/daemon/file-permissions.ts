// Start-up (and SIGHUP) refuses files whose contents decide who may do what, when
// someone other than the daemon's user (or root) could rewrite them: a group-writable
// CA bundle lets any member add a CA and mint an admin; a writable config can name a
// new bootstrap admin; a writable audit log can be truncated. Private keys must also
// not be readable by others.
import { statSync } from 'node:fs';
import type { Config } from '../config/schema.js';

export class FilePermissionError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(problems.join('; '));
    this.name = 'FilePermissionError';
  }
}

interface SensitiveFile {
  readonly path: string;
  readonly what: string;
  /** A private key or password: others must not read it either. */
  readonly secret: boolean;
}

/** The files of `config` (and the config file itself) that must be safe, when they exist. */
export function sensitiveFiles(config: Config, configFile: string | undefined): SensitiveFile[] {
  const files: (SensitiveFile | false)[] = [
    configFile !== undefined && { path: configFile, what: 'config file', secret: false },
    { path: config.tls.key_file, what: 'server key (tls.key_file)', secret: true },
    { path: config.tls.ca_file, what: 'CA bundle (tls.ca_file)', secret: false },
    config.tls.renewal.mode === 'local-ca' && { path: config.tls.renewal.ca_key_file, what: 'CA key (tls.renewal.ca_key_file)', secret: true },
    config.auth.crl_file !== '' && { path: config.auth.crl_file, what: 'CRL (auth.crl_file)', secret: false },
    { path: config.audit.path, what: 'audit log (audit.path)', secret: false },
    { path: config.audit.hmac_key_file, what: 'audit HMAC key (audit.hmac_key_file)', secret: true },
    config.store.backend === 'etcd' && config.store.etcd.key_file !== '' && { path: config.store.etcd.key_file, what: 'etcd client key (store.etcd.key_file)', secret: true },
    config.store.backend === 'etcd' && config.store.etcd.password_file !== '' && { path: config.store.etcd.password_file, what: 'etcd password file (store.etcd.password_file)', secret: true },
  ];
  return files.filter((file): file is SensitiveFile => file !== false);
}

function octal(mode: number): string {
  return (mode & 0o7777).toString(8).padStart(4, '0');
}

/** Why `file` is unsafe, or undefined. A missing file is not this check's business. */
export function filePermissionProblem(file: SensitiveFile, uid = process.geteuid?.() ?? 0): string | undefined {
  let st;
  try {
    st = statSync(file.path);
  } catch {
    return undefined;
  }
  // Only a regular file's contents can be rewritten: a device's mode is the kernel's (/dev/full is 0666).
  if (!st.isFile()) return undefined;
  if (st.uid !== 0 && st.uid !== uid) {
    return `${file.what} ${file.path} is owned by uid ${st.uid}, neither root nor the daemon's user (uid ${uid}); run chown ${uid === 0 ? 'root' : uid} ${file.path}`;
  }
  const mode = st.mode & 0o7777;
  const loose = mode & (file.secret ? 0o026 : 0o022);
  if (loose !== 0) {
    const rule = file.secret ? 'not writable by group or others, nor readable by others' : 'not writable by group or others';
    const fix = file.secret ? 'chmod 600' : 'chmod go-w';
    return `${file.what} ${file.path} has mode ${octal(mode)}; it must be ${rule}: run ${fix} ${file.path}`;
  }
  return undefined;
}

/** Throws FilePermissionError naming every unsafe file and its mode. */
export function assertSafeFiles(config: Config, configFile: string | undefined): void {
  const problems = sensitiveFiles(config, configFile).flatMap((file) => filePermissionProblem(file) ?? []);
  if (problems.length > 0) throw new FilePermissionError(problems);
}
