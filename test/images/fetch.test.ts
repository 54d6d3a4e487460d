// downloadImage against real servers on loopback: HTTPS with a test CA and plain HTTP, serving raw
// and qcow2 images made by the real qemu-img. Covers the digest check, resume with Range (the
// server's log shows the Range header), restarts, the size cap, the SSRF guard (literal, decimal
// and hex IPs, names resolving to loopback, redirects), the redirect limit, http refusal and TLS trust.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ImageFetchError } from '../../src/images/errors.js';
import { DEFAULT_FETCH_POLICY, discardPartial, downloadImage, partialMetaPath, validateImageUrl, type DownloadRequest, type FetchPolicy } from '../../src/images/fetch.js';
import { InvalidArgumentError, toStatus } from '../../src/rpc/errors.js';
import { createTestCa, sha256Hex, startHttpImageServer, startHttpsImageServer, type ImageServer, type TestCa } from '../support/image-server.js';
import { rejection } from '../support/rejection.js';

const MiB = 1024 * 1024;
let dir: string;
let ca: TestCa;
let otherCa: TestCa;
let httpsServer: ImageServer;
let httpServer: ImageServer;
let untrustedServer: ImageServer;
let raw: Buffer;
let qcow2: Buffer;
let counter = 0;

/** The tests allow-list loopback, as the issue says; the default policy is tested on its own. */
let loopbackPolicy: FetchPolicy;

function partial(): string {
  return join(dir, `download-${++counter}.partial`);
}

function request(overrides: Partial<DownloadRequest> & Pick<DownloadRequest, 'url' | 'expectedSha256'>): DownloadRequest {
  return { partialPath: partial(), maxBytes: 64 * MiB, policy: loopbackPolicy, signal: new AbortController().signal, retryDelayMs: 10, ...overrides };
}

async function fetchError(req: DownloadRequest): Promise<ImageFetchError> {
  const err = await rejection(downloadImage(req));
  expect(err).toBeInstanceOf(ImageFetchError);
  return err as ImageFetchError;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'debvisor-image-fetch-'));
  ca = await createTestCa(dir, 'trusted');
  otherCa = await createTestCa(dir, 'other');
  // 6 MiB of random data then zeros: several progress steps, and a qcow2 with real clusters.
  writeFileSync(join(dir, 'disk.raw'), Buffer.concat([randomBytes(3 * MiB), Buffer.alloc(3 * MiB)]));
  execFileSync('/usr/bin/qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', join(dir, 'disk.raw'), join(dir, 'disk.qcow2')]);
  raw = readFileSync(join(dir, 'disk.raw'));
  qcow2 = readFileSync(join(dir, 'disk.qcow2'));
  httpsServer = await startHttpsImageServer(ca.ca);
  httpServer = await startHttpImageServer();
  untrustedServer = await startHttpsImageServer(otherCa.ca);
  loopbackPolicy = { allowHttp: false, allowedNetworks: ['127.0.0.0/8'], caFile: ca.caFile, maxRedirects: 5 };
});

afterAll(async () => {
  await Promise.all([httpsServer.close(), httpServer.close(), untrustedServer.close()]);
  rmSync(dir, { recursive: true, force: true });
});

beforeEach(() => {
  for (const server of [httpsServer, httpServer, untrustedServer]) {
    server.files.clear();
    server.log.length = 0;
  }
});

