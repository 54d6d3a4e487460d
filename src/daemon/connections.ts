// The daemon's own gRPC listener: it accepts TCP connections, enforces the connection caps,
// runs the TLS handshake under a timeout and hands each secured socket to grpc-js through
// its public connection injector (Server.createConnectionInjector). grpc-js's own bindAsync
// offers none of these limits: an idle TLS connection costs ~70 KB, a half-open handshake
// lasts Node's default 120 s, and nothing caps either per source.
//
// - A connection over the global cap, or over the per-source cap of its remote address, is
//   closed at accept, before any TLS work.
// - The TLS handshake must finish within `handshakeTimeoutMs` (Node's tls.Server option).
// - A secured connection must complete a call by an authenticated principal: while it has
//   not, and no call is in flight on it, it is closed after `firstCallTimeoutMs` of idleness.
//   Anonymous health checks keep it only while they run.
// - Such a connection is also closed once its calls have been refused by the per-source rate
//   limit REFUSALS_BEFORE_CLOSE times: a flood then pays a new TLS handshake for every few
//   refusals instead of streaming them over one connection (measured: bench/unauth-load.ts).
//   A connection that completed an authenticated call is never closed for this.
// - A connection older than `maxConnectionAgeMs` (±10 %) gets GOAWAY and its calls have
//   `maxConnectionAgeGraceMs` to finish (the config makes that cover the longest call). The
//   listener does this, not grpc-js's max_connection_age, so that it is logged: each connection
//   gets its own injector, whose drain() is grpc-js's public per-connection GOAWAY.
//
// The TLS identity comes from the IdentityProvider, and a published renewal is applied with
// tls.Server#setSecureContext: existing connections keep their handshake, new ones get the
// new pair (the same contract as grpc-js's certificate-provider credentials).
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { createServer as createTlsServer, type Server as TlsServer, type SecureContextOptions, type TLSSocket } from 'node:tls';
import { once } from 'node:events';
import type { ConnectionInjector } from '@grpc/grpc-js';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { Logger } from 'pino';
import { AEAD_CIPHERS, type IdentityProvider, type LoadedIdentity } from '../pki/identity.js';

export interface ConnectionLimits {
  /** Open connections (handshaking or secured) across all sources. */
  readonly maxConnections: number;
  /** Open connections from one remote address. */
  readonly maxConnectionsPerSource: number;
  /** Idle time allowed to a secured connection that has not yet completed an authenticated call. */
  readonly firstCallTimeoutMs: number;
  /** Age (±10 %, so that connections opened together do not all go at once) at which a connection gets GOAWAY. */
  readonly maxConnectionAgeMs: number;
  /** Then its calls have this long to finish; what is left is cancelled. */
  readonly maxConnectionAgeGraceMs: number;
}

export interface ConnectionListenerOptions {
  readonly host: string;
  readonly port: number;
  readonly provider: IdentityProvider;
  /** A grpc-js connection injector (Server.createConnectionInjector) for one connection. */
  readonly newInjector: () => ConnectionInjector;
  readonly handshakeTimeoutMs: number;
  /** Read for every new connection, so a reload changes the caps. */
  readonly limits: () => ConnectionLimits;
  readonly registry: Registry;
  readonly log: Logger;
}

/** The options of the TLS server: the served identity, a requested (not required) client certificate, HTTP/2 only. */
export function secureContextOptions(identity: LoadedIdentity): SecureContextOptions & { requestCert: boolean; rejectUnauthorized: boolean } {
  return {
    ca: identity.ca,
    cert: identity.cert,
    key: identity.key,
    ciphers: AEAD_CIPHERS,
    // Requested but not required: API-key clients use the same port. Verification against
    // `ca` still runs, and only a verified certificate reaches the chain (socket.authorized).
    requestCert: true,
    rejectUnauthorized: false,
  };
}

/** One secured connection that has not yet completed an authenticated call. */
interface Pending {
  /** The accepted TCP socket: the one that can still be closed (reset) once HTTP/2 has taken the TLS socket over. */
  readonly raw: Socket;
  readonly socket: TLSSocket;
  timer: NodeJS.Timeout | undefined;
  inFlight: number;
  /** Calls and messages refused by the per-source rate limit. */
  refusals: number;
}

/** Per-source rate-limit refusals a connection on probation may collect before it is closed. */
export const REFUSALS_BEFORE_CLOSE = 10;

type RefusedReason = 'global_cap' | 'source_cap';
type ClosedReason = 'handshake_timeout' | 'handshake_failed' | 'idle_before_first_call' | 'source_rate_limited' | 'max_age';

/** "ip:port", as the chain's Connection.peer names the same connection (see src/chain/peer.ts). */
function peerKey(address: string | undefined, port: number | undefined): string | undefined {
  return address === undefined || port === undefined ? undefined : `${address}:${port}`;
}

