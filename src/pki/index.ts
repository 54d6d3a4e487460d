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
export { signLeaf } from './issue.js';
export { parseSanList, formatSans, type SanKind, type SanLists } from './san.js';
export {
  describeCertificate,
  keyMatchesCertificate,
  publicKeyMatches,
  splitPemCertificates,
  type CertificateInfo,
} from './inspect.js';
export {
  REVOCATION_REASONS,
  createCrl,
  normalizeSerialHex,
  parseCrl,
  refreshCrl,
  revokeSerials,
  verifyCrl,
  type CreateCrlOptions,
  type CrlInfo,
  type RevocationReason,
  type RevokeOptions,
  type RevokeResult,
  type RevokedEntry,
} from './crl.js';
export { createCsr, inspectCsr, signCsr, type CsrInfo, type SignCsrOptions } from './csr.js';
export { exportPkcs12, type Pkcs12Options } from './pkcs12.js';
export {
  CaExistsError,
  caDirectory,
  initCa,
  issuerForKey,
  loadCa,
  renewCertificate,
  writeLeafFiles,
  type CaDirectory,
  type InitCaOptions,
  type RenewOptions,
} from './authority.js';
