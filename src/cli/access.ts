// debvisorctl apikey | role | quota: access administration over AccessService.
import { InvalidArgumentError, type Command } from 'commander';
import { durationFromMs } from '@bufbuild/protobuf/wkt';
import {
  AccessService,
  CreateApiKeyResponseSchema,
  GetQuotaResponseSchema,
  ListApiKeysResponseSchema,
  ListRoleBindingsResponseSchema,
  ListRolesResponseSchema,
  RoleBindingSource,
  RoleSchema,
  RotateApiKeyResponseSchema,
  type ApiKey,
  type ResourceGlob,
  type RoleBinding,
} from '../gen/debvisor/v1/access_pb.js';
import { create } from '@bufbuild/protobuf';
import { QuotaResource, ResourceKind } from '../gen/debvisor/v1/options_pb.js';
import { QUOTA_ENUMS } from '../rpc/quota-dimensions.js';
import { collect, duration, lifeState, when, withService } from './command.js';
import { UsageError } from './exit-codes.js';
import { printJson, printRecord, printTable } from './output.js';


const KINDS = new Map(
  Object.entries(ResourceKind)
    .filter(([name, value]) => typeof value === 'number' && name !== 'UNSPECIFIED')
    .map(([name, value]) => [name.toLowerCase(), value as ResourceKind]),
);

function glob(value: string, previous: { kind: ResourceKind; glob: string }[] = []) {
  const [kind = '', pattern] = value.split('=', 2);
  const kindValue = KINDS.get(kind);
  if (!kindValue || !pattern) throw new InvalidArgumentError(`expected KIND=GLOB with KIND one of ${[...KINDS.keys()].join(', ')}`);
  return [...previous, { kind: kindValue, glob: pattern }];
}

/** How `role bindings` names where a binding comes from. */
const BINDING_SOURCE_NAMES: Record<RoleBindingSource, string> = {
  [RoleBindingSource.UNSPECIFIED]: 'unknown',
  [RoleBindingSource.STORE]: 'store (role bind)',
  [RoleBindingSource.BOOTSTRAP_ADMIN]: 'config (auth.bootstrap_admins)',
  [RoleBindingSource.CONFIG]: 'config (auth.default_bindings)',
};


