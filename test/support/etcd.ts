// Starts a throwaway etcd (one member or a three-member cluster) for tests.
//
// With a reachable Docker engine it runs quay.io/coreos/etcd containers through
// testcontainers; without one (detected by testcontainers' fast "Could not find a
// working container runtime strategy" error, never by a timeout) it runs the local
// `etcd` binary (Debian etcd-server, 3.4) on free loopback ports with a data dir in
// /dev/shm. DEBVISOR_TEST_ETCD=binary|container forces one mode.
//
// Binary processes are tracked and stopped by PID only (SIGTERM, SIGKILL after 5 s),
// and SIGKILLed if the test process exits without calling stop().
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from './ports.js';

const ETCD_IMAGE = 'quay.io/coreos/etcd:v3.4.23';
const HEALTH_POLL_MS = 50;
const HEALTH_TIMEOUT_MS = 15_000;
const KILL_AFTER_MS = 5_000;
const STDERR_TAIL = 16_384;
const MAX_PORT_ATTEMPTS = 4;

export interface StartEtcdOptions {
  /** 1 (default) or a 3-member cluster. */
  readonly members?: 1 | 3;
  /** Serve clients over https with client-certificate auth (binary mode; certificates made with openssl). */
  readonly tls?: boolean;
  /** Extra etcd flags (binary mode only), e.g. ['--auth-token-ttl', '1']. */
  readonly extraArgs?: readonly string[];
}

/** PEM files for a client of a TLS cluster. */
export interface EtcdClientTls {
  readonly caFile: string;
  readonly certFile: string;
  readonly keyFile: string;
}

export interface EtcdCluster {
  /** Client URLs, one per member (http://127.0.0.1:PORT), in member order. */
  readonly endpoints: string[];
  /** Root of the members' data dirs (binary mode; the container's path otherwise). */
  readonly dataDir: string;
  readonly mode: 'binary' | 'container';
  /** Client certificate, key and the CA, when started with `tls`. */
  readonly tls: EtcdClientTls | undefined;
  /** Stops every member (by PID in binary mode) and removes the data. Idempotent. */
  stop(): Promise<void>;
  /** Stops member i, keeping its data. */
  stopMember(i: number): Promise<void>;
  /** Starts a stopped member i on the same ports and data; resolves once it is healthy. */
  startMember(i: number): Promise<void>;
  restartMember(i: number): Promise<void>;
  /** Freezes member i (SIGSTOP / docker pause): connections stay open but nothing answers. */
  pauseMember(i: number): Promise<void>;
  resumeMember(i: number): Promise<void>;
  /** PID of member i while it runs (binary mode), else undefined. */
  pid(i: number): number | undefined;
}

export async function startEtcd(options: StartEtcdOptions = {}): Promise<EtcdCluster> {
  const members = options.members ?? 1;
  const forced = process.env.DEBVISOR_TEST_ETCD;
  if (options.tls !== true && options.extraArgs === undefined && forced !== 'binary' && (forced === 'container' || (await containerRuntimeAvailable()))) {
    return startContainers(members);
  }
  return startBinaries(members, options.tls === true, options.extraArgs ?? []);
}

/**
 * The index of the member that is leader, asked of `among` (default: every member)
 * through etcd's JSON gateway; waits up to `timeoutMs` for one to be elected.
 */
export async function leaderIndex(cluster: Pick<EtcdCluster, 'endpoints'>, among?: readonly number[], timeoutMs = 20_000): Promise<number> {
  const members = among ?? cluster.endpoints.map((_, i) => i);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const statuses = await Promise.all(
      members.map(async (i) => {
        try {
          const response = await fetch(`${cluster.endpoints[i]!}/v3/maintenance/status`, { method: 'POST', body: '{}', signal: AbortSignal.timeout(1_000) });
          const body = (await response.json()) as { header?: { member_id?: string }; leader?: string };
          return { i, leads: body.header?.member_id !== undefined && body.header.member_id === body.leader };
        } catch {
          return { i, leads: false };
        }
      }),
    );
    const leader = statuses.find((s) => s.leads);
    if (leader !== undefined) return leader.i;
    if (Date.now() > deadline) throw new Error(`no etcd leader among members ${members.join(', ')}`);
    await sleep(50);
  }
}

