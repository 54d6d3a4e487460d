// Downloads one image file for ImportImage: the transport and safety layer under ImageService.
// - https, and http only when the policy allows it; TLS verified against the image trust (a
//   configured bundle, else the system's CAs) — never the daemon's mTLS client CA;
// - SSRF guard (address-policy.ts) on the address actually connected to: hostnames are resolved
//   by our `lookup`, which refuses the whole host if any address is refused, and the socket connects
//   to exactly what it returned (no second resolution a rebinding DNS could answer differently);
//   address literals are checked before connecting; the socket's peer is re-checked on connect;
// - redirects followed by hand, at most 5, each hop re-checked (scheme, address) like the first;
// - a size cap on Content-Length / Content-Range at once and on the body while it streams;
// - resumable: the partial file continues with `Range: bytes=N-` and `If-Range` (the validator saved
//   beside it), else restarts; SHA-256 always covers the whole file (the kept part is re-read);
// - the digest is checked before returning; on a mismatch the partial file is deleted.
// Why no npm SSRF library: request-filtering-agent (the well-kept one) matches allow-lists by exact
// address only (no CIDRs), checks literal IPs only after a TCP connection was made, and patches
// Agent#createConnection; this guard is a documented `lookup` option plus net.BlockList.
import { createHash, type Hash } from 'node:crypto';
import { lookup as dnsLookup } from 'node:dns/promises';
import type { LookupAddress } from 'node:dns';
import { constants as fsConstants, createReadStream } from 'node:fs';
import { lstat, open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import http, { type IncomingMessage, type OutgoingHttpHeaders } from 'node:http';
import https from 'node:https';
import { isIP, type LookupFunction, type Socket } from 'node:net';
import { setTimeout as delay } from 'node:timers/promises';
import { getCACertificates } from 'node:tls';
import { InvalidArgumentError } from '../rpc/errors.js';
import { VERSION } from '../version.js';
import { AddressPolicy } from './address-policy.js';
import { ImageFetchError } from './errors.js';

/** The most redirects any policy follows. */
export const MAX_REDIRECTS = 5;
const MAX_URL_CHARS = 2048;
const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
/** Progress is reported at most every this many bytes (and at the end). */
const PROGRESS_STEP_BYTES = 1024 * 1024;

export interface FetchPolicy {
  /** Allow plain http (images.allow_http). */
  readonly allowHttp: boolean;
  /** CIDRs exempt from the SSRF guard (images.allowed_networks). */
  readonly allowedNetworks: readonly string[];
  /** PEM bundle the image servers' certificates must chain to (images.ca_file); default the system CAs. */
  readonly caFile?: string | undefined;
  /** Redirects followed; capped at MAX_REDIRECTS. */
  readonly maxRedirects: number;
}

export const DEFAULT_FETCH_POLICY: FetchPolicy = { allowHttp: false, allowedNetworks: [], maxRedirects: MAX_REDIRECTS };

/** The policy of the config's images section (config.images; typed here so images/ does not import config/). */
export function fetchPolicyOf(images: { readonly allow_http: boolean; readonly allowed_networks: readonly string[]; readonly ca_file: string }): FetchPolicy {
  return { allowHttp: images.allow_http, allowedNetworks: images.allowed_networks, caFile: images.ca_file === '' ? undefined : images.ca_file, maxRedirects: MAX_REDIRECTS };
}

/** Resolves a hostname to all its addresses (dns.lookup semantics, so /etc/hosts counts). */
export type ResolveHost = (hostname: string, family: number) => Promise<readonly LookupAddress[]>;

export interface DownloadRequest {
  readonly url: string;
  /** 64 hex characters: the digest the whole file must have. */
  readonly expectedSha256: string;
  /** Where the file is written; an existing file there is continued (with its validator in partialMetaPath). */
  readonly partialPath: string;
  /** Size cap in bytes. */
  readonly maxBytes: number;
  readonly policy: FetchPolicy;
  readonly signal: AbortSignal;
  /** Bytes of the file so far (the kept part included) and its full size when the server said it. */
  readonly onProgress?: (received: number, total?: number) => void;
  /** Bytes that came over the network, as they arrive (the bytes-downloaded counter). */
  readonly onBytesReceived?: (bytes: number) => void;
  /** Further attempts after a transient failure (network, 5xx), each resuming where the last stopped; default 3. */
  readonly retries?: number;
  /** First pause before a retry (doubling after each); default 1 s. */
  readonly retryDelayMs?: number;
  /** A connection or read idle this long fails the attempt; default 60 s. */
  readonly idleTimeoutMs?: number;
  /**
   * Name resolution; default dns.lookup. The guard checks whatever this returns, at connect time.
   * Tests pass one that answers like a rebinding DNS would (a real one cannot be made to on demand).
   */
  readonly resolveHost?: ResolveHost;
}

export interface DownloadResult {
  /** Lower-case hex; equal to expectedSha256. */
  readonly sha256: string;
  readonly bytes: number;
  /** The download continued a partial file rather than starting from zero. */
  readonly resumed: boolean;
}

/** What is saved beside a partial file so a resume can ask "only if unchanged" (If-Range). */
interface PartialMeta {
  readonly url: string;
  readonly etag?: string;
  readonly lastModified?: string;
}

/** The sidecar file of a partial download (delete it with the partial file). */
export function partialMetaPath(partialPath: string): string {
  return `${partialPath}.meta`;
}

/**
 * The URL of an import request, or INVALID_ARGUMENT naming `field`: well-formed, absolute,
 * http(s) only, a host, no user:password (credentials would end up in records and logs).
 * Whether plain http is allowed, and where the host points, is checked by downloadImage.
 */
export function validateImageUrl(url: string, field: string): URL {
  if (typeof url !== 'string' || url === '') throw new InvalidArgumentError(field, 'required: an https:// URL of the image');
  if (url.length > MAX_URL_CHARS) throw new InvalidArgumentError(field, `must be at most ${MAX_URL_CHARS} characters`);
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x20\x7f]/.test(url)) throw new InvalidArgumentError(field, 'must not contain spaces or control characters');
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new InvalidArgumentError(field, 'is not a valid absolute URL');
  }
  if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:') throw new InvalidArgumentError(field, 'must be an https:// (or, where allowed, http://) URL');
  if (parsed.username !== '' || parsed.password !== '') throw new InvalidArgumentError(field, 'must not contain a user name or password');
  if (parsed.hostname === '') throw new InvalidArgumentError(field, 'must name a host');
  return parsed;
}

