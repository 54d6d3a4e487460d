import { x509 } from './x509.js';

const OID_COMMON_NAME = '2.5.4.3';

/**
 * A subject/issuer Name holding just a CommonName.
 *
 * Why JSON form instead of the "CN=..." string form: the string form is
 * parsed, so a CN containing ',', '=' or '+' would silently become several
 * attributes. The JSON form takes the value verbatim.
 */
export function commonNameOnly(commonName: string): x509.Name {
  if (commonName.length === 0 || commonName.length > 64) {
    // RFC 5280 ub-common-name is 64.
    throw new Error(`commonName must be 1..64 characters, got ${commonName.length}`);
  }
  return new x509.Name([{ [OID_COMMON_NAME]: [commonName] }]);
}
