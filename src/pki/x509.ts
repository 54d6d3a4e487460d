// Single entry point to @peculiar/x509 for this package.
//
// Why: the library needs (1) a Reflect metadata polyfill loaded before it and
// (2) a WebCrypto provider registered. Every pki module imports x509 from
// here so both are guaranteed, in the right order, exactly once.
// tsyringe, inside @peculiar/x509, throws at import without a Reflect metadata polyfill.
import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto);

/** Node's WebCrypto; passed explicitly so a foreign provider can't sneak in. */
export const nodeCrypto: webcrypto.Crypto = webcrypto;

export { x509 };