function checkScheme(url: URL, policy: FetchPolicy): void {
  if (url.protocol === 'https:' || (url.protocol === 'http:' && policy.allowHttp)) return;
  const why = url.protocol === 'http:' ? 'plain http is not allowed on this node (images.allow_http)' : `the scheme ${url.protocol} is not allowed`;
  throw new ImageFetchError('scheme_refused', `${why}: image URLs must be https`);
}

/** The URL's host as a connect() host: IPv6 literals without brackets. */
function connectHost(url: URL): string {
  return url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
}

const defaultResolveHost: ResolveHost = (hostname, family) => dnsLookup(hostname, { all: true, family, order: 'verbatim' });

/** A `lookup` for net.connect that refuses a host when any of its addresses is refused. */
function guardedLookup(resolveHost: ResolveHost, guard: AddressPolicy): LookupFunction {
  return (hostname, options, callback) => {
    const family = typeof options.family === 'number' ? options.family : options.family === 'IPv6' ? 6 : options.family === 'IPv4' ? 4 : 0;
    resolveHost(hostname, family).then(
      (addresses) => {
        try {
          if (addresses.length === 0) throw Object.assign(new Error(`no address for ${hostname}`), { code: 'ENOTFOUND' });
          for (const entry of addresses) guard.check(entry.address, hostname);
        } catch (err) {
          callback(err as NodeJS.ErrnoException, '');
          return;
        }
        const first = addresses[0] as LookupAddress;
        if (options.all === true) callback(null, [...addresses]);
        else callback(null, first.address, first.family);
      },
      (err: unknown) => {
        callback(err as NodeJS.ErrnoException, '');
      },
    );
  };
}

