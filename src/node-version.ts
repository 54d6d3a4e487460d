// The oldest Node.js the daemon and CLI run on. node:sqlite (the embedded store) loads
// without a flag from 22.13 on the 22 line and from 23.4 on the 23 line; older versions
// crash at import with "No such built-in module: node:sqlite". Keep package.json's
// "engines" in step (a unit test compares them).
export const SUPPORTED_NODE = '^22.13.0 || >=23.4.0';

/** True when `version` (e.g. "22.12.0") is older than SUPPORTED_NODE allows. */
export function isUnsupportedNode(version: string): boolean {
  const [major = 0, minor = 0] = version.replace(/^v/, '').split('.').map(Number);
  if (major === 22) return minor < 13;
  if (major === 23) return minor < 4;
  return major < 22;
}

/**
 * Exits with a clear message on an unsupported Node. Entry modules call this before they
 * dynamically import the rest: static imports are hoisted and would crash first.
 */
export function exitOnUnsupportedNode(program: string, version: string = process.versions.node): void {
  if (!isUnsupportedNode(version)) return;
  process.stderr.write(`${program}: Node.js ${version} is too old: it needs Node.js 22.13 or later (23.4 on the 23 line) for node:sqlite without a flag\n`);
  process.exit(1);
}
