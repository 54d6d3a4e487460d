// The names of the resources a mutating request targets, checked before its request_id is
// looked up: a kept reply is returned only for a request whose names would pass validation
// ("validation always runs first"), and an invalid one is refused naming its field, not the
// request_id. These checks are the handlers' own validators, or looser ones where the handler
// picks a stricter rule per backend; the handler still applies its own after this.
import type { Message } from '@bufbuild/protobuf';
import type { CompiledPolicy } from '../rpc/policy.js';
import { validateHostname, validateText, validateVgName, validateVmName } from '../backends/validate.js';
import { MAX_RESOURCE_NAME_BYTES } from '../chain/bounds.js';

type NameCheck = (value: string, field: string) => unknown;

/** Any other kind (principal, role, API key, operation): text that names something, no control characters. */
const anyName: NameCheck = (value, field) => validateText(value, field, MAX_RESOURCE_NAME_BYTES);

const CHECKS: Readonly<Record<string, NameCheck>> = {
  vm: validateVmName,
  node: validateHostname,
  // LVM's name characters include Ceph's: the storage handler applies its backend's own rule.
  pool: validateVgName,
  volume: validateVgName,
};

/** Throws INVALID_ARGUMENT naming the first target field whose (non-empty) name is invalid. */
export function validateTargetNames(policy: CompiledPolicy, request: Message): void {
  for (const target of policy.targets) {
    const name = policy.targetName(request, target);
    if (name === '') continue;
    (CHECKS[target.kind] ?? anyName)(name, target.path);
  }
}