export class ConnectionListener {
  private readonly net: NetServer;
  private readonly tls: TlsServer;
  private readonly perSource = new Map<string, number>();
  /** Accepted TCP sockets, by peer "ip:port". */
  private readonly open = new Map<string, Socket>();
  /** Secured connections still on probation, by peer "ip:port". */
  private readonly pending = new Map<string, Pending>();
  private readonly refused: Counter<'reason'>;
  private readonly closed: Counter<'reason'>;
  private readonly onIdentity: () => void;
  /** Connections handed to grpc-js, by peer "ip:port", with their injectors. */
  private readonly injected = new Map<string, ConnectionInjector>();
  private closing = false;
  private onEmpty: (() => void) | undefined;

  constructor(private readonly options: ConnectionListenerOptions) {
    const { provider, registry } = options;
    this.tls = createTlsServer({
      ...secureContextOptions(provider.identity),
      ALPNProtocols: ['h2'],
      handshakeTimeout: options.handshakeTimeoutMs,
    });
    this.tls.on('secureConnection', (socket: TLSSocket) => this.secured(socket));
    this.tls.on('tlsClientError', (err: NodeJS.ErrnoException, socket: TLSSocket) => {
      this.closed.inc({ reason: err.code === 'ERR_TLS_HANDSHAKE_TIMEOUT' ? 'handshake_timeout' : 'handshake_failed' });
      // With a listener, closing is ours: Node leaves the socket open.
      socket.destroy();
    });
    this.onIdentity = () => this.tls.setSecureContext(secureContextOptions(provider.identity));
    // Every publish ends with the identity listeners (after the CA ones): one update per renewal.
    provider.addIdentityCertificateListener(this.onIdentity);

    this.net = createNetServer((socket) => this.accepted(socket));
    this.net.on('error', (err) => options.log.error({ err }, 'gRPC listener error'));

    const open = this.open;
    new Gauge({
      name: 'rpc_connections_open',
      help: 'Open gRPC connections (in TLS handshake or secured).',
      registers: [registry],
      collect() {
        this.set(open.size);
      },
    });
    this.refused = new Counter({
      name: 'rpc_connections_refused_total',
      help: 'Connections closed at accept: over the global cap or the per-source cap.',
      labelNames: ['reason'] as const,
      registers: [registry],
    });
    this.closed = new Counter({
      name: 'rpc_connections_closed_total',
      help: 'Connections the daemon closed: TLS handshake timed out or failed, idle before completing an authenticated call, flooding past the per-source rate limit before one, or at their maximum age (GOAWAY).',
      labelNames: ['reason'] as const,
      registers: [registry],
    });
    for (const reason of ['global_cap', 'source_cap'] satisfies RefusedReason[]) this.refused.inc({ reason }, 0);
    for (const reason of ['handshake_timeout', 'handshake_failed', 'idle_before_first_call', 'source_rate_limited', 'max_age'] satisfies ClosedReason[]) this.closed.inc({ reason }, 0);
  }

  /** Starts listening; resolves with the bound port. */
  async listen(): Promise<number> {
    this.net.listen({ host: this.options.host, port: this.options.port });
    await Promise.race([
      once(this.net, 'listening'),
      once(this.net, 'error').then(([err]: unknown[]) => {
        throw err instanceof Error ? err : new Error(String(err));
      }),
    ]);
    const address = this.net.address();
    return typeof address === 'object' && address ? address.port : this.options.port;
  }

  /** Stops accepting; open connections stay until drain() or destroyAll(). */
  close(): void {
    this.closing = true;
    this.options.provider.removeIdentityCertificateListener(this.onIdentity);
    this.net.close();
  }

