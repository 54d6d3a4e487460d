// Public API of the certificate library.
export type { CaKeyAlgorithm, CertificateProfile, PemPair } from './types.js';
export { createCa, type CreateCaOptions } from './ca.js';
export {
  issueCertificate,
  selfSignedCertificate,
  type ExtendedKeyUsageName,
  type ExtendedKeyUsageOid,
  type IssueCertificateOptions,
  type SelfSignedCertificateOptions,
  type SubjectAltNames,
} from './issue.js';
export { CERTIFICATE_MODE, PRIVATE_KEY_MODE, writeFileAtomic, writeNewFileExclusive } from './files.js';
export {
  DEV_ADMIN_PRINCIPAL,
  DEV_CA_COMMON_NAME,
  ensureDevPki,
  type DevPkiOptions,
  type DevPkiPaths,
} from './dev.js';
export { randomSerialHex } from './serial.js';
