// How a principal appears in audit records: built once per principal and role list, frozen.
import { describe, expect, it } from 'vitest';
import type { Principal } from '../../src/rpc/principal.js';
import { auditPrincipal } from '../../src/audit/principal.js';

const certificate: Principal = {
  id: 'spiffe://debvisor/admin/alice',
  kind: 'certificate',
  certificate: { fingerprintSha256: 'abcdef', serialNumber: '01', notAfter: new Date('2030-01-01T00:00:00Z') },
};

describe('auditPrincipal', () => {
  it('describes certificate and API-key principals', () => {
    expect(auditPrincipal(certificate, ['admin'])).toEqual({ id: certificate.id, kind: 'certificate', roles: ['admin'], cert_fingerprint: 'abcdef' });
    const key: Principal = { id: 'alice', kind: 'api_key', apiKey: { id: 'k1', permissions: [], resourceGlobs: [] } };
    expect(auditPrincipal(key, [])).toEqual({ id: 'alice', kind: 'api_key', roles: [], key_id: 'k1' });
  });

  it('hands out one frozen object per principal and role list, and a new one when the roles change', () => {
    const roles = ['operator'];
    const first = auditPrincipal(certificate, roles);
    expect(Object.isFrozen(first) && Object.isFrozen(first.roles)).toBe(true);
    expect(auditPrincipal(certificate, roles)).toBe(first);
    const rebound = ['admin', 'operator'];
    const second = auditPrincipal(certificate, rebound);
    expect(second).not.toBe(first);
    expect(second.roles).toEqual(['admin', 'operator']);
  });
});