export function registerAccessCommands(program: Command): void {
  // Connecting, closing and printing failures is withService's.
  const withAccess = withService(program, AccessService);

  const apikey = program.command('apikey').description('API keys for CI pipelines and automation');
  apikey
    .command('create')
    .description('create an API key; its secret is shown once')
    .requiredOption('-p, --permission <perm>', 'permission to grant (repeatable), e.g. storage:snapshot:create', collect)
    .option('--glob <kind=glob>', 'restrict to resources, e.g. pool=ci-* or vm=build-* (repeatable)', glob)
    .option('--cidr <network>', 'allow use only from this network (repeatable), e.g. 10.0.0.0/8', collect)
    .option('--ttl <duration>', 'lifetime, e.g. 30d (default: the daemon default, 90 days)', duration)
    .option('-d, --description <text>', 'what the key is for', '')
    .option('--owner <principal>', 'create for another principal (administrators)')
    .action(
      withAccess(async ({ client, options, flags }, opts: { permission: string[]; glob?: { kind: ResourceKind; glob: string }[]; cidr?: string[]; ttl?: number; description: string; owner?: string }) => {
        const response = await client.createApiKey(
          {
            permissions: opts.permission,
            resourceGlobs: opts.glob ?? [],
            allowedCidrs: opts.cidr ?? [],
            description: opts.description,
            owner: opts.owner ?? '',
            ...(opts.ttl ? { ttl: durationFromMs(opts.ttl) } : {}),
          },
          options,
        );
        if (flags.output === 'json') { printJson(CreateApiKeyResponseSchema, response); return; }
        printRecord(keyRecord(response.apiKey));
        process.stdout.write(`\nsecret (shown once; store it now): ${response.secret}\n`);
      }),
    );
  apikey
    .command('list')
    .description('list API keys (your own; administrators see all)')
    .option('--principal <id>', 'keys of this principal')
    .option('-a, --all', 'include revoked and expired keys')
    .action(
      withAccess(async ({ client, options, flags }, opts: { principal?: string; all?: boolean }) => {
        const response = await client.listApiKeys({ principal: opts.principal ?? '', includeInactive: opts.all ?? false, pageSize: 1000 }, options);
        if (flags.output === 'json') { printJson(ListApiKeysResponseSchema, response); return; }
        const rotated = rotatedKeyIds(response.apiKeys);
        printTable(
          ['id', 'owner', 'permissions', 'expires', 'state', 'description'],
          response.apiKeys.map((key) => [key.keyId, key.owner, key.permissions.join('\n'), when(key.expireTime), keyState(key, rotated), key.description]),
        );
      }),
    );
  apikey
    .command('revoke <key-id>')
    .description('revoke an API key at once')
    .action(
      withAccess(async ({ client, options }, keyId: string) => {
        await client.revokeApiKey({ keyId }, options);
        process.stdout.write(`revoked ${keyId}\n`);
      }),
    );
  apikey
    .command('rotate <key-id>')
    .description('issue a replacement key; the old one keeps working for the overlap')
    .option('--overlap <duration>', 'how long the old key keeps working, e.g. 1h', duration)
    .action(
      withAccess(async ({ client, options, flags }, keyId: string, opts: { overlap?: number }) => {
        const response = await client.rotateApiKey({ keyId, ...(opts.overlap ? { overlap: durationFromMs(opts.overlap) } : {}) }, options);
        if (flags.output === 'json') { printJson(RotateApiKeyResponseSchema, response); return; }
        printRecord({ ...keyRecord(response.apiKey), 'replaces': response.oldApiKey?.keyId ?? keyId, 'old key expires': when(response.oldApiKey?.expireTime) });
        process.stdout.write(`\nsecret (shown once; store it now): ${response.secret}\n`);
      }),
    );

  const role = program.command('role').description('roles and role bindings');
  role
    .command('list')
    .description('list built-in and custom roles')
    .action(
      withAccess(async ({ client, options, flags }) => {
        const response = await client.listRoles({ pageSize: 1000 }, options);
        if (flags.output === 'json') { printJson(ListRolesResponseSchema, response); return; }
        printTable(
          ['role', 'built-in', 'permissions', 'deny', 'scope'],
          response.roles.map((r) => [r.name, r.builtin ? 'yes' : 'no', r.permissions.join('\n'), r.denyPermissions.join('\n'), globsText(r.resourceGlobs, '\n')]),
        );
      }),
    );
  role
    .command('get <name>')
    .description('one role: its permissions, denies and scope')
    .action(
      withAccess(async ({ client, options, flags }, name: string) => {
        const found = (await client.listRoles({ pageSize: 1000 }, options)).roles.find((r) => r.name === name);
        if (!found) throw new Error(`no role named "${name}"`);
        if (flags.output === 'json') { printJson(RoleSchema, found); return; }
        printRecord({
          role: found.name,
          'built-in': found.builtin ? 'yes' : 'no',
          description: found.description,
          permissions: found.permissions.join(' '),
          deny: found.denyPermissions.join(' '),
          scope: found.resourceGlobs.length ? globsText(found.resourceGlobs, ' ') : 'none (grants apply to every resource)',
        });
      }),
    );
  role
    .command('put <name>')
    .description('create or replace a custom role')
    .requiredOption('-p, --permission <perm>', 'permission granted (repeatable)', collect)
    .option('--deny <perm>', 'permission denied even if another role grants it (repeatable)', collect)
    .option('--resource-glob <kind=glob>', 'grant only on resources of this kind matching the glob, e.g. user=ci-* (repeatable; denies are never scoped)', glob)
    .option('-d, --description <text>', 'what the role is for', '')
    .action(
      withAccess(async ({ client, options }, name: string, opts: { permission: string[]; deny?: string[]; resourceGlob?: { kind: ResourceKind; glob: string }[]; description: string }) => {
        const response = await client.putRole(
          { role: { name, description: opts.description, permissions: opts.permission, denyPermissions: opts.deny ?? [], resourceGlobs: opts.resourceGlob ?? [] } },
          options,
        );
        process.stdout.write(`${response.created ? 'created' : 'updated'} role ${name}\n`);
      }),
    );
  role
    .command('delete <name>')
    .description('delete a custom role and its bindings')
    .action(
      withAccess(async ({ client, options }, name: string) => {
        const response = await client.deleteRole({ roleName: name }, options);
        process.stdout.write(`deleted role ${name} (${response.removedBindings} bindings removed)\n`);
      }),
    );
  role
    .command('bind <principal> <role>')
    .description('grant a role to a principal: a certificate identity or key owner, user:<name> or group:<name> (impersonated users)')
    .action(
      withAccess(async ({ client, options }, principal: string, roleName: string) => {
        await client.bindRole({ principal, roleName }, options);
        process.stdout.write(`bound ${roleName} to ${principal}\n`);
      }),
    );
  role
    .command('unbind <principal> <role>')
    .description('take a role away from a principal')
    .action(
      withAccess(async ({ client, options }, principal: string, roleName: string) => {
        const response = await client.unbindRole({ principal, roleName }, options);
        process.stdout.write(response.removed ? `unbound ${roleName} from ${principal}\n` : `${principal} did not have ${roleName}\n`);
      }),
    );

  role
    .command('bindings')
    .description('who holds which role, from the config file and from the store (e.g. --role admin: who is admin?)')
    .option('--principal <id>', 'only bindings of this principal')
    .option('--role <name>', 'only bindings of this role')
    .action(
      withAccess(async ({ client, options, flags }, opts: { principal?: string; role?: string }) => {
        const filter = { principal: opts.principal ?? '', roleName: opts.role ?? '', pageSize: 1000 };
        const bindings: RoleBinding[] = [];
        let pageToken = '';
        do {
          const response = await client.listRoleBindings({ ...filter, pageToken }, options);
          bindings.push(...response.bindings);
          pageToken = response.nextPageToken;
        } while (pageToken);
        if (flags.output === 'json') { printJson(ListRoleBindingsResponseSchema, create(ListRoleBindingsResponseSchema, { bindings })); return; }
        printTable(['principal', 'role', 'source'], bindings.map((b) => [b.principal, b.roleName, BINDING_SOURCE_NAMES[b.source]]));
      }),
    );

  const quota = program.command('quota').description('per-principal quotas');
  quota
    .command('get [principal]')
    .description('limits and usage (default: your own)')
    .action(
      withAccess(async ({ client, options, flags }, principal?: string) => {
        const response = await client.getQuota({ principal: principal ?? '' }, options);
        if (flags.output === 'json') { printJson(GetQuotaResponseSchema, response); return; }
        printTable(
          ['resource', 'used', 'limit'],
          response.quotas.map((q) => [QuotaResource[q.resource].toLowerCase(), String(q.used), q.unlimited ? 'unlimited' : String(q.limit)]),
        );
      }),
    );
  quota
    .command('recompute <principal>')
    .description('recount usage from what exists (repair); prints usage before and after')
    .action(
      withAccess(async ({ client, options }, principal: string) => {
        const response = await client.recomputeQuota({ principal }, options);
        const used = (list: typeof response.before, resource: QuotaResource) => String(list.find((q) => q.resource === resource)?.used ?? 0n);
        printTable(
          ['resource', 'used before', 'used after'],
          response.after.map((q) => [QuotaResource[q.resource].toLowerCase() + (response.notRecounted.includes(q.resource) ? ' (no source yet)' : ''), used(response.before, q.resource), used(response.after, q.resource)]),
        );
      }),
    );
  quota
    .command('set <principal> <resource> <limit>')
    .description(`set a limit; resource is one of ${[...QUOTA_ENUMS.keys()].join(', ')}; limit a number or "unlimited"`)
    .action(
      withAccess(async ({ client, options }, principal: string, resource: string, limit: string) => {
        const resourceValue = QUOTA_ENUMS.get(resource);
        if (resourceValue === undefined) throw new UsageError(`unknown quota resource "${resource}"; one of ${[...QUOTA_ENUMS.keys()].join(', ')}`);
        const unlimited = limit === 'unlimited';
        if (!unlimited && !/^\d+$/.test(limit)) throw new UsageError(`limit must be a whole number or "unlimited", not "${limit}"`);
        await client.setQuota({ principal, resource: resourceValue, limit: unlimited ? 0n : BigInt(limit), unlimited }, options);
        process.stdout.write(`set ${resource} limit of ${principal} to ${limit}\n`);
      }),
    );
}

