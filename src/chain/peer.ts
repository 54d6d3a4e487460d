// The verified client certificate of a call's connection, read once per connection.
//
// grpc-js's getAuthContext() calls TLSSocket.getPeerCertificate() on every call, which
// builds the whole certificate object (subject, fingerprints, public key, raw DER) anew:
// ~70 µs per call, the largest single cost of the chain. A certificate cannot change
// during a connection: HTTP/2 forbids TLS renegotiation and Node's Http2Session disables
// it on its socket, and TLS 1.3 has none. So it is cached per HTTP/2 session, keyed by
// that session object in a WeakMap: the entry dies with the connection, and a call only
// ever sees the certificate of the connection it arrived on.
//
// The session is reached through grpc-js 1.14 internals (the base call's `stream`), so
// everything not shaped as expected falls back to getAuthContext(), which is exactly
// what this replicates: a certificate only if the socket is TLS, `authorized` (verified
// against the CA bundle at the handshake), and a certificate was presented.
import { TLSSocket, type PeerCertificate } from 'node:tls';
import type { ServerInterceptingCallInterface } from '@grpc/grpc-js';

interface Link {
  readonly nextCall?: unknown;
  readonly stream?: { readonly session?: object & { readonly socket?: unknown } };
}

const bySession = new WeakMap<object, PeerCertificate | null>();

/** The HTTP/2 session (one per connection) a call arrived on, if grpc-js's internals are as expected. */
export function sessionOf(call: unknown): (object & { readonly socket?: unknown }) | undefined {
  let current = call as Link | undefined;
  for (let depth = 0; current && !current.stream && depth < 32; depth++) current = current.nextCall as Link | undefined;
  const session = current?.stream?.session;
  return typeof session === 'object' ? session : undefined;
}

/** What `call.getAuthContext().sslPeerCertificate` returns, computed once per connection. */
export function peerCertificateOf(call: ServerInterceptingCallInterface, session = sessionOf(call)): PeerCertificate | undefined {
  const socket = session?.socket;
  if (!session || !(socket instanceof TLSSocket)) return call.getAuthContext().sslPeerCertificate;
  // Checked per call, as grpc-js does (it is a plain property, set at the handshake).
  if (!socket.authorized) return undefined;
  let peer = bySession.get(session);
  if (peer === undefined) {
    // An empty object when the peer presented no certificate (the typings say otherwise).
    const certificate = socket.getPeerCertificate() as Partial<PeerCertificate>;
    peer = certificate.raw ? (certificate as PeerCertificate) : null;
    bySession.set(session, peer);
  }
  return peer ?? undefined;
}