/** The CAs image servers must chain to: the configured bundle, else the system store (Node's bundled roots if it is empty). */
async function imageTrust(policy: FetchPolicy): Promise<string | string[]> {
  if (policy.caFile !== undefined && policy.caFile !== '') {
    let bundle: string;
    try {
      bundle = await readFile(policy.caFile, 'utf8');
    } catch (err) {
      throw new ImageFetchError('tls', "this node's CA bundle for image servers (images.ca_file) cannot be read", String(err), { cause: err });
    }
    if (!bundle.includes('-----BEGIN CERTIFICATE-----')) {
      throw new ImageFetchError('tls', "this node's CA bundle for image servers (images.ca_file) holds no PEM certificate");
    }
    return bundle;
  }
  const system = getCACertificates('system');
  return system.length > 0 ? system : getCACertificates('bundled');
}

const TLS_ERROR = /^(ERR_TLS_|ERR_SSL_|CERT_|UNABLE_TO_|SELF_SIGNED|DEPTH_ZERO|HOSTNAME_MISMATCH)/;

/** Any failure of an attempt as an ImageFetchError; file-system errors (but ENOSPC) stay what they are. */
function classify(err: unknown, signal: AbortSignal): unknown {
  if (err instanceof ImageFetchError) return err;
  if (signal.aborted || (err instanceof Error && err.name === 'AbortError')) {
    return new ImageFetchError('cancelled', 'the download was cancelled', undefined, { cause: err });
  }
  const e = err as NodeJS.ErrnoException;
  const code = typeof e.code === 'string' ? e.code : undefined;
  if (code === 'ENOSPC') return new ImageFetchError('no_space', 'the images directory has not enough free space', undefined, { cause: err });
  if (code !== undefined && TLS_ERROR.test(code)) {
    return new ImageFetchError('tls', `the image server's TLS certificate was not accepted (${code})`, e.message, { cause: err });
  }
  if (e.syscall !== undefined && ['open', 'write', 'fsync', 'close', 'ftruncate', 'rename', 'unlink'].includes(e.syscall)) return err;
  return new ImageFetchError('network', `the image server could not be reached or the transfer broke off${code ? ` (${code})` : ''}; retry later`, e.message, { cause: err });
}

interface Transport {
  readonly policy: FetchPolicy;
  readonly guard: AddressPolicy;
  readonly lookup: LookupFunction;
  readonly httpAgent: http.Agent;
  readonly httpsAgent: https.Agent;
  readonly signal: AbortSignal;
  readonly idleTimeoutMs: number;
}

/** Defence in depth: the peer a socket connected to must pass the guard too (lookup already made sure). */
function checkPeerOnConnect(socket: Socket, guard: AddressPolicy, host: string): void {
  const check = () => {
    const peer = socket.remoteAddress;
    if (peer === undefined || !guard.permits(peer)) {
      socket.destroy(new ImageFetchError('address_refused', `the image server ${host} is at an address this node does not download from`, `connected peer ${String(peer)} refused`));
    }
  };
  if (socket.connecting) socket.once('connect', check);
  else check();
}

/** One GET, no redirect following. Resolves with the response head; the body is the caller's to read or destroy. */
function get(url: URL, headers: OutgoingHttpHeaders, transport: Transport): Promise<IncomingMessage> {
  checkScheme(url, transport.policy);
  const host = connectHost(url);
  if (isIP(host) !== 0) transport.guard.check(host, url.hostname);
  return new Promise((resolve, reject) => {
    const secure = url.protocol === 'https:';
    const options: https.RequestOptions = {
      host,
      port: url.port === '' ? (secure ? 443 : 80) : Number(url.port),
      path: `${url.pathname}${url.search}`,
      method: 'GET',
      headers: { ...headers, host: url.host },
      agent: secure ? transport.httpsAgent : transport.httpAgent,
      lookup: transport.lookup,
      signal: transport.signal,
      timeout: transport.idleTimeoutMs,
    };
    const request = (secure ? https : http).request(options);
    request.on('socket', (socket: Socket) => {
      checkPeerOnConnect(socket, transport.guard, url.hostname);
    });
    request.on('timeout', () => {
      request.destroy(new ImageFetchError('network', 'the image server stopped sending; retry later', `idle for ${transport.idleTimeoutMs} ms`));
    });
    // Stays attached: an error after the response arrived must not go unhandled (reading the body reports it).
    request.on('error', reject);
    request.once('response', resolve);
    request.end();
  });
}