  /**
   * Graceful end: connections still in their handshake are closed, grpc-js's sessions get a
   * GOAWAY and finish their calls; after `graceMs` grpc-js cancels what is left. Resolves
   * true when every connection closed within the grace period. (grpc-js's tryShutdown does
   * not wait for injected connections, so the listener, which owns them, does.)
   */
  drain(graceMs: number): Promise<boolean> {
    this.close();
    for (const [key, raw] of this.open) if (!this.injected.has(key)) raw.destroy();
    for (const injector of this.injected.values()) injector.drain(graceMs);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), graceMs);
      this.onEmpty = () => {
        clearTimeout(timer);
        resolve(true);
      };
      if (this.open.size === 0) this.onEmpty();
    });
  }

  /** Closes every connection still open: the end of a shutdown. */
  destroyAll(): void {
    for (const entry of this.pending.values()) clearTimeout(entry.timer);
    this.pending.clear();
    for (const socket of this.open.values()) socket.destroy();
  }

  /** A call started on the connection `peer`: its idle clock stops while the call runs. */
  callStarted(peer: string): void {
    const entry = this.pending.get(peer);
    if (!entry) return;
    entry.inFlight++;
    clearTimeout(entry.timer);
    entry.timer = undefined;
  }

  /** A call ended on `peer`. One by an authenticated principal ends the probation. */
  callEnded(peer: string, authenticated: boolean): void {
    const entry = this.pending.get(peer);
    if (!entry) return;
    entry.inFlight = Math.max(0, entry.inFlight - 1);
    if (authenticated) {
      clearTimeout(entry.timer);
      this.pending.delete(peer);
    } else if (entry.inFlight === 0) {
      this.arm(peer, entry);
    }
  }

  /** A call or message on `peer` was refused by the per-source rate limit. */
  sourceLimited(peer: string): void {
    const entry = this.pending.get(peer);
    if (!entry || ++entry.refusals < REFUSALS_BEFORE_CLOSE) return;
    this.pending.delete(peer);
    clearTimeout(entry.timer);
    this.closed.inc({ reason: 'source_rate_limited' });
    // After this turn, so the refusal being answered is written first.
    setImmediate(() => this.reset(entry));
  }

  private reset(entry: Pending): void {
    // A reset: once an HTTP/2 session has taken the socket over, neither socket's destroy() closes it.
    entry.raw.resetAndDestroy();
    entry.socket.destroy();
  }

  private accepted(socket: Socket): void {
    const limits = this.options.limits();
    const ip = socket.remoteAddress;
    const key = peerKey(ip, socket.remotePort);
    if (ip === undefined || key === undefined) {
      socket.destroy();
      return;
    }
    const fromSource = this.perSource.get(ip) ?? 0;
    const reason: RefusedReason | undefined =
      this.open.size >= limits.maxConnections ? 'global_cap' : fromSource >= limits.maxConnectionsPerSource ? 'source_cap' : undefined;
    if (reason) {
      this.refused.inc({ reason });
      socket.on('error', () => undefined);
      socket.destroy();
      return;
    }
    this.open.set(key, socket);
    this.perSource.set(ip, fromSource + 1);
    socket.on('error', () => undefined);
    socket.once('close', () => {
      if (this.open.get(key) !== socket) return;
      this.open.delete(key);
      this.injected.get(key)?.destroy();
      this.injected.delete(key);
      const left = (this.perSource.get(ip) ?? 1) - 1;
      if (left > 0) this.perSource.set(ip, left);
      else this.perSource.delete(ip);
      if (this.open.size === 0) this.onEmpty?.();
    });
    // The documented way to hand a socket to a server that does not listen itself.
    this.tls.emit('connection', socket);
  }

  private secured(socket: TLSSocket): void {
    // grpc-js adds its own handler for a secure server's sockets; this one is ours.
    socket.on('error', () => undefined);
    const key = peerKey(socket.remoteAddress, socket.remotePort);
    const raw = key === undefined ? undefined : this.open.get(key);
    if (key === undefined || raw === undefined || this.closing) {
      socket.destroy();
      return;
    }
    const entry: Pending = { raw, socket, timer: undefined, inFlight: 0, refusals: 0 };
    this.pending.set(key, entry);
    socket.once('close', () => {
      const current = this.pending.get(key);
      if (current === entry) {
        clearTimeout(entry.timer);
        this.pending.delete(key);
      }
    });
    this.arm(key, entry);
    const injector = this.options.newInjector();
    this.injected.set(key, injector);
    this.retireAtAge(key, socket, injector);
    injector.injectConnection(socket);
  }

  /** GOAWAY at the connection's age, then its calls have the grace to finish: both logged. */
  private retireAtAge(key: string, socket: TLSSocket, injector: ConnectionInjector): void {
    const { maxConnectionAgeMs, maxConnectionAgeGraceMs: graceMs } = this.options.limits();
    const ageMs = maxConnectionAgeMs * (0.9 + Math.random() * 0.2);
    let grace: NodeJS.Timeout | undefined;
    const age = setTimeout(() => {
      this.closed.inc({ reason: 'max_age' });
      this.options.log.info({ peer: key, age_seconds: Math.round(ageMs / 1000), grace_seconds: graceMs / 1000 }, 'connection reached server.max_connection_age_seconds: GOAWAY sent, its calls may finish');
      // Set before drain()'s own timer, so it runs first: the connection is still open only if calls are left.
      grace = setTimeout(() => {
        if (!socket.destroyed) this.options.log.warn({ peer: key }, 'calls still running after server.max_connection_age_grace_seconds: cancelled');
      }, graceMs);
      grace.unref();
      injector.drain(graceMs);
    }, ageMs);
    age.unref();
    socket.once('close', () => {
      clearTimeout(age);
      clearTimeout(grace);
    });
  }

  private arm(key: string, entry: Pending): void {
    clearTimeout(entry.timer);
    entry.timer = setTimeout(() => {
      if (this.pending.get(key) !== entry || entry.inFlight > 0) return;
      this.pending.delete(key);
      this.closed.inc({ reason: 'idle_before_first_call' });
      this.reset(entry);
    }, this.options.limits().firstCallTimeoutMs);
    entry.timer.unref();
  }
}