// ---------------------------------------------------------------------------------
// Shared helpers


async function distinctFreePorts(count: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < count) ports.add(await freePort());
  return [...ports];
}

async function isHealthy(clientUrl: string): Promise<boolean> {
  try {
    const response = await fetch(`${clientUrl}/health`, { signal: AbortSignal.timeout(1_000) });
    const body = (await response.json()) as { health?: unknown };
    return body.health === 'true' || body.health === true;
  } catch {
    return false;
  }
}

async function waitHealthy(clientUrl: string, describe: () => string, alive: () => boolean): Promise<void> {
  const deadline = Date.now() + HEALTH_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (await isHealthy(clientUrl)) return;
    if (!alive()) throw new Error(`etcd at ${clientUrl} exited before becoming healthy\n${describe()}`);
    await sleep(HEALTH_POLL_MS);
  }
  throw new Error(`etcd at ${clientUrl} not healthy within ${HEALTH_TIMEOUT_MS} ms\n${describe()}`);
}

let runtimeProbe: Promise<boolean> | undefined;

/** True when testcontainers finds a container runtime; false on its fast "not found" error. */
function containerRuntimeAvailable(): Promise<boolean> {
  runtimeProbe ??= (async () => {
    try {
      const { getContainerRuntimeClient } = await import('testcontainers');
      await getContainerRuntimeClient();
      return true;
    } catch (error) {
      if (error instanceof Error && error.message.includes('Could not find a working container runtime strategy')) return false;
      throw error;
    }
  })();
  return runtimeProbe;
}

// ---------------------------------------------------------------------------------
// Local binary

const livePids = new Set<number>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const pid of livePids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

function etcdBinary(): string {
  for (const candidate of [process.env.ETCD_BIN, '/usr/bin/etcd', '/usr/local/bin/etcd']) {
    if (candidate !== undefined && candidate !== '' && existsSync(candidate)) return candidate;
  }
  const which = spawnSync('sh', ['-c', 'command -v etcd'], { encoding: 'utf8' });
  const found = which.stdout.trim();
  if (which.status === 0 && found !== '') return found;
  throw new Error(
    'etcd is not installed and no container runtime is reachable: run ./scripts/test (it installs the Debian etcd-server package), ' +
      'or `apt-get install -y --no-install-recommends etcd-server`',
  );
}

