// Reads the YAML file, applies DEBVISOR_RPCD_* overrides and validates with zod.
// Every error names where the bad value came from, the key path and what was expected.
import { readFileSync } from 'node:fs';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import { configSchema, type Config } from './schema.js';

export const DEFAULT_CONFIG_PATH = '/etc/debvisor/rpcd.yaml';
export const ENV_PREFIX = 'DEBVISOR_RPCD_';

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join('\n'));
    this.name = 'ConfigError';
  }
}

type Leaf = 'string' | 'number' | 'boolean' | 'string[]';

/** Strips defaults, optionals and pipes to reach the schema that says what a key holds. */
function core(schema: z.ZodType): z.ZodType {
  let current = schema;
  for (;;) {
    const def = current.def as { type: string; innerType?: z.ZodType; in?: z.ZodType };
    if ((def.type === 'default' || def.type === 'prefault' || def.type === 'optional' || def.type === 'nullable') && def.innerType) {
      current = def.innerType;
    } else if (def.type === 'pipe' && def.in) {
      current = def.in;
    } else {
      return current;
    }
  }
}

/** Every leaf key of the schema with its type, e.g. ['server','listen'] → 'string'. */
export function configLeaves(schema: z.ZodType = configSchema, prefix: string[] = []): Map<string, { path: string[]; leaf: Leaf }> {
  const leaves = new Map<string, { path: string[]; leaf: Leaf }>();
  const inner = core(schema);
  if (inner instanceof z.ZodObject) {
    const shape: Record<string, z.ZodType> = inner.shape;
    for (const [key, child] of Object.entries(shape)) {
      for (const [name, info] of configLeaves(child, [...prefix, key])) leaves.set(name, info);
    }
    return leaves;
  }
  const type = inner.def.type;
  // Maps (e.g. auth.default_bindings) have no single-variable form: file only.
  if (type === 'record') return leaves;
  const leaf: Leaf = type === 'number' ? 'number' : type === 'boolean' ? 'boolean' : type === 'array' ? 'string[]' : 'string';
  leaves.set(ENV_PREFIX + prefix.join('_').toUpperCase(), { path: prefix, leaf });
  return leaves;
}

function convert(raw: string, leaf: Leaf): unknown {
  switch (leaf) {
    case 'number':
      return raw.trim() !== '' && Number.isFinite(Number(raw)) ? Number(raw) : raw;
    case 'boolean':
      return ['true', '1', 'yes'].includes(raw.toLowerCase()) ? true : ['false', '0', 'no'].includes(raw.toLowerCase()) ? false : raw;
    case 'string[]':
      return raw.split(',').map((item) => item.trim()).filter((item) => item !== '');
    case 'string':
      return raw;
  }
}

function setPath(target: Record<string, unknown>, path: string[], value: unknown): void {
  let node = target;
  for (const key of path.slice(0, -1)) {
    const next = node[key];
    if (typeof next !== 'object' || next === null || Array.isArray(next)) node[key] = {};
    node = node[key] as Record<string, unknown>;
  }
  node[path[path.length - 1] as string] = value;
}

function readYaml(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError([`${file}: cannot read config file: ${(err as NodeJS.ErrnoException).code ?? String(err)}`]);
  }
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(doc.errors.map((e) => `${file}: YAML error at line ${e.linePos?.[0].line ?? '?'}: ${e.message.split('\n')[0]}`));
  }
  const value: unknown = doc.toJS();
  if (value === null || value === undefined) return {};
  if (typeof value !== 'object' || Array.isArray(value)) throw new ConfigError([`${file}: expected a mapping of settings at the top level`]);
  return value as Record<string, unknown>;
}

export interface LoadOptions {
  /** Explicit --config path: must exist. Without it the default path is used if present. */
  readonly path?: string | undefined;
  readonly env?: NodeJS.ProcessEnv;
}

export interface LoadedConfig {
  readonly config: Config;
  /** The file read, or undefined when running on defaults and environment only. */
  readonly file: string | undefined;
}

export function loadConfig(options: LoadOptions = {}, exists: (p: string) => boolean = defaultExists): LoadedConfig {
  const env = options.env ?? process.env;
  const file = options.path ?? (exists(DEFAULT_CONFIG_PATH) ? DEFAULT_CONFIG_PATH : undefined);
  const raw = file ? readYaml(file) : {};

  const leaves = configLeaves();
  const fromEnv = new Map<string, string>();
  const problems: string[] = [];
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith(ENV_PREFIX) || value === undefined) continue;
    const info = leaves.get(name);
    if (!info) {
      problems.push(`environment ${name}: unknown setting (see the example config for the ${ENV_PREFIX}* names)`);
      continue;
    }
    setPath(raw, info.path, convert(value, info.leaf));
    fromEnv.set(info.path.join('.'), name);
  }

  const result = configSchema.safeParse(raw);
  if (!result.success) {
    for (const issue of result.error.issues) {
      const key = issue.path.join('.');
      const envName = [...fromEnv].find(([path]) => key === path || key.startsWith(`${path}.`))?.[1];
      const source = envName ? `environment ${envName}` : (file ?? 'defaults');
      const what = issue.code === 'unrecognized_keys' ? `unknown key(s) ${issue.keys.join(', ')}` : issue.message.replace(/^Invalid input: /, '');
      problems.push(`${source}: ${key === '' ? '(top level)' : key}: ${what}`);
    }
  }
  if (problems.length > 0 || !result.success) throw new ConfigError(problems);
  return { config: result.data, file };
}

function defaultExists(path: string): boolean {
  try {
    readFileSync(path);
    return true;
  } catch {
    return false;
  }
}
