// What a call knows about its connection, worked out once per connection.
//
// grpc-js recomputes these on every call: getAuthContext() calls
// TLSSocket.getPeerCertificate(), which builds the whole certificate object (subject,
// fingerprints, public key, raw DER) anew, ~70 µs, and getPeer() formats the socket's
// address, a trip into C++ each time. None of it can change during a connection: HTTP/2
// forbids TLS renegotiation and Node's Http2Session disables it on its socket, TLS 1.3 has
// none, and a socket keeps its addresses. So it is kept per HTTP/2 session, keyed by that
// session object in a WeakMap: the entry dies with the connection, and a call only ever
// sees the connection it arrived on.
//
// The session is reached through grpc-js 1.14 internals (the private `nextCall` links down to
// the base call and its private `stream`): the one place the daemon reads grpc-js internals,
// because the public getAuthContext() costs every call ~70 µs. Anything not shaped as
// expected falls back to grpc-js's own per-call methods, which is exactly what this
// replicates: a certificate only if the socket is TLS, `authorized` (verified against the CA
// bundle at the handshake), and a certificate was presented. The fallback is correct but
// slow, so test/chain/peer.test.ts fails if a real TLS call does not take the fast path.
import { TLSSocket, type PeerCertificate } from 'node:tls';
import type { ServerInterceptingCallInterface } from '@grpc/grpc-js';

/** One client connection, as the chain sees it. */
export interface Connection {
  /** "ip:port", as grpc-js's getPeer() reports it. */
  readonly peer: string;
  /** The remote address alone, or "unknown". */
  readonly ip: string;
  /** The client certificate TLS verified at the handshake; undefined if none was presented or it failed. */
  readonly certificate: PeerCertificate | undefined;
  /** The HTTP/2 session: lives exactly as long as the connection (a WeakMap key). Undefined on the fallback path. */
  readonly session: (object & { readonly socket?: unknown }) | undefined;
}

interface Link {
  readonly nextCall?: unknown;
  readonly stream?: { readonly session?: object & { readonly socket?: unknown } };
}

const bySession = new WeakMap<object, Connection>();

/** The HTTP/2 session (one per connection) a call arrived on, if grpc-js's internals are as expected. */
function sessionOf(call: unknown): (object & { readonly socket?: unknown }) | undefined {
  let current = call as Link | undefined;
  for (let depth = 0; current && !current.stream && depth < 32; depth++) current = current.nextCall as Link | undefined;
  const session = current?.stream?.session;
  return typeof session === 'object' ? session : undefined;
}

/** Per call, through grpc-js's public methods: only when its internals are not as expected. */
function uncached(call: ServerInterceptingCallInterface, session: Connection['session']): Connection {
  return {
    peer: call.getPeer(),
    ip: call.getConnectionInfo().remoteAddress ?? 'unknown',
    certificate: call.getAuthContext().sslPeerCertificate,
    session,
  };
}

/** The connection a call arrived on: computed on its first call, then one WeakMap lookup. */
export function connectionOf(call: ServerInterceptingCallInterface): Connection {
  const session = sessionOf(call);
  if (!session) return uncached(call, undefined);
  const known = bySession.get(session);
  if (known) return known;
  const socket = session.socket;
  // Only a connected TLS socket past its handshake is worth remembering.
  // remoteAddress is undefined once the socket is gone (the typings say otherwise).
  const ip = (socket as { readonly remoteAddress?: string } | undefined)?.remoteAddress;
  if (!(socket instanceof TLSSocket) || ip === undefined) return uncached(call, session);
  let certificate: PeerCertificate | undefined;
  if (socket.authorized) {
    // An empty object when the peer presented no certificate (the typings say otherwise).
    const presented = socket.getPeerCertificate() as Partial<PeerCertificate>;
    certificate = presented.raw ? (presented as PeerCertificate) : undefined;
  }
  const connection: Connection = { peer: socket.remotePort ? `${ip}:${socket.remotePort}` : ip, ip, certificate, session };
  bySession.set(session, connection);
  return connection;
}

/** Whether `connection` came from the per-session cache (the fast path), not from the per-call fallback. */
export function isCachedConnection(connection: Connection): boolean {
  return connection.session !== undefined && bySession.get(connection.session) === connection;
}
