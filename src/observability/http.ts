// The plain-HTTP side: Prometheus /metrics, liveness /healthz, readiness /readyz.
// It carries no API and no secrets, so it needs no TLS on loopback.
import { createServer, type Server } from 'node:http';
import type { Metrics } from './metrics.js';
import type { Readiness } from './readiness.js';

export function createHttpServer(metrics: Metrics, readiness: Readiness): Server {
  return createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    switch (path) {
      case '/metrics':
        metrics.registry.metrics().then(
          (body) => res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(body),
          () => res.writeHead(500).end('metrics collection failed\n'),
        );
        return;
      case '/healthz':
        res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
        return;
      case '/readyz':
        {
          const details = readiness.detailLines.map((line) => `${line}\n`).join('');
          if (readiness.ready) res.writeHead(200, { 'content-type': 'text/plain' }).end(`ready\n${details}`);
          else res.writeHead(503, { 'content-type': 'text/plain' }).end(`not ready: ${readiness.notReady.join(', ') || 'draining'}\n${details}`);
        }
        return;
      default:
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    }
  });
}

export function splitHostPort(address: string): { host: string; port: number } {
  const index = address.lastIndexOf(':');
  return { host: address.slice(0, index).replace(/^\[|\]$/g, ''), port: Number(address.slice(index + 1)) };
}
