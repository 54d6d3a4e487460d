// Prepares a development instance: a dev PKI and a config pointing at it, created
// once and reused. Run by scripts/dev; never used in production.
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { ensureDevPki, writeFileAtomic } from '../pki/index.js';

export async function setupDevInstance(dir: string): Promise<{ configFile: string }> {
  const root = resolve(dir);
  await mkdir(root, { recursive: true, mode: 0o700 });
  const pki = await ensureDevPki(join(root, 'pki'));
  const configFile = join(root, 'rpcd.yaml');
  if (!existsSync(configFile)) {
    const config = {
      server: { listen: '127.0.0.1:7443', shutdown_grace_seconds: 5 },
      http: { listen: '127.0.0.1:9464' },
      tls: { ca_file: pki.caCert, cert_file: pki.serverCert, key_file: pki.serverKey },
      store: { backend: 'embedded', embedded: { dir: join(root, 'state') } },
      audit: { path: join(root, 'audit', 'rpc-audit.log'), hmac_key_file: join(root, 'audit', 'hmac.key') },
      auth: { bootstrap_admins: [pki.adminPrincipal] },
      // The image library and cloud-init seeds under the dev directory (the defaults are in /var/lib).
      images_dir: join(root, 'images'),
      vms: { cloud_init_dir: join(root, 'cloud-init') },
      log: { level: 'info' },
    };
    const header = '# Development config written by scripts/dev. Edit freely: it is kept between runs.\n# See config/rpcd.example.yaml for every setting.\n';
    await writeFileAtomic(configFile, header + stringify(config), 0o644);
  }
  return { configFile };
}

if (import.meta.url === `file://${process.argv[1] ?? ''}`) {
  const dir = process.argv[2];
  if (!dir) {
    process.stderr.write('usage: setup.js DEV_DIR\n');
    process.exit(2);
  }
  const { configFile } = await setupDevInstance(dir);
  process.stdout.write(`${configFile}\n`);
}