/** A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`. */
function makeCertificates(dir: string): EtcdClientTls & { serverCert: string; serverKey: string } {
  const openssl = (...args: string[]): void => {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  };
  const newKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl('req', '-x509', ...newKey, '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=etcd test CA');
  const issue = (name: string, ext: string): void => {
    writeFileSync(join(dir, `${name}.ext`), ext);
    openssl('req', ...newKey, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
    openssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.crt`, '-days', '2', '-extfile', `${name}.ext`);
  };
  issue('server', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n');
  issue('client', 'extendedKeyUsage=clientAuth\n');
  return {
    caFile: join(dir, 'ca.crt'),
    certFile: join(dir, 'client.crt'),
    keyFile: join(dir, 'client.key'),
    serverCert: join(dir, 'server.crt'),
    serverKey: join(dir, 'server.key'),
  };
}

interface BinaryMember {
  readonly name: string;
  readonly clientUrl: string;
  /** Plain-http listener for /health and /metrics (the client URL may demand a client certificate). */
  readonly metricsUrl: string;
  readonly peerUrl: string;
  readonly dataDir: string;
  child: ChildProcess | undefined;
  exited: Promise<void> | undefined;
  stderr: string;
}

async function startBinaries(count: 1 | 3, tls: boolean, extraArgs: readonly string[]): Promise<EtcdCluster> {
  const binary = etcdBinary();
  installExitHook();
  const base = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
  let lastError: unknown;
  for (let attempt = 0; attempt < MAX_PORT_ATTEMPTS; attempt++) {
    const root = await mkdtemp(join(base, 'debvisor-etcd-'));
    const ports = await distinctFreePorts(count * 3);
    const certs = tls ? makeCertificates(root) : undefined;
    const members: BinaryMember[] = [];
    for (let i = 0; i < count; i++) {
      members.push({
        name: `m${i}`,
        clientUrl: `${tls ? 'https' : 'http'}://127.0.0.1:${ports[3 * i]!}`,
        peerUrl: `http://127.0.0.1:${ports[3 * i + 1]!}`,
        metricsUrl: `http://127.0.0.1:${ports[3 * i + 2]!}`,
        dataDir: join(root, `m${i}`),
        child: undefined,
        exited: undefined,
        stderr: '',
      });
    }
    const initialCluster = members.map((m) => `${m.name}=${m.peerUrl}`).join(',');
    const token = `debvisor-test-${process.pid}-${Date.now()}`;
    const argsOf = (m: BinaryMember): string[] => [
      '--name', m.name,
      '--data-dir', m.dataDir,
      '--listen-client-urls', m.clientUrl,
      '--advertise-client-urls', m.clientUrl,
      '--listen-metrics-urls', m.metricsUrl,
      ...(certs !== undefined
        ? ['--cert-file', certs.serverCert, '--key-file', certs.serverKey, '--trusted-ca-file', certs.caFile, '--client-cert-auth']
        : []),
      '--listen-peer-urls', m.peerUrl,
      '--initial-advertise-peer-urls', m.peerUrl,
      '--initial-cluster', initialCluster,
      '--initial-cluster-state', 'new',
      '--initial-cluster-token', token,
      '--heartbeat-interval', '10',
      '--election-timeout', '100',
      '--logger', 'zap',
      '--log-level', 'error',
      ...extraArgs,
    ];

    const launch = async (m: BinaryMember): Promise<void> => {
      await mkdir(m.dataDir, { recursive: true });
      m.stderr = '';
      const child = spawn(binary, argsOf(m), { stdio: ['ignore', 'ignore', 'pipe'] });
      m.child = child;
      if (child.pid !== undefined) livePids.add(child.pid);
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (chunk: string) => {
        m.stderr = (m.stderr + chunk).slice(-STDERR_TAIL);
      });
      m.exited = new Promise<void>((resolveExit) => {
        child.once('exit', () => {
          if (child.pid !== undefined) livePids.delete(child.pid);
          resolveExit();
        });
        child.once('error', (error) => {
          m.stderr += `\nspawn error: ${error.message}`;
          resolveExit();
        });
      });
    };
    const running = (m: BinaryMember): boolean => m.child !== undefined && m.child.exitCode === null && m.child.signalCode === null;
    const healthy = (m: BinaryMember): Promise<void> =>
      waitHealthy(m.metricsUrl, () => `${m.name} stderr:\n${m.stderr}`, () => running(m));

    const stopMember = async (m: BinaryMember): Promise<void> => {
      const child = m.child;
      if (child?.pid === undefined || !running(m)) return;
      const pid = child.pid;
      try {
        process.kill(pid, 'SIGTERM');
        process.kill(pid, 'SIGCONT'); // a paused member must wake up to die
      } catch {
        // already gone
      }
      const timer = setTimeout(() => {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }, KILL_AFTER_MS);
      await m.exited;
      clearTimeout(timer);
    };
    const member = (i: number): BinaryMember => {
      const m = members[i];
      if (m === undefined) throw new RangeError(`no etcd member ${i} (have ${members.length})`);
      return m;
    };
    const signal = (i: number, sig: NodeJS.Signals): void => {
      const pid = member(i).child?.pid;
      if (pid === undefined || !running(member(i))) throw new Error(`etcd member ${i} is not running`);
      process.kill(pid, sig);
    };

    let stopped = false;
    const stopAll = async (): Promise<void> => {
      // One at a time: stopped together, a leader waits (5 s) to hand over leadership to peers that are going away too.
      for (const m of members) await stopMember(m);
      if (!stopped) {
        stopped = true;
        await rm(root, { recursive: true, force: true });
      }
    };

    try {
      for (const m of members) await launch(m);
      await Promise.all(members.map(healthy));
    } catch (error) {
      lastError = error;
      await stopAll();
      // A port taken between freePort() and etcd's bind: try fresh ports.
      if (error instanceof Error && /address already in use/i.test(error.message)) continue;
      throw error;
    }

    return {
      endpoints: members.map((m) => m.clientUrl),
      dataDir: root,
      mode: 'binary',
      tls: certs === undefined ? undefined : { caFile: certs.caFile, certFile: certs.certFile, keyFile: certs.keyFile },
      stop: stopAll,
      stopMember: (i) => stopMember(member(i)),
      startMember: async (i) => {
        const m = member(i);
        if (running(m)) return;
        await launch(m);
        await healthy(m);
      },
      restartMember: async (i) => {
        const m = member(i);
        await stopMember(m);
        await launch(m);
        await healthy(m);
      },
      pauseMember: async (i) => {
        signal(i, 'SIGSTOP');
        await Promise.resolve();
      },
      resumeMember: async (i) => {
        signal(i, 'SIGCONT');
        await Promise.resolve();
      },
      pid: (i) => (running(member(i)) ? member(i).child?.pid : undefined),
    };
  }
  throw lastError instanceof Error ? lastError : new Error('could not start etcd');
}

