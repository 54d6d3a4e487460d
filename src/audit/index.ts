export * from './event.js';
export { AUDIT_CAPS, capString } from './caps.js';
export * from './redact.js';
export * from './log.js';
export * from './verify.js';
export { CHAIN_GENESIS, CHAIN_LINK, type ChainLinkDetails } from './chain.js';
export { localDay, rotatedName } from './files.js';
export { AuditKeyError, loadOrCreateHmacKey, readHmacKeySync } from './key.js';
