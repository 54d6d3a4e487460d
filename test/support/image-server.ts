// A real image server on loopback for import tests: HTTPS with a test CA (src/pki) or plain HTTP,
// serving files from memory with Range support (switchable), ETags, redirects, and faults on
// demand (cut the connection after N bytes, lie about Content-Length, stream without one).
// Every request is logged with its Range/If-Range headers, so tests can see what was asked.
import { createHash } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { join } from 'node:path';
import { createCa, issueCertificate, type PemPair } from '../../src/pki/index.js';

export interface ServedFile {
  body: Buffer;
  /** Answer Range requests with 206 (default true); false: always 200 with the whole body. */
  ranges?: boolean;
  /** Destroy the socket after this many body bytes, for the next `cutTimes` requests (default 1). */
  cutAfterBytes?: number;
  cutTimes?: number;
  /** Send this many body bytes, then nothing more (the connection stays open): a stalled server. */
  stallAfterBytes?: number;
  /** Send no ETag or Last-Modified: a resume cannot ask "only if unchanged". */
  noValidators?: boolean;
  /** Send this Content-Length instead of the real one (then cut the connection at the real end). */
  declaredLength?: number;
  /** Send no Content-Length (chunked), so only the streamed size tells. */
  chunked?: boolean;
  /** Strong ETag sent with the file; default the body's SHA-256. */
  etag?: string;
  /** Answer with this status and no body. */
  status?: number;
  /** Answer with a redirect to this URL (relative ones are fine). */
  redirectTo?: string;
}

export interface LoggedRequest {
  readonly path: string;
  readonly range: string | undefined;
  readonly ifRange: string | undefined;
}

export interface ImageServer {
  /** e.g. https://127.0.0.1:PORT */
  readonly origin: string;
  readonly port: number;
  readonly files: Map<string, ServedFile>;
  readonly log: LoggedRequest[];
  close(): Promise<void>;
}

export function sha256Hex(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

function serve(files: Map<string, ServedFile>, log: LoggedRequest[], req: IncomingMessage, res: ServerResponse): void {
  const path = new URL(req.url ?? '/', 'http://x').pathname;
  const range = req.headers.range;
  const ifRangeHeader = req.headers['if-range'] as string | undefined;
  log.push({ path, range, ifRange: ifRangeHeader });
  const file = files.get(path);
  if (!file) {
    res.writeHead(404).end();
    return;
  }
  if (file.redirectTo !== undefined) {
    res.writeHead(302, { location: file.redirectTo }).end();
    return;
  }
  if (file.status !== undefined) {
    res.writeHead(file.status).end();
    return;
  }
  const etag = file.etag ?? `"${sha256Hex(file.body)}"`;
  let start = 0;
  let status = 200;
  const headers: Record<string, string> = { 'accept-ranges': file.ranges === false ? 'none' : 'bytes' };
  if (file.noValidators !== true) headers.etag = etag;
  const match = /^bytes=(\d+)-$/.exec(range ?? '');
  const validatorOk = ifRangeHeader === undefined || (file.noValidators !== true && ifRangeHeader === etag);
  if (file.ranges !== false && match && validatorOk) {
    start = Number(match[1]);
    if (start >= file.body.length) {
      res.writeHead(416, { 'content-range': `bytes */${file.body.length}` }).end();
      return;
    }
    status = 206;
    headers['content-range'] = `bytes ${start}-${file.body.length - 1}/${file.body.length}`;
  }
  const body = file.body.subarray(start);
  if (file.chunked !== true) headers['content-length'] = String(file.declaredLength ?? body.length);
  res.writeHead(status, headers);
  if (file.stallAfterBytes !== undefined) {
    res.write(body.subarray(0, file.stallAfterBytes));
    return;
  }
  const cutTimes = file.cutTimes ?? 1;
  if (file.cutAfterBytes !== undefined && cutTimes > 0) {
    file.cutTimes = cutTimes - 1;
    res.write(body.subarray(0, file.cutAfterBytes), () => {
      // The bytes are on the wire; now the connection breaks, as a network failure would.
      setImmediate(() => res.socket?.destroy());
    });
    return;
  }
  if (file.declaredLength !== undefined && file.declaredLength > body.length) {
    res.write(body, () => setImmediate(() => res.socket?.destroy()));
    return;
  }
  res.end(body);
}

function listen(server: Server, files: Map<string, ServedFile>, log: LoggedRequest[], scheme: 'http' | 'https'): Promise<ImageServer> {
  const sockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as AddressInfo).port;
      resolve({
        origin: `${scheme}://127.0.0.1:${port}`,
        port,
        files,
        log,
        close: () =>
          new Promise<void>((done) => {
            for (const socket of sockets) socket.destroy();
            server.close(() => done());
          }),
      });
    });
  });
}

export async function startHttpImageServer(): Promise<ImageServer> {
  const files = new Map<string, ServedFile>();
  const log: LoggedRequest[] = [];
  return listen(createHttpServer((req, res) => serve(files, log, req, res)), files, log, 'http');
}

export interface TestCa {
  readonly ca: PemPair;
  /** The CA certificate written to a file, as images.ca_file takes it. */
  readonly caFile: string;
}

/** A fresh CA whose certificate is written to `dir`/`name`-ca.pem. */
export async function createTestCa(dir: string, name = 'image-server'): Promise<TestCa> {
  const ca = await createCa({ commonName: `${name} test CA`, validityDays: 2 });
  const caFile = join(dir, `${name}-ca.pem`);
  await writeFile(caFile, ca.certPem);
  return { ca, caFile };
}

/** An HTTPS image server on 127.0.0.1 whose certificate (for 127.0.0.1, ::1 and localhost) comes from `ca`. */
export async function startHttpsImageServer(ca: PemPair): Promise<ImageServer> {
  const leaf = await issueCertificate({ ca, profile: 'server', commonName: 'localhost', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1', '::1'], validityDays: 2 });
  const files = new Map<string, ServedFile>();
  const log: LoggedRequest[] = [];
  const server = createHttpsServer({ cert: leaf.certPem, key: leaf.keyPem }, (req, res) => serve(files, log, req, res));
  return listen(server, files, log, 'https');
}
