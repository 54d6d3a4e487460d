// The daemon's configuration: one zod schema is the single source of truth for
// keys, types, defaults and the DEBVISOR_RPCD_* environment overrides.
import { hostname } from 'node:os';
import { z } from 'zod';
import { ROLE_NAME } from '../authz/roles.js';
import { parseCephMonitor } from './ceph-monitor.js';
import { parseCidr } from './cidr.js';

const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'expected host:port, for example 127.0.0.1:7443');
const seconds = z.number().positive();
const path = z.string().min(1, 'expected a non-empty path');

export const configSchema = z.strictObject({
  server: z
    .strictObject({
      /** gRPC listen address. Not reloadable. */
      listen: hostPort.default('127.0.0.1:7443'),
      max_request_bytes: z.number().int().positive().default(1024 * 1024),
      max_response_bytes: z.number().int().positive().default(10 * 1024 * 1024),
      max_deadline_seconds: seconds.default(300),
      max_concurrent_streams: z.number().int().positive().default(1000),
      keepalive_time_seconds: seconds.default(60),
      keepalive_timeout_seconds: seconds.default(20),
      max_connection_age_seconds: seconds.default(1800),
      /**
       * After its max age a connection gets GOAWAY; calls on it may run until their deadline, so this
       * grace must cover max_deadline_seconds: a shorter one resets calls in flight (C-core clients
       * report `UNKNOWN: Stream removed`). Default: max_deadline_seconds' default plus 10 s.
       */
      max_connection_age_grace_seconds: seconds.default(310),
      shutdown_grace_seconds: z.number().nonnegative().default(15),
      /** Server reflection: for authenticated callers only, for anyone, or not served. Not reloadable. */
      reflection: z.enum(['authenticated', 'anonymous', 'off']).default('authenticated'),
      /** Open connections across all sources; more are closed at accept. */
      max_connections: z.number().int().positive().default(4096),
      /** Open connections from one remote address; more are closed at accept. */
      max_connections_per_source: z.number().int().positive().default(128),
      /** A TLS handshake not finished by then is aborted. Not reloadable. */
      handshake_timeout_seconds: seconds.default(10),
      /** A connection idle this long without having completed an authenticated call is closed. */
      first_call_timeout_seconds: seconds.default(30),
    })
    .refine((server) => server.max_connection_age_grace_seconds >= server.max_deadline_seconds, {
      path: ['max_connection_age_grace_seconds'],
      message: 'must be at least server.max_deadline_seconds: a call still running when its connection reaches max_connection_age_seconds would be reset',
    })
    .prefault({}),
  tls: z
    .strictObject({
      ca_file: path.default('/etc/debvisor/rpc/ca-cert.pem'),
      cert_file: path.default('/etc/debvisor/rpc/server-cert.pem'),
      key_file: path.default('/etc/debvisor/rpc/server-key.pem'),
      /** The certificate monitor: expiry checks, renewal and picking up replaced files (see cert-monitor.ts). */
      renewal: z
        .strictObject({
          /** external: another tool replaces the files; local-ca: the daemon signs with ca_key_file; command: run `command`. */
          mode: z.enum(['external', 'local-ca', 'command']).default('external'),
          /** How often the expiry is checked (a renewal that falls due sooner is scheduled for then). */
          check_interval_seconds: seconds.default(3600),
          /** Renew once this fraction of the lifetime has passed ... */
          renew_at_lifetime_fraction: z.number().gt(0).lte(1).default(0.667),
          /** ... or fewer than this many days are left, whichever comes first. */
          renew_before_days: z.number().nonnegative().default(30),
          /** Renew up to this fraction of the time-to-renewal early (fixed per certificate), so a fleet does not renew at once. */
          jitter_fraction: z.number().min(0).max(0.5).default(0.05),
          /** local-ca: lifetime of the certificates the daemon issues. */
          validity_days: z.number().positive().default(90),
          /** local-ca: the CA private key (its certificate must be in ca_file). */
          ca_key_file: path.default('/etc/debvisor/rpc/ca-key.pem'),
          /** command: argv run without a shell; it must rewrite cert_file and key_file. */
          command: z.array(z.string().min(1)).default([]),
          command_timeout_seconds: seconds.default(120),
          /** The bundle the server certificate must chain to. Empty: ca_file. */
          chain_ca_file: z.string().default(''),
          /** SANs ("DNS:x", "IP:y", "URI:z") a new certificate must carry. Empty: those of the certificate being replaced. */
          required_sans: z.array(z.string().regex(/^(DNS|IP|URI):.+$/i, 'expected DNS:name, IP:address or URI:uri')).default([]),
          /** Stat poll of the files, the fallback when file-system events are missed. */
          file_poll_interval_ms: z.number().int().positive().default(1000),
        })
        .prefault({}),
    })
    .prefault({}),
  http: z
    .strictObject({
      /** Prometheus /metrics, /healthz and /readyz. */
      listen: hostPort.default('127.0.0.1:9464'),
    })
    .prefault({}),
  log: z
    .strictObject({
      level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal']).default('info'),
    })
    .prefault({}),
  node: z
    .strictObject({
      /** This host's name in the cluster: operations record where they run. Default: the hostname. */
      name: z.string().min(1).max(253).default(hostname()),
    })
    .prefault({}),
  nodes: z
    .strictObject({
      /** How often nodes heartbeat (NodeService.Heartbeat); a node's liveness lease lasts 3 intervals. */
      heartbeat_interval_seconds: z.number().int().positive().max(3600).default(10),
      /** Register this daemon's own host (node.name) and heartbeat it, so a cluster of daemons sees itself. */
      self_register: z.boolean().default(false),
    })
    .prefault({}),
  operations: z
    .strictObject({
      /** Finished operations are kept this long, then deleted. */
      retention_hours: z.number().positive().default(168),
      /** Lease of this daemon's concurrent-operation slots: freed this long after the daemon dies. */
      slot_lease_seconds: z.number().int().min(2).default(15),
    })
    .prefault({}),
  /** The event journal and EventService.WatchEvents (docs/events.md). */
  events: z
    .strictObject({
      /** At most one store write of events per this window and node; a quiet spell's first event goes at once. */
      batch_ms: z.number().int().min(1).max(1000).default(50),
      /** Retained window: at least the newest this-many events (resume tokens within it stay valid) ... */
      retain_events: z.number().int().positive().default(10_000),
      /** ... and at least every event of this many seconds, whichever is larger. */
      retain_seconds: seconds.default(900),
      /** A HEARTBEAT carrying the current resume token after this long without an event on a stream. */
      heartbeat_seconds: seconds.default(30),
      /** A stream one of whose writes is held back (the client does not read) while more than this many events arrive gets RESYNC_REQUIRED (too_slow). */
      stream_buffer: z.number().int().positive().default(1000),
      /** Concurrent WatchEvents streams of one principal; more are refused (RESOURCE_EXHAUSTED). */
      max_streams_per_principal: z.number().int().positive().default(16),
      /** Concurrent WatchEvents streams of the daemon. */
      max_streams: z.number().int().positive().default(2000),
    })
    .prefault({}),
  libvirt: z
    .strictObject({
      /** Connection URI of the libvirtd VmService drives (virsh --connect), e.g. test+unix:///default?socket=/path. */
      uri: z
        .string()
        .regex(/^[a-z][a-z0-9+.-]*:\/\/\S*$/i, 'expected a libvirt URI such as qemu:///system')
        .default('qemu:///system'),
      /** Absolute path of virsh. */
      virsh_path: z.string().startsWith('/', 'expected an absolute path').default('/usr/bin/virsh'),
      /** virsh processes run at once; more calls wait their turn. */
      max_concurrent: z.number().int().positive().default(4),
      /** A virsh call still running after this is killed (the RPC fails with DEADLINE_EXCEEDED or UNAVAILABLE). */
      command_timeout_seconds: seconds.default(60),
      /** The live VM inventory ListVms, GetVm and the heartbeat read (docs/vm-inventory.md). */
      inventory: z
        .strictObject({
          /** Full resync period, besides the resyncs at start and after the event subscription restarts. */
          resync_interval_seconds: seconds.default(300),
          /** While libvirt is unreachable, ListVms and GetVm answer from the stale inventory (with stale_since) for this long, then UNAVAILABLE. */
          max_staleness_seconds: seconds.default(60),
          /** A change to a VM seen this long after a VmService call on it is attributed to that call (the event's actor and trace id). */
          attribution_window_seconds: seconds.default(10),
          /** Longest wait between restarts of a failing `virsh event` subscription (it starts at 0.1 s and doubles). */
          subscription_backoff_max_seconds: seconds.default(10),
        })
        .prefault({}),
      /** What CreateVm writes when a spec leaves it open. */
      vm_defaults: z
        .strictObject({
          /** <domain type>: kvm in production, qemu (TCG) without /dev/kvm, test for libvirt's test driver. */
          domain_type: z.enum(['kvm', 'qemu', 'test']).default('kvm'),
          /** QEMU machine type when the spec names none. */
          machine_type: z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, 'a machine type such as q35 or pc-q35-8.2').default('q35'),
          /** CPU mode when the spec names none. */
          cpu_mode: z.enum(['host-passthrough', 'host-model']).default('host-model'),
          /** libvirt secret (UUID) holding the Ceph key for RBD disks; empty: no <auth> (the ceph.conf default client). */
          rbd_secret_uuid: z.string().regex(/^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?$/, 'a libvirt secret UUID').default(''),
          /** Ceph monitors (host:port) written into RBD disk sources, so QEMU needs no ceph.conf of its own; empty: none (QEMU reads /etc/ceph/ceph.conf). */
          rbd_monitors: z
            .array(z.string().refine((value) => parseCephMonitor(value) !== undefined, 'expected host:port, for example 10.0.0.1:6789 or [fd00::1]:3300'))
            .max(16)
            .default([]),
        })
        .prefault({}),
    })
    .prefault({}),
  migration: z
    .strictObject({
      /**
       * How a daemon reaches another node's libvirt (migration target, failover target): {hostname} is
       * replaced by the node's hostname, validated (RFC 1123) first. The result goes to argv, never a shell.
       */
      target_uri_template: z
        .string()
        .regex(/^[a-z][a-z0-9+.-]*:\/\/\S*$/i, 'expected a libvirt URI such as qemu+ssh://{hostname}/system')
        .refine((value) => value.includes('{hostname}'), 'must contain {hostname}')
        .default('qemu+ssh://{hostname}/system'),
      /** How often a running migration's progress is read (virsh domjobinfo). */
      progress_poll_ms: z.number().int().min(50).max(60_000).default(500),
      /** A migration still running after this is aborted (domjobabort) and rolled back. */
      timeout_seconds: seconds.default(3600),
    })
    .prefault({}),
  /** Ceph RBD volumes (StorageService). Empty ceph_conf: RBD is off on this node. */
  rbd: z
    .strictObject({
      /** ceph.conf of the cluster (rbd --conf). Setting it enables RBD. */
      ceph_conf: z.string().default(''),
      /** Pools StorageService may use; any other pool is refused before rbd runs. */
      pools: z.array(z.string().min(1)).default([]),
      /** Ceph client id (rbd --id); empty: the ceph.conf default (admin). */
      id: z.string().default(''),
      /** Keyring of that client (rbd --keyring); empty: the ceph.conf default. */
      keyring: z.string().default(''),
      /** Absolute path of rbd. */
      rbd_path: z.string().startsWith('/', 'expected an absolute path').default('/usr/bin/rbd'),
      /** Absolute path of a python3 with python3-rbd (ceph-common's dependency): RecomputeQuota reads every image's owner through librbd in one process. */
      python_path: z.string().startsWith('/', 'expected an absolute path').default('/usr/bin/python3'),
      /** rbd processes run at once; more calls wait their turn. */
      max_concurrent: z.number().int().positive().default(4),
      /** An rbd call still running after this is killed (flatten and delete of large images take long). */
      command_timeout_seconds: seconds.default(3600),
      /** How long rbd waits for a monitor or OSD to answer one request: an unreachable cluster is UNAVAILABLE after this, not a command timeout. */
      cluster_timeout_seconds: seconds.default(30),
    })
    .prefault({}),
  /** LVM logical volumes (StorageService). Empty vgs: LVM is off on this node. */
  lvm: z
    .strictObject({
      /** Volume groups StorageService may use; any other VG is refused before an lvm tool runs. */
      vgs: z.array(z.string().min(1)).default([]),
      /** Passed to the lvm tools as LVM_SYSTEM_DIR (a private lvm.conf); empty: /etc/lvm. */
      system_dir: z.string().default(''),
      /** Absolute path of the lvm multi-call binary (lvcreate, lvs, ... run as `lvm lvcreate`). */
      lvm_path: z.string().startsWith('/', 'expected an absolute path').default('/sbin/lvm'),
      /** Copy-on-write space of a new (thick) snapshot, as a percentage of its origin's size. */
      snapshot_cow_percent: z.number().int().min(1).max(100).default(100),
      /** lvm processes run at once (they take the VG lock anyway). */
      max_concurrent: z.number().int().positive().default(2),
      command_timeout_seconds: seconds.default(120),
    })
    .prefault({}),
  /** ProvisionVolume reads images only from this directory (paths relative to it; no escaping it). */
  images_dir: path.default('/var/lib/debvisor/images'),
  /** ImageService imports (docs: the SSRF guard and TLS trust in src/images/fetch.ts). */
  images: z
    .strictObject({
      /** Plain http image URLs (and redirects to them); https only when false. */
      allow_http: z.boolean().default(false),
      /** CIDRs exempt from the SSRF guard (loopback, link-local, private, ... are refused otherwise). */
      allowed_networks: z.array(z.string().refine((value) => parseCidr(value) !== undefined, 'expected a CIDR such as 10.20.0.0/16 or fd00::/8')).default([]),
      /** Largest image an import downloads; a bigger Content-Length is refused at once, a longer body while it streams. */
      max_bytes: z.number().int().positive().default(50 * 1024 ** 3),
      /** PEM bundle image servers' certificates must chain to. Empty: the system CAs. Never the client CA (tls.ca_file). */
      ca_file: z.string().default(''),
      /** Image formats accepted (imports and ProvisionVolume); vmdk (single-file only) and vdi are opt-in. */
      allowed_formats: z
        .array(z.enum(['raw', 'qcow2', 'vmdk', 'vdi']))
        .min(1)
        .default(['raw', 'qcow2']),
    })
    .prefault({}),
  qemu_img: z
    .strictObject({
      /** Absolute path of qemu-img (format detection and conversion into volumes). */
      path: z.string().startsWith('/', 'expected an absolute path').default('/usr/bin/qemu-img'),
      /** `qemu-img info` is killed after this. */
      info_timeout_seconds: seconds.default(30),
      /** `qemu-img convert` (writing a whole image) is killed after this. */
      convert_timeout_seconds: seconds.default(7200),
    })
    .prefault({}),
  /** VMs made by CreateVm. */
  vms: z
    .strictObject({
      /** cloud-init NoCloud seed ISOs, one per VM (<dir>/<vm>.iso; docs/cloud-init.md). Created 0711 if missing. */
      cloud_init_dir: path.default('/var/lib/debvisor/cloud-init'),
      /** Absolute path of genisoimage (Debian genisoimage), which writes the seed ISOs. */
      genisoimage_path: z.string().startsWith('/', 'expected an absolute path').default('/usr/bin/genisoimage'),
      /**
       * Seed ISOs are 0600 (libvirt's dynamic_ownership hands them to QEMU at start). true: 0644, for a
       * libvirt that does not relabel files (qemu:///session as another user); user-data may hold secrets.
       */
      cloud_init_readable_by_all: z.boolean().default(false),
    })
    .prefault({}),
  store: z
    .strictObject({
      /** embedded: this host only (node:sqlite). etcd: the cluster every host shares. Not reloadable. */
      backend: z.enum(['embedded', 'etcd']).default('embedded'),
      embedded: z
        .strictObject({
          dir: path.default('/var/lib/debvisor/rpcd/store'),
        })
        .prefault({}),
      etcd: z
        .strictObject({
          endpoints: z.array(z.url({ protocol: /^https?$/ })).min(1).default(['http://127.0.0.1:2379']),
          /** mTLS to etcd: CA bundle, client certificate and key. Leave empty for plain http endpoints. */
          ca_file: z.string().default(''),
          cert_file: z.string().default(''),
          key_file: z.string().default(''),
          /** etcd user authentication; the password is read from a file (0600), never written in this config. */
          username: z.string().default(''),
          password_file: z.string().default(''),
          dial_timeout_ms: z.number().int().positive().default(3000),
          /** Budget of one store call (capped by the deadline of the RPC it serves). */
          request_timeout_ms: z.number().int().positive().default(5000),
          /** How long one member may take to answer a read before the next member is asked (at most half request_timeout_ms). */
          attempt_timeout_ms: z.number().int().positive().default(1000),
        })
        .prefault({}),
      /** History older than the newest retain_revisions is compacted this often (both backends). */
      compaction_interval_seconds: seconds.default(300),
      retain_revisions: z.number().int().positive().default(10_000),
      /** How often readiness probes the store; NOT_SERVING follows an unreachable store within ~2 intervals. */
      probe_interval_ms: z.number().int().positive().default(1000),
    })
    .prefault({}),
  auth: z
    .strictObject({
      /** Certificate principals that are always admin: how the first administrator exists. */
      bootstrap_admins: z.array(z.string().min(1)).default([]),
      /** Roles bound to certificate principals by config (reloadable), e.g. the panel's → operator. Not settable by environment. */
      default_bindings: z.record(z.string().min(1), z.array(z.string().regex(ROLE_NAME, 'a role name: lower-case letters, digits, _ and -, starting with a letter'))).default({}),
      /** CRL (PEM) of the client CA: certificates listed are refused. Empty: none. */
      crl_file: z.string().default(''),
      /**
       * How long past its nextUpdate the CRL is still believed (late refresh, clock skew). After that
       * every client certificate is refused and the daemon is NOT_SERVING until a current CRL is loaded.
       */
      crl_grace_seconds: z.number().nonnegative().default(3600),
      /** Authentication failures per source address per window before it is blocked (API-key and anonymous calls only). */
      max_failures_per_minute: z.number().int().positive().default(5),
      /** Wrong secrets for one known API key id per window before that key id is blocked; capped below max_failures_per_minute. */
      max_key_failures_per_minute: z.number().int().nonnegative().default(3),
      /** The window both limits count in. */
      failure_window_seconds: z.number().positive().default(60),
      block_minutes: z.number().positive().default(5),
      /** API key lifetime when CreateApiKey gives none, and the longest allowed. */
      api_key_default_ttl_days: z.number().positive().default(90),
      api_key_max_ttl_days: z.number().positive().default(365),
      /** How long a rotated-out key keeps working when RotateApiKey gives no overlap. */
      api_key_rotation_overlap_seconds: z.number().nonnegative().default(3600),
      /**
       * Certificates holding access:impersonate acting for users (impersonate-user/-group headers).
       * Off by default: the headers are then refused.
       */
      impersonation: z
        .strictObject({
          enabled: z.boolean().default(false),
          /** Impersonated calls must also carry a live session token (impersonate-session), from CreateUserSession. */
          require_session: z.boolean().default(false),
          /** A session's lifetime when CreateUserSession gives none. */
          session_ttl_seconds: z.number().int().positive().default(12 * 3600),
          /** The longest session CreateUserSession may ask for. */
          max_session_ttl_seconds: z.number().int().positive().default(7 * 24 * 3600),
        })
        .refine((s) => s.session_ttl_seconds <= s.max_session_ttl_seconds, { message: 'session_ttl_seconds must not exceed max_session_ttl_seconds', path: ['session_ttl_seconds'] })
        .prefault({}),
    })
    .prefault({}),
  quota: z
    .strictObject({
      /** Per-principal limits unless SetQuota overrides them. */
      defaults: z
        .strictObject({
          snapshots: z.number().int().nonnegative().default(100),
          storage_gb: z.number().int().nonnegative().default(1000),
          concurrent_operations: z.number().int().nonnegative().default(5),
          vms: z.number().int().nonnegative().default(20),
          vcpus: z.number().int().nonnegative().default(64),
          memory_gb: z.number().int().nonnegative().default(256),
          images_gb: z.number().int().nonnegative().default(200),
        })
        .prefault({}),
      /** RecomputeQuota (which lists every pool and VG): one at a time, and the next no sooner than this after the last ended. */
      recompute_min_interval_seconds: z.number().nonnegative().default(10),
    })
    .prefault({}),
  rate_limit: z
    .strictObject({
      /** Requests per minute per principal, by role; a principal gets its most generous role's limit. */
      per_role_per_minute: z
        .record(z.string(), z.number().int().positive())
        .default({ admin: 1000, operator: 500, developer: 200, monitor: 200, viewer: 100 }),
      /** For principals whose roles are not listed above. */
      default_per_minute: z.number().int().positive().default(100),
      /** All principals together. */
      global_per_minute: z.number().int().positive().default(30_000),
      /** Health and reflection messages per source address (they may come before, or without, authentication). */
      anonymous_per_source_per_minute: z.number().int().positive().default(600),
    })
    .prefault({}),
  audit: z
    .strictObject({
      /** JSON lines, rotated daily to <name>-YYYY-MM-DD<ext> next to it. */
      path: path.default('/var/log/debvisor/rpc-audit.log'),
      /** HMAC-SHA256 key of the tamper-evident chain (mode 0600; created if missing). */
      hmac_key_file: path.default('/etc/debvisor/rpc/audit-hmac.key'),
      /** metadata: who, what, outcome. request: also the request fields (secrets redacted). */
      level: z.enum(['metadata', 'request']).default('metadata'),
      retain_files: z.number().int().positive().default(30),
      /** Free bytes on the audit filesystem below which a SECURITY event and audit_low_space say so (0: never). */
      reserve_free_bytes: z.number().int().nonnegative().default(1024 ** 3),
      /** Per source address: records of unauthenticated calls and AUTH_FAILED kept per interval; the rest are counted. */
      unauthenticated_records_per_source: z.number().int().nonnegative().default(20),
      unauthenticated_interval_seconds: z.number().positive().default(10),
    })
    .prefault({}),
});

export type Config = z.infer<typeof configSchema>;