/** Resource globs as the KIND=GLOB the command line takes. */
function globsText(globs: readonly ResourceGlob[], separator: string): string {
  return globs.map((g) => `${ResourceKind[g.kind].toLowerCase()}=${g.glob}`).join(separator);
}

/** Ids of the keys that were rotated: each replacement names the key it replaced. */
export function rotatedKeyIds(keys: readonly ApiKey[]): Set<string> {
  return new Set(keys.map((key) => key.rotatedFrom).filter((id) => id !== ''));
}

/** "active (rotated)" marks the OLD key of a rotation, still working for the overlap; its replacement is plainly active. */
export function keyState(key: ApiKey, rotated: ReadonlySet<string>): string {
  const state = lifeState(key);
  return state === 'active' && rotated.has(key.keyId) ? 'active (rotated)' : state;
}

function keyRecord(key: ApiKey | undefined): Record<string, string> {
  if (!key) return {};
  return {
    id: key.keyId,
    owner: key.owner,
    permissions: key.permissions.join(' '),
    ...(key.resourceGlobs.length ? { scope: globsText(key.resourceGlobs, ' ') } : {}),
    ...(key.allowedCidrs.length ? { networks: key.allowedCidrs.join(' ') } : {}),
    expires: when(key.expireTime),
  };
}