/** GET following redirects (each hop checked by get()), at most policy.maxRedirects. */
async function getFollowing(start: URL, headers: OutgoingHttpHeaders, transport: Transport): Promise<IncomingMessage> {
  const limit = Math.min(transport.policy.maxRedirects, MAX_REDIRECTS);
  let url = start;
  for (let hop = 0; ; hop++) {
    const response = await get(url, headers, transport);
    if (!REDIRECT_STATUSES.has(response.statusCode ?? 0)) return response;
    response.destroy();
    if (hop >= limit) throw new ImageFetchError('too_many_redirects', `the image URL redirects more than ${limit} times`);
    const location = response.headers.location;
    let next: URL | undefined;
    try {
      next = location === undefined ? undefined : new URL(location, url);
    } catch {
      next = undefined;
    }
    if (next === undefined) throw new ImageFetchError('bad_redirect', 'the image server sent a redirect without a valid Location');
    if (next.username !== '' || next.password !== '') throw new ImageFetchError('bad_redirect', 'the image server redirected to a URL with a user name or password');
    url = next;
  }
}

function statusError(response: IncomingMessage): ImageFetchError {
  const code = response.statusCode ?? 0;
  response.destroy();
  const transient = code >= 500 || code === 408 || code === 429;
  return new ImageFetchError(transient ? 'http_unavailable' : 'http_status', `the image server answered HTTP ${code}${transient ? '; retry later' : ''}`);
}

function tooLarge(bytes: number, maxBytes: number): ImageFetchError {
  return new ImageFetchError('too_large', `the image is larger than this node's limit of ${maxBytes} bytes (images.max_bytes)`, `size ${bytes} > ${maxBytes}`);
}

// "bytes START-END/TOTAL" (TOTAL may be "*"), or "bytes */TOTAL" as a 416 sends it.
function parseContentRange(value: string | undefined): { start?: number; end?: number; total?: number } | undefined {
  const match = /^bytes (?:(\d+)-(\d+)|\*)\/(\d+|\*)$/.exec(value?.trim() ?? '');
  if (!match) return undefined;
  const num = (s: string | undefined) => (s === undefined || s === '*' ? undefined : Number(s));
  return { start: num(match[1]), end: num(match[2]), total: num(match[3]) };
}

function contentLength(response: IncomingMessage): number | undefined {
  const value = response.headers['content-length'];
  return value !== undefined && /^\d+$/.test(value) ? Number(value) : undefined;
}

/** Size of a regular file kept from an earlier attempt; 0 for none, or for anything else (a symlink is not followed). */
async function sizeOf(path: string): Promise<number> {
  try {
    const st = await lstat(path);
    return st.isFile() ? st.size : 0;
  } catch {
    return 0;
  }
}

async function readMeta(partialPath: string): Promise<PartialMeta | undefined> {
  try {
    const doc = JSON.parse(await readFile(partialMetaPath(partialPath), 'utf8')) as Partial<PartialMeta>;
    if (typeof doc.url !== 'string') return undefined;
    return {
      url: doc.url,
      ...(typeof doc.etag === 'string' ? { etag: doc.etag } : {}),
      ...(typeof doc.lastModified === 'string' ? { lastModified: doc.lastModified } : {}),
    };
  } catch {
    return undefined;
  }
}

async function writeMeta(partialPath: string, meta: PartialMeta): Promise<void> {
  const path = partialMetaPath(partialPath);
  // wx: never through a symlink, nor into a file left over.
  await rm(`${path}.tmp`, { force: true });
  await writeFile(`${path}.tmp`, JSON.stringify(meta), { mode: 0o600, flag: 'wx' });
  await rename(`${path}.tmp`, path);
}

/** Deletes a partial download and its sidecar (an abandoned import); nothing there is fine. */
export async function discardPartial(partialPath: string): Promise<void> {
  await rm(partialPath, { force: true });
  await rm(partialMetaPath(partialPath), { force: true });
}