describe('validateImageUrl', () => {
  it.each([
    ['', 'required'],
    ['not a url', 'spaces'],
    ['/relative/path.img', 'valid absolute URL'],
    ['ftp://example.com/x.img', 'https://'],
    ['file:///etc/passwd', 'https://'],
    ['https://user:secret@example.com/x.img', 'user name or password'],
    ['https://example.com/\u0000x', 'control'],
    [`https://example.com/${'a'.repeat(3000)}`, 'at most'],
  ])('refuses %j as INVALID_ARGUMENT naming the field', (url, problem) => {
    const err = (() => {
      try {
        validateImageUrl(url, 'url');
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect((err as InvalidArgumentError).message).toMatch(/^url: /);
    expect((err as InvalidArgumentError).message).toContain(problem);
  });

  it('accepts https and http URLs (policy decides http later)', () => {
    expect(validateImageUrl('https://images.example.com/debian.qcow2?x=1', 'url').hostname).toBe('images.example.com');
    expect(validateImageUrl('http://127.0.0.1:8080/a.raw', 'url').port).toBe('8080');
  });
});

describe('downloadImage over HTTPS with a test CA', () => {
  it('downloads a qcow2 image, checks its digest and reports progress with the total', async () => {
    httpsServer.files.set('/disk.qcow2', { body: qcow2 });
    const progress: [number, number | undefined][] = [];
    let network = 0;
    const req = request({
      url: `${httpsServer.origin}/disk.qcow2`,
      expectedSha256: sha256Hex(qcow2).toUpperCase(),
      onProgress: (received, total) => progress.push([received, total]),
      onBytesReceived: (n) => (network += n),
    });
    const result = await downloadImage(req);
    expect(result).toEqual({ sha256: sha256Hex(qcow2), bytes: qcow2.length, resumed: false });
    expect(readFileSync(req.partialPath).equals(qcow2)).toBe(true);
    expect(existsSync(partialMetaPath(req.partialPath))).toBe(false);
    expect(network).toBe(qcow2.length);
    expect(progress[0]).toEqual([0, qcow2.length]);
    expect(progress.at(-1)).toEqual([qcow2.length, qcow2.length]);
  });

  it('a wrong digest fails naming both digests and leaves nothing behind', async () => {
    httpsServer.files.set('/disk.raw', { body: raw });
    const wrong = sha256Hex(Buffer.from('something else'));
    const req = request({ url: `${httpsServer.origin}/disk.raw`, expectedSha256: wrong });
    const err = await fetchError(req);
    expect(err.failure).toBe('digest_mismatch');
    expect(err.safeMessage).toContain(sha256Hex(raw));
    expect(err.safeMessage).toContain(wrong);
    expect(toStatus(err, 't').code).toBe(Status.FAILED_PRECONDITION);
    expect(existsSync(req.partialPath)).toBe(false);
    expect(existsSync(partialMetaPath(req.partialPath))).toBe(false);
  });

  it('a download cut in the middle resumes with a Range request (If-Range the saved ETag) and the digest is right', async () => {
    httpsServer.files.set('/disk.raw', { body: raw, cutAfterBytes: 2 * MiB + 123 });
    const req = request({ url: `${httpsServer.origin}/disk.raw`, expectedSha256: sha256Hex(raw) });
    const result = await downloadImage(req);
    expect(result).toEqual({ sha256: sha256Hex(raw), bytes: raw.length, resumed: true });
    expect(readFileSync(req.partialPath).equals(raw)).toBe(true);
    expect(httpsServer.log).toHaveLength(2);
    expect(httpsServer.log[0]?.range).toBeUndefined();
    const resumedAt = Number(/^bytes=(\d+)-$/.exec(httpsServer.log[1]?.range ?? '')?.[1]);
    expect(resumedAt).toBeGreaterThan(0);
    expect(resumedAt).toBeLessThanOrEqual(2 * MiB + 123);
    expect(httpsServer.log[1]?.ifRange).toBe(`"${sha256Hex(raw)}"`);
  });

  it('an interrupted call leaves the partial file; the next call resumes it', async () => {
    httpsServer.files.set('/disk.qcow2', { body: qcow2, cutAfterBytes: 100_000 });
    const req = request({ url: `${httpsServer.origin}/disk.qcow2`, expectedSha256: sha256Hex(qcow2), retries: 0 });
    const err = await fetchError(req);
    expect(err.failure).toBe('network');
    expect(toStatus(err, 't').code).toBe(Status.UNAVAILABLE);
    expect(existsSync(req.partialPath)).toBe(true);
    const result = await downloadImage(req);
    expect(result.resumed).toBe(true);
    expect(readFileSync(req.partialPath).equals(qcow2)).toBe(true);
    expect(httpsServer.log.map((r) => r.range)).toEqual([undefined, expect.stringMatching(/^bytes=\d+-$/)]);
  });

  it('a file that changed on the server (another ETag) restarts from zero', async () => {
    httpsServer.files.set('/disk.raw', { body: raw, cutAfterBytes: MiB, etag: '"v1"' });
    const req = request({ url: `${httpsServer.origin}/disk.raw`, expectedSha256: sha256Hex(raw), retries: 0 });
    await fetchError(req);
    httpsServer.files.set('/disk.raw', { body: raw, etag: '"v2"' });
    const result = await downloadImage(req);
    expect(result).toMatchObject({ resumed: false, bytes: raw.length });
    expect(httpsServer.log[1]).toMatchObject({ ifRange: '"v1"' });
  });

  it('a complete partial file (the server answers 416) is verified without downloading again', async () => {
    httpsServer.files.set('/disk.raw', { body: raw });
    const req = request({ url: `${httpsServer.origin}/disk.raw`, expectedSha256: sha256Hex(raw) });
    writeFileSync(req.partialPath, raw);
    const progress: [number, number | undefined][] = [];
    const result = await downloadImage({ ...req, onProgress: (received, total) => progress.push([received, total]) });
    expect(result).toEqual({ sha256: sha256Hex(raw), bytes: raw.length, resumed: true });
    expect(httpsServer.log).toHaveLength(1);
    expect(progress).toEqual([[raw.length, raw.length]]);
  });

  it('refuses a server whose certificate comes from a CA outside the image trust', async () => {
    untrustedServer.files.set('/disk.raw', { body: raw });
    const err = await fetchError(request({ url: `${untrustedServer.origin}/disk.raw`, expectedSha256: sha256Hex(raw) }));
    expect(err.failure).toBe('tls');
    expect(toStatus(err, 't').code).toBe(Status.FAILED_PRECONDITION);
    expect(untrustedServer.log).toHaveLength(0);
  });

  it('an unreadable or empty images.ca_file is a clear FAILED_PRECONDITION, not an internal error', async () => {
    httpsServer.files.set('/disk.raw', { body: raw });
    writeFileSync(join(dir, 'empty.pem'), '');
    for (const caFile of [join(dir, 'absent.pem'), join(dir, 'empty.pem')]) {
      const err = await fetchError(request({ url: `${httpsServer.origin}/disk.raw`, expectedSha256: sha256Hex(raw), policy: { ...loopbackPolicy, caFile } }));
      expect(err.failure).toBe('tls');
      expect(err.safeMessage).toContain('images.ca_file');
      expect(toStatus(err, 't').code).toBe(Status.FAILED_PRECONDITION);
    }
    expect(httpsServer.log).toHaveLength(0);
  });

  it('discardPartial removes a partial download and its sidecar', async () => {
    httpsServer.files.set('/disk.raw', { body: raw, cutAfterBytes: MiB });
    const req = request({ url: `${httpsServer.origin}/disk.raw`, expectedSha256: sha256Hex(raw), retries: 0 });
    await fetchError(req);
    expect(existsSync(partialMetaPath(req.partialPath))).toBe(true);
    await discardPartial(req.partialPath);
    expect(existsSync(req.partialPath) || existsSync(partialMetaPath(req.partialPath))).toBe(false);
    await discardPartial(req.partialPath);
  });

  it('without a configured bundle the system CAs are used, which do not include the test CA', async () => {
    httpsServer.files.set('/disk.raw', { body: raw });
    const err = await fetchError(request({ url: `${httpsServer.origin}/disk.raw`, expectedSha256: sha256Hex(raw), policy: { ...loopbackPolicy, caFile: undefined } }));
    expect(err.failure).toBe('tls');
    expect(httpsServer.log).toHaveLength(0);
  });

  it('refuses a certificate that does not name the host, from the trusted CA all the same', async () => {
    httpsServer.files.set('/disk.raw', { body: raw });
    // A name the certificate lacks, resolved to the server (a stand-in for DNS; the guard allows loopback here).
    const resolveHost = () => Promise.resolve([{ address: '127.0.0.1', family: 4 }]);
    const err = await fetchError(request({ url: `https://images.example.test:${httpsServer.port}/disk.raw`, expectedSha256: sha256Hex(raw), resolveHost }));
    expect(err.failure).toBe('tls');
    expect(err.safeMessage).toContain('ERR_TLS_CERT_ALTNAME_INVALID');
    expect(httpsServer.log).toHaveLength(0);
  });

  it('a resumed file with the wrong digest (changed on a server without validators) is downloaded again whole', async () => {
    httpsServer.files.set('/disk.raw', { body: raw, noValidators: true });
    const req = request({ url: `${httpsServer.origin}/disk.raw`, expectedSha256: sha256Hex(raw) });
    // What an earlier download of the old file left: the right size of prefix, other bytes.
    writeFileSync(req.partialPath, randomBytes(MiB));
    const result = await downloadImage(req);
    expect(result).toEqual({ sha256: sha256Hex(raw), bytes: raw.length, resumed: false });
    expect(httpsServer.log.map((r) => [r.range, r.ifRange])).toEqual([
      [`bytes=${MiB}-`, undefined],
      [undefined, undefined],
    ]);
    expect(readFileSync(req.partialPath).equals(raw)).toBe(true);
  });

  it('a server that stops sending fails the attempt after the idle timeout, keeping what arrived', async () => {
    // Plain http, so no handshake on a loaded machine eats into the idle budget.
    httpServer.files.set('/disk.raw', { body: raw, stallAfterBytes: 256 * 1024 });
    const policy = { ...loopbackPolicy, allowHttp: true };
    const req = request({ url: `${httpServer.origin}/disk.raw`, expectedSha256: sha256Hex(raw), policy, idleTimeoutMs: 1000, retries: 0 });
    const err = await fetchError(req);
    expect(err.failure).toBe('network');
    expect(readFileSync(req.partialPath).length).toBe(256 * 1024);
  });

  it('never writes through a symlink planted at the partial path', async () => {
    httpsServer.files.set('/disk.raw', { body: raw });
    const req = request({ url: `${httpsServer.origin}/disk.raw`, expectedSha256: sha256Hex(raw) });
    const victim = join(dir, 'victim.txt');
    writeFileSync(victim, 'precious');
    symlinkSync(victim, req.partialPath);
    await rejection(downloadImage(req));
    expect(readFileSync(victim, 'utf8')).toBe('precious');
  });
});

describe('downloadImage over HTTP', () => {
  it('refuses http unless the policy allows it, without connecting', async () => {
    httpServer.files.set('/disk.raw', { body: raw });
    const err = await fetchError(request({ url: `${httpServer.origin}/disk.raw`, expectedSha256: sha256Hex(raw) }));
    expect(err.failure).toBe('scheme_refused');
    expect(toStatus(err, 't').code).toBe(Status.FAILED_PRECONDITION);
    expect(httpServer.log).toHaveLength(0);
  });

  it('downloads over http when allowed', async () => {
    httpServer.files.set('/disk.raw', { body: raw });
    const result = await downloadImage(request({ url: `${httpServer.origin}/disk.raw`, expectedSha256: sha256Hex(raw), policy: { ...loopbackPolicy, allowHttp: true } }));
    expect(result.bytes).toBe(raw.length);
  });

  it('a server without Range support restarts from zero after a cut', async () => {
    httpServer.files.set('/disk.raw', { body: raw, ranges: false, cutAfterBytes: MiB });
    const req = request({ url: `${httpServer.origin}/disk.raw`, expectedSha256: sha256Hex(raw), policy: { ...loopbackPolicy, allowHttp: true } });
    const result = await downloadImage(req);
    expect(result).toEqual({ sha256: sha256Hex(raw), bytes: raw.length, resumed: false });
    expect(httpServer.log).toHaveLength(2);
    expect(httpServer.log[1]?.range).toMatch(/^bytes=\d+-$/); // asked, but got 200 with the whole file
    expect(readFileSync(req.partialPath).equals(raw)).toBe(true);
  });

  it('refuses a Content-Length over the cap at once, before the body', async () => {
    httpServer.files.set('/big.raw', { body: raw.subarray(0, 4096), declaredLength: 10 * MiB });
    const req = request({ url: `${httpServer.origin}/big.raw`, expectedSha256: sha256Hex(raw), maxBytes: MiB, policy: { ...loopbackPolicy, allowHttp: true } });
    const err = await fetchError(req);
    expect(err.failure).toBe('too_large');
    expect(toStatus(err, 't').code).toBe(Status.FAILED_PRECONDITION);
    expect(existsSync(req.partialPath)).toBe(false);
  });

  it('aborts a body without Content-Length that streams past the cap', async () => {
    httpServer.files.set('/big.raw', { body: raw, chunked: true });
    let network = 0;
    const req = request({
      url: `${httpServer.origin}/big.raw`,
      expectedSha256: sha256Hex(raw),
      maxBytes: MiB,
      policy: { ...loopbackPolicy, allowHttp: true },
      onBytesReceived: (n) => (network += n),
    });
    const err = await fetchError(req);
    expect(err.failure).toBe('too_large');
    expect(network).toBeLessThanOrEqual(MiB);
    expect(existsSync(req.partialPath)).toBe(false);
  });

  it('upstream errors: 404 is FAILED_PRECONDITION at once, 503 is retried and then UNAVAILABLE', async () => {
    const policy = { ...loopbackPolicy, allowHttp: true };
    const notFound = await fetchError(request({ url: `${httpServer.origin}/missing.raw`, expectedSha256: sha256Hex(raw), policy }));
    expect(notFound.failure).toBe('http_status');
    expect(toStatus(notFound, 't').code).toBe(Status.FAILED_PRECONDITION);
    expect(httpServer.log).toHaveLength(1);
    httpServer.files.set('/busy.raw', { body: raw, status: 503 });
    const busy = await fetchError(request({ url: `${httpServer.origin}/busy.raw`, expectedSha256: sha256Hex(raw), policy, retries: 2 }));
    expect(busy.failure).toBe('http_unavailable');
    expect(toStatus(busy, 't').code).toBe(Status.UNAVAILABLE);
    expect(httpServer.log).toHaveLength(4);
  });

  it('cancellation stops a download mid-stream and keeps the partial file for a resume', async () => {
    httpServer.files.set('/disk.raw', { body: raw, chunked: true });
    const controller = new AbortController();
    const req = request({
      url: `${httpServer.origin}/disk.raw`,
      expectedSha256: sha256Hex(raw),
      policy: { ...loopbackPolicy, allowHttp: true },
      signal: controller.signal,
      onBytesReceived: () => controller.abort(),
    });
    const err = await fetchError(req);
    expect(err.failure).toBe('cancelled');
    expect(toStatus(err, 't').code).toBe(Status.CANCELLED);
  });
});

describe('the SSRF guard', () => {
  // The default policy: nothing allow-listed. None of these may reach a server.
  const refusedUrls = [
    'https://127.0.0.1:PORT/disk.raw',
    'https://169.254.169.254/latest/meta-data/',
    'https://[::1]:PORT/disk.raw',
    'https://localhost:PORT/disk.raw',
    'https://2130706433:PORT/disk.raw', // decimal 127.0.0.1
    'https://0x7f000001:PORT/disk.raw', // hex
    'https://0177.0.0.1:PORT/disk.raw', // octal
    'https://127.1:PORT/disk.raw',
    'https://0/disk.raw', // 0.0.0.0
    'https://[::ffff:127.0.0.1]:PORT/disk.raw', // IPv4-mapped
    'https://[::ffff:169.254.169.254]/',
    'https://[64:ff9b::a9fe:a9fe]/', // NAT64 of 169.254.169.254
    'https://10.0.0.1/x',
    'https://172.16.5.4/x',
    'https://192.168.1.1/x',
    'https://100.64.0.1/x',
    'https://[fd00::1]/x',
    'https://[fe80::1]/x',
    'https://224.0.0.1/x',
    'https://[::]/x',
    'https://127.0.0.1.:PORT/disk.raw',
    'https://[::127.0.0.1]:PORT/disk.raw', // IPv4-compatible
    'https://[2002:7f00:1::]/x', // 6to4 of 127.0.0.1
  ];

  it.each(refusedUrls)('the default policy refuses %s', async (template) => {
    httpsServer.files.set('/disk.raw', { body: raw });
    const url = template.replace('PORT', String(httpsServer.port));
    const err = await fetchError(request({ url, expectedSha256: sha256Hex(raw), policy: { ...DEFAULT_FETCH_POLICY, caFile: ca.caFile }, retries: 0 }));
    expect(err.failure).toBe('address_refused');
    expect(toStatus(err, 't').code).toBe(Status.FAILED_PRECONDITION);
    // Never tells which address a name resolved to (only literal addresses, the caller's own input, appear).
    if (url.includes('localhost')) expect(err.safeMessage).not.toMatch(/127\.0\.0\.1|::1/);
    expect(httpsServer.log).toHaveLength(0);
  });

  it('a trailing-dot name for loopback never reaches the server (refused, or not resolvable on this host)', async () => {
    httpsServer.files.set('/disk.raw', { body: raw });
    const url = `https://localhost.:${httpsServer.port}/disk.raw`;
    const err = await fetchError(request({ url, expectedSha256: sha256Hex(raw), policy: { ...DEFAULT_FETCH_POLICY, caFile: ca.caFile }, retries: 0 }));
    expect(['address_refused', 'network']).toContain(err.failure);
    expect(httpsServer.log).toHaveLength(0);
  });

  it('checks the address the connection is made to: a name resolving to loopback is refused, allow-listed it connects', async () => {
    httpsServer.files.set('/disk.raw', { body: raw });
    // A resolver standing in for DNS (a real one cannot be made to answer so on demand): a public-looking name that resolves to loopback.
    const resolveHost = (hostname: string) => Promise.resolve(hostname === 'localhost' ? [{ address: '127.0.0.1', family: 4 }] : []);
    const url = `https://localhost:${httpsServer.port}/disk.raw`;
    const refused = await fetchError(request({ url, expectedSha256: sha256Hex(raw), policy: { ...DEFAULT_FETCH_POLICY, caFile: ca.caFile }, resolveHost }));
    expect(refused.failure).toBe('address_refused');
    expect(httpsServer.log).toHaveLength(0);
    const result = await downloadImage(request({ url, expectedSha256: sha256Hex(raw), resolveHost }));
    expect(result.bytes).toBe(raw.length);
  });

  it('refuses a host when any of its addresses is refused (a rebinding answer mixing public and internal)', async () => {
    const resolveHost = () =>
      Promise.resolve([
        { address: '93.184.215.14', family: 4 },
        { address: '169.254.169.254', family: 4 },
      ]);
    const err = await fetchError(request({ url: 'https://images.example.com/disk.raw', expectedSha256: sha256Hex(raw), resolveHost, retries: 0 }));
    expect(err.failure).toBe('address_refused');
  });

  it('a redirect to a refused address is refused', async () => {
    for (const target of ['https://169.254.169.254/latest/meta-data/', `https://[::1]:${httpsServer.port}/disk.raw`, 'https://10.1.2.3/disk.raw']) {
      httpsServer.files.set('/redirect', { body: Buffer.alloc(0), redirectTo: target });
      httpsServer.files.set('/disk.raw', { body: raw });
      const err = await fetchError(request({ url: `${httpsServer.origin}/redirect`, expectedSha256: sha256Hex(raw), retries: 0 }));
      expect(err.failure).toBe('address_refused');
    }
  });

  it('a redirect from https to http is refused unless http is allowed', async () => {
    httpServer.files.set('/disk.raw', { body: raw });
    httpsServer.files.set('/redirect', { body: Buffer.alloc(0), redirectTo: `${httpServer.origin}/disk.raw` });
    const err = await fetchError(request({ url: `${httpsServer.origin}/redirect`, expectedSha256: sha256Hex(raw) }));
    expect(err.failure).toBe('scheme_refused');
    expect(httpServer.log).toHaveLength(0);
  });

  it('follows up to 5 redirects (relative ones too) and refuses a sixth', async () => {
    httpsServer.files.set('/disk.raw', { body: raw });
    for (let i = 1; i <= 6; i++) httpsServer.files.set(`/r${i}`, { body: Buffer.alloc(0), redirectTo: i === 1 ? '/disk.raw' : `/r${i - 1}` });
    const five = await downloadImage(request({ url: `${httpsServer.origin}/r5`, expectedSha256: sha256Hex(raw) }));
    expect(five.bytes).toBe(raw.length);
    httpsServer.log.length = 0;
    const err = await fetchError(request({ url: `${httpsServer.origin}/r6`, expectedSha256: sha256Hex(raw) }));
    expect(err.failure).toBe('too_many_redirects');
    expect(httpsServer.log).toHaveLength(6);
    const loop = await fetchError(request({ url: `${httpsServer.origin}/r1`, expectedSha256: sha256Hex(raw), policy: { ...loopbackPolicy, maxRedirects: 0 } }));
    expect(loop.failure).toBe('too_many_redirects');
  });
});

describe('file descriptors', () => {
  it('leaves none open after successes and failures', async () => {
    const fds = async () => (await readdir('/proc/self/fd')).length;
    httpsServer.files.set('/disk.raw', { body: raw, cutAfterBytes: MiB });
    await downloadImage(request({ url: `${httpsServer.origin}/disk.raw`, expectedSha256: sha256Hex(raw) }));
    const before = await fds();
    for (let i = 0; i < 5; i++) {
      httpsServer.files.set('/disk.raw', { body: raw, cutAfterBytes: MiB });
      await downloadImage(request({ url: `${httpsServer.origin}/disk.raw`, expectedSha256: sha256Hex(raw) }));
      await fetchError(request({ url: `${httpsServer.origin}/disk.raw`, expectedSha256: sha256Hex(Buffer.alloc(1)) }));
    }
    const deadline = Date.now() + 10_000;
    while ((await fds()) > before && Date.now() < deadline) await new Promise((r) => setImmediate(r));
    expect(await fds()).toBeLessThanOrEqual(before);
  });
});