// ---------------------------------------------------------------------------------
// Containers (only when a Docker engine is reachable; untested on hosts without one)

async function startContainers(count: 1 | 3): Promise<EtcdCluster> {
  const { GenericContainer, Network, Wait, getContainerRuntimeClient } = await import('testcontainers');
  const runtime = await getContainerRuntimeClient();
  const network = await new Network().start();
  const hostPorts = await distinctFreePorts(count);
  const names = Array.from({ length: count }, (_, i) => `etcd-m${i}`);
  const initialCluster = names.map((n) => `${n}=http://${n}:2380`).join(',');
  const started = await Promise.all(
    names.map((name, i) =>
      new GenericContainer(ETCD_IMAGE)
        .withNetwork(network)
        .withNetworkAliases(name)
        .withExposedPorts({ container: 2379, host: hostPorts[i]! })
        .withCommand([
          '/usr/local/bin/etcd',
          '--name', name,
          '--data-dir', '/etcd-data',
          '--listen-client-urls', 'http://0.0.0.0:2379',
          '--advertise-client-urls', `http://${name}:2379`,
          '--listen-peer-urls', 'http://0.0.0.0:2380',
          '--initial-advertise-peer-urls', `http://${name}:2380`,
          '--initial-cluster', initialCluster,
          '--initial-cluster-state', 'new',
          '--heartbeat-interval', '10',
          '--election-timeout', '100',
          '--logger', 'zap',
          '--log-level', 'error',
        ])
        .withWaitStrategy(Wait.forHttp('/health', 2379).forResponsePredicate((body) => body.includes('"true"')))
        .start(),
    ),
  );
  const endpoints = started.map((c, i) => `http://${c.getHost()}:${hostPorts[i]!}`);
  const containerOf = (i: number) => {
    const c = started[i];
    if (c === undefined) throw new RangeError(`no etcd member ${i} (have ${started.length})`);
    return runtime.container.getById(c.getId());
  };
  const healthy = (i: number) => waitHealthy(endpoints[i]!, () => `container ${started[i]!.getId()}`, () => true);
  let stopped = false;
  return {
    endpoints,
    dataDir: '/etcd-data',
    mode: 'container',
    tls: undefined,
    stop: async () => {
      if (stopped) return;
      stopped = true;
      await Promise.all(started.map((c) => c.stop({ remove: true, removeVolumes: true })));
      await network.stop();
    },
    stopMember: async (i) => {
      await runtime.container.stop(containerOf(i), { timeout: KILL_AFTER_MS / 1000 });
    },
    startMember: async (i) => {
      await runtime.container.start(containerOf(i));
      await healthy(i);
    },
    restartMember: async (i) => {
      await runtime.container.stop(containerOf(i), { timeout: KILL_AFTER_MS / 1000 });
      await runtime.container.start(containerOf(i));
      await healthy(i);
    },
    pauseMember: async (i) => {
      await containerOf(i).pause();
    },
    resumeMember: async (i) => {
      await containerOf(i).unpause();
    },
    pid: () => undefined,
  };
}