/** If-Range takes a strong ETag or a date (RFC 9110 13.1.5); a weak ETag cannot be used. */
function ifRange(meta: PartialMeta | undefined, url: string): string | undefined {
  if (meta?.url !== url) return undefined;
  if (meta.etag !== undefined && !meta.etag.startsWith('W/')) return meta.etag;
  return meta.lastModified;
}

/** Re-reads the kept part of a partial file into the hash (the digest covers the whole file). */
async function hashPrefix(hash: Hash, path: string, bytes: number, signal: AbortSignal): Promise<void> {
  if (bytes === 0) return;
  for await (const chunk of createReadStream(path, { start: 0, end: bytes - 1, signal })) hash.update(chunk as Buffer);
}

interface AttemptContext {
  readonly request: DownloadRequest;
  readonly url: URL;
  readonly expected: string;
  readonly transport: Transport;
}

/** One attempt: continue (or restart) the partial file from one response. */
async function attempt(ctx: AttemptContext, allowResume: boolean): Promise<DownloadResult> {
  const { request, transport } = ctx;
  const { partialPath, maxBytes, signal } = request;
  let kept = allowResume ? await sizeOf(partialPath) : 0;
  if (kept > maxBytes) kept = 0;
  const meta = await readMeta(partialPath);
  const headers: OutgoingHttpHeaders = { 'accept-encoding': 'identity', 'user-agent': `debvisor-rpcd/${VERSION}` };
  if (kept > 0) {
    headers.range = `bytes=${kept}-`;
    const validator = ifRange(meta, ctx.url.href);
    if (validator !== undefined) headers['if-range'] = validator;
  }
  const response = await getFollowing(ctx.url, headers, transport);
  const status = response.statusCode ?? 0;

  if (status === 416 && kept > 0) {
    response.destroy();
    // The kept part may be the whole file already (interrupted after the last byte, before publishing).
    if (parseContentRange(response.headers['content-range'])?.total === kept) {
      request.onProgress?.(kept, kept);
      return finish(ctx, kept, true, undefined);
    }
    return attempt(ctx, false);
  }
  let offset: number;
  let total: number | undefined;
  if (status === 206 && kept > 0) {
    const range = parseContentRange(response.headers['content-range']);
    const length = contentLength(response);
    total = range?.total ?? (length === undefined ? undefined : kept + length);
    if (range?.start !== kept || (range.total !== undefined && range.end !== range.total - 1)) {
      // Not the rest of the file we asked for: start over without Range.
      response.destroy();
      return attempt(ctx, false);
    }
    offset = kept;
  } else if (status === 200) {
    offset = 0;
    total = contentLength(response);
  } else {
    throw statusError(response);
  }
  if (total !== undefined && total > maxBytes) {
    response.destroy();
    await discardPartial(partialPath);
    throw tooLarge(total, maxBytes);
  }
  const etag = response.headers.etag;
  const lastModified = response.headers['last-modified'];
  if (offset === 0 || etag !== undefined || lastModified !== undefined) {
    await writeMeta(partialPath, { url: ctx.url.href, ...(etag !== undefined ? { etag } : {}), ...(lastModified !== undefined ? { lastModified } : {}) });
  }

  const hash = createHash('sha256');
  let received = offset;
  try {
    await hashPrefix(hash, partialPath, offset, signal);
    let reported = -1;
    const report = (force: boolean) => {
      if (!request.onProgress || (!force && received - reported < PROGRESS_STEP_BYTES)) return;
      reported = received;
      request.onProgress(received, total);
    };
    report(true);
    // Each chunk is written before the next is read: when the transfer breaks, every byte received is on disk to resume from.
    // O_NOFOLLOW: a symlink planted at the partial path must not redirect the write elsewhere.
    const flags = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_NOFOLLOW | (offset > 0 ? fsConstants.O_APPEND : fsConstants.O_TRUNC);
    const file = await open(partialPath, flags, 0o600);
    try {
      for await (const chunk of response as AsyncIterable<Buffer>) {
        received += chunk.length;
        if (received > maxBytes) throw tooLarge(received, maxBytes);
        hash.update(chunk);
        request.onBytesReceived?.(chunk.length);
        await file.write(chunk);
        report(false);
      }
      await file.sync();
    } finally {
      await file.close();
    }
    report(true);
  } catch (err) {
    if (err instanceof ImageFetchError && err.failure === 'too_large') await discardPartial(partialPath);
    throw err;
  } finally {
    response.destroy();
  }
  if (total !== undefined && received !== total) {
    throw new ImageFetchError('network', 'the transfer broke off; retry later', `received ${received} of ${total} bytes`);
  }
  return finish(ctx, received, offset > 0, hash);
}

