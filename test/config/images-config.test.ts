// The images section (ImportImage's transport policy): defaults, DEBVISOR_RPCD_IMAGES_* overrides,
// and the refusal of malformed networks and unknown formats. images_dir stays where it was.
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/load.js';

const noFile = () => false;

function problems(env: Record<string, string>): string {
  try {
    loadConfig({ env }, noFile);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems.join('\n');
  }
  throw new Error('expected a ConfigError');
}

describe('images configuration', () => {
  it('defaults: https only, no allowed networks, 50 GiB, the system CAs, raw and qcow2', () => {
    const { config } = loadConfig({ env: {} }, noFile);
    expect(config.images).toEqual({ allow_http: false, allowed_networks: [], max_bytes: 50 * 1024 ** 3, ca_file: '', allowed_formats: ['raw', 'qcow2'] });
    expect(config.images_dir).toBe('/var/lib/debvisor/images');
  });

  it('every key is set by DEBVISOR_RPCD_IMAGES_*, next to DEBVISOR_RPCD_IMAGES_DIR', () => {
    const { config } = loadConfig(
      {
        env: {
          DEBVISOR_RPCD_IMAGES_ALLOW_HTTP: 'true',
          DEBVISOR_RPCD_IMAGES_ALLOWED_NETWORKS: '127.0.0.0/8, fd00::/8,10.1.2.3',
          DEBVISOR_RPCD_IMAGES_MAX_BYTES: '1048576',
          DEBVISOR_RPCD_IMAGES_CA_FILE: '/etc/debvisor/image-ca.pem',
          DEBVISOR_RPCD_IMAGES_ALLOWED_FORMATS: 'raw,qcow2,vmdk',
          DEBVISOR_RPCD_IMAGES_DIR: '/srv/images',
        },
      },
      noFile,
    );
    expect(config.images).toEqual({
      allow_http: true,
      allowed_networks: ['127.0.0.0/8', 'fd00::/8', '10.1.2.3'],
      max_bytes: 1048576,
      ca_file: '/etc/debvisor/image-ca.pem',
      allowed_formats: ['raw', 'qcow2', 'vmdk'],
    });
    expect(config.images_dir).toBe('/srv/images');
  });

  it.each(['10.0.0.0/33', 'localhost', '10.0.0.0/8/8', 'fd00::/129', '10.0.0.0/-1', '10.0.0.0/'])('refuses the allowed network %j naming the variable', (network) => {
    expect(problems({ DEBVISOR_RPCD_IMAGES_ALLOWED_NETWORKS: `127.0.0.0/8,${network}` })).toMatch(/DEBVISOR_RPCD_IMAGES_ALLOWED_NETWORKS: images.allowed_networks.*CIDR/);
  });

  it('refuses formats outside raw, qcow2, vmdk, vdi and an empty list', () => {
    expect(problems({ DEBVISOR_RPCD_IMAGES_ALLOWED_FORMATS: 'raw,luks' })).toContain('images.allowed_formats');
    expect(() => loadConfig({ env: { DEBVISOR_RPCD_IMAGES_MAX_BYTES: '0' } }, noFile)).toThrow(ConfigError);
  });
});
