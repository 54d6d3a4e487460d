// PKCS#12 (.p12 / .pfx) export of a client identity, for browsers and the web panel.
//
// Why node-forge here, and only here: neither Node nor WebCrypto writes PKCS#12.
// Why we assemble the PFX ourselves from forge's primitives instead of calling
// forge.pkcs12.toPkcs12Asn1: that function only understands RSA keys and
// certificates, and our keys are ECDSA. The key is wrapped as an opaque PKCS#8
// PrivateKeyInfo and the certificates as opaque DER, so any algorithm works.
import { X509Certificate as NodeX509, createHash, createPrivateKey } from 'node:crypto';
import forge from 'node-forge';
import { splitPemCertificates } from './inspect.js';

const { asn1, pki, pkcs12, util } = forge;

export interface Pkcs12Options {
  /** The leaf certificate (PEM). */
  certPem: string;
  /** Its private key (any PEM form Node reads). */
  keyPem: string;
  /** CA certificates to include (PEM, one or more). */
  caPem?: string;
  /** Required: browsers refuse or mishandle password-less PKCS#12 files. */
  password: string;
  /** Shown by the browser's certificate picker. Default: the certificate's CN. */
  friendlyName?: string;
  /**
   * true: PBE-SHA1-3DES and an HMAC-SHA1 MAC, for old Windows/macOS importers.
   * Default false: PBES2 with AES-256-CBC and PBKDF2-HMAC-SHA256, and an HMAC-SHA256
   * MAC (what OpenSSL 3 writes by default).
   */
  legacy?: boolean;
  /** KDF iterations. Default 100 000 (legacy: 2048). */
  iterations?: number;
}

/** Build a DER-encoded PKCS#12 file holding the key, the certificate and the CA chain. */
export function exportPkcs12(opts: Pkcs12Options): Buffer {
  if (opts.password.length === 0) throw new Error('a PKCS#12 password is required');
  const leaf = new NodeX509(opts.certPem);
  if (!leaf.checkPrivateKey(createPrivateKey(opts.keyPem))) throw new Error('the private key does not match the certificate');
  const legacy = opts.legacy ?? false;
  const iterations = opts.iterations ?? (legacy ? 2048 : 100_000);

  const friendlyName = opts.friendlyName ?? (/^CN=(.*)$/m.exec(leaf.subject)?.[1] ?? 'client');
  const localKeyId = createHash('sha1').update(leaf.raw).digest().toString('binary');
  const bagAttrs = asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SET, true, [
    attribute(pki.oids.localKeyId ?? '1.2.840.113549.1.9.21', asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OCTETSTRING, false, localKeyId)),
    attribute(pki.oids.friendlyName ?? '1.2.840.113549.1.9.20', asn1.create(asn1.Class.UNIVERSAL, asn1.Type.BMPSTRING, false, friendlyName)),
  ]);

  const certs = [leaf.raw, ...splitPemCertificates(opts.caPem ?? '').map((pem) => new NodeX509(pem).raw)];
  const certBags = certs.map((der, i) =>
    seq([
      oid(pki.oids.certBag ?? '1.2.840.113549.1.12.10.1.3'),
      explicit0([
        seq([
          oid(pki.oids.x509Certificate ?? '1.2.840.113549.1.9.22.1'),
          explicit0([asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OCTETSTRING, false, der.toString('binary'))]),
        ]),
      ]),
      ...(i === 0 ? [bagAttrs] : []),
    ]),
  );

  const pkcs8 = createPrivateKey(opts.keyPem).export({ type: 'pkcs8', format: 'der' });
  const privateKeyInfo = asn1.fromDer(util.createBuffer(pkcs8.toString('binary')));
  const encrypted = pki.encryptPrivateKeyInfo(
    privateKeyInfo,
    legacy ? opts.password : util.encodeUtf8(opts.password),
    legacy ? { algorithm: '3des', count: iterations, saltSize: 8 } : { algorithm: 'aes256', count: iterations, saltSize: 16, prfAlgorithm: 'sha256' },
  );
  const keyBag = seq([oid(pki.oids.pkcs8ShroudedKeyBag ?? '1.2.840.113549.1.12.10.1.2'), explicit0([encrypted]), bagAttrs]);

  const authSafe = seq([dataContentInfo(seq(certBags)), dataContentInfo(seq([keyBag]))]);
  const authSafeDer = asn1.toDer(authSafe).getBytes();

  // MAC over the AuthenticatedSafe with the PKCS#12 KDF (id 3 = MAC key).
  const md = legacy ? forge.md.sha1.create() : forge.md.sha256.create();
  const macSalt = forge.random.getBytesSync(legacy ? 8 : 16);
  const macKey = pkcs12.generateKey(opts.password, util.createBuffer(macSalt), 3, iterations, legacy ? 20 : 32, md);
  const hmac = forge.hmac.create();
  hmac.start(legacy ? 'sha1' : 'sha256', macKey.getBytes());
  hmac.update(authSafeDer);
  const macData = seq([
    seq([
      seq([oid(legacy ? (pki.oids.sha1 ?? '1.3.14.3.2.26') : (pki.oids.sha256 ?? '2.16.840.1.101.3.4.2.1')), asn1.create(asn1.Class.UNIVERSAL, asn1.Type.NULL, false, '')]),
      asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OCTETSTRING, false, hmac.digest().getBytes()),
    ]),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OCTETSTRING, false, macSalt),
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.INTEGER, false, asn1.integerToDer(iterations).getBytes()),
  ]);

  const pfx = seq([
    asn1.create(asn1.Class.UNIVERSAL, asn1.Type.INTEGER, false, asn1.integerToDer(3).getBytes()),
    seq([
      oid(pki.oids.data ?? '1.2.840.113549.1.7.1'),
      explicit0([asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OCTETSTRING, false, authSafeDer)]),
    ]),
    macData,
  ]);
  return Buffer.from(asn1.toDer(pfx).getBytes(), 'binary');
}

function seq(items: forge.asn1.Asn1[]): forge.asn1.Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SEQUENCE, true, items);
}

function oid(dotted: string): forge.asn1.Asn1 {
  return asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OID, false, asn1.oidToDer(dotted).getBytes());
}

function explicit0(items: forge.asn1.Asn1[]): forge.asn1.Asn1 {
  return asn1.create(asn1.Class.CONTEXT_SPECIFIC, asn1.Type.NONE, true, items);
}

function attribute(type: string, value: forge.asn1.Asn1): forge.asn1.Asn1 {
  return seq([oid(type), asn1.create(asn1.Class.UNIVERSAL, asn1.Type.SET, true, [value])]);
}

/** PKCS#7 ContentInfo of type data wrapping DER-encoded SafeContents. */
function dataContentInfo(safeContents: forge.asn1.Asn1): forge.asn1.Asn1 {
  return seq([
    oid(pki.oids.data ?? '1.2.840.113549.1.7.1'),
    explicit0([asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OCTETSTRING, false, asn1.toDer(safeContents).getBytes())]),
  ]);
}