/** A resumed file had the wrong digest: the partial is gone, download it again from zero. */
class ResumedDigestMismatch extends Error {
  constructor(actual: string) {
    super(`resumed download had SHA-256 ${actual}`);
    this.name = 'ResumedDigestMismatch';
  }
}

/** Checks the digest of the complete file (hashing it when `hash` is not given); a mismatch deletes it. */
async function finish(ctx: AttemptContext, bytes: number, resumed: boolean, hash: Hash | undefined): Promise<DownloadResult> {
  const { partialPath, signal } = ctx.request;
  let digest: Hash;
  if (hash === undefined) {
    digest = createHash('sha256');
    await hashPrefix(digest, partialPath, bytes, signal);
  } else {
    digest = hash;
  }
  const sha256 = digest.digest('hex');
  if (sha256 !== ctx.expected) {
    await discardPartial(partialPath);
    // The kept part may be of another file (a server without validators that changed it): one more try, whole.
    if (resumed) throw new ResumedDigestMismatch(sha256);
    throw new ImageFetchError('digest_mismatch', `the downloaded image has SHA-256 ${sha256}, not the expected ${ctx.expected}; nothing was imported`);
  }
  await rm(partialMetaPath(partialPath), { force: true });
  return { sha256, bytes, resumed };
}

/**
 * Downloads `url` into `partialPath` (continuing what is there when the server allows it) and
 * checks its SHA-256. On success the file at partialPath is complete and verified; publishing it
 * (the rename) is the caller's. Throws ImageFetchError; a wrong digest deletes the partial file,
 * a transient failure keeps it (and its validator) for the next call to resume.
 */
export async function downloadImage(request: DownloadRequest): Promise<DownloadResult> {
  const expected = typeof request.expectedSha256 === 'string' ? request.expectedSha256.toLowerCase() : '';
  if (!/^[0-9a-f]{64}$/.test(expected)) throw new InvalidArgumentError('sha256', 'must be 64 hexadecimal characters');
  if (!Number.isSafeInteger(request.maxBytes) || request.maxBytes <= 0) throw new TypeError('maxBytes must be a positive integer');
  const url = validateImageUrl(request.url, 'url');
  const { policy, signal } = request;
  checkScheme(url, policy);
  const guard = new AddressPolicy(policy.allowedNetworks);
  const ca = await imageTrust(policy);
  const tlsOptions = { ca, rejectUnauthorized: true, minVersion: 'TLSv1.2' as const };
  const transport: Transport = {
    policy,
    guard,
    lookup: guardedLookup(request.resolveHost ?? defaultResolveHost, guard),
    // Fresh agents per download, without keep-alive: no socket outlives it, none is shared with other trust.
    httpAgent: new http.Agent({ keepAlive: false }),
    httpsAgent: new https.Agent({ keepAlive: false, ...tlsOptions }),
    signal,
    idleTimeoutMs: request.idleTimeoutMs ?? 60_000,
  };
  const ctx: AttemptContext = { request, url, expected, transport };
  const retries = request.retries ?? 3;
  let pause = request.retryDelayMs ?? 1000;
  let resume = true;
  try {
    for (let attemptNo = 0; ; attemptNo++) {
      try {
        signal.throwIfAborted();
        return await attempt(ctx, resume);
      } catch (raw) {
        if (raw instanceof ResumedDigestMismatch && resume) {
          resume = false;
          continue;
        }
        const err = classify(raw, signal);
        if (!(err instanceof ImageFetchError) || !err.transient || attemptNo >= retries) throw err;
      }
      try {
        await delay(pause, undefined, { signal });
      } catch (err) {
        throw classify(err, signal);
      }
      pause *= 2;
      resume = true;
    }
  } finally {
    transport.httpAgent.destroy();
    transport.httpsAgent.destroy();
  }
}
