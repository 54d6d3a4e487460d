// The storage settings the issue requires to work from the environment alone (no config file).
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/load.js';

const noFile = () => false;

describe('storage configuration from the environment', () => {
  it('enables RBD and LVM and names the images directory without a config file', () => {
    const { config, file } = loadConfig(
      {
        env: {
          DEBVISOR_RPCD_RBD_CEPH_CONF: '/tmp/ceph/ceph.conf',
          DEBVISOR_RPCD_RBD_POOLS: 'ci-pool, templates',
          DEBVISOR_RPCD_LVM_VGS: 'vg0,vg1',
          DEBVISOR_RPCD_LVM_SYSTEM_DIR: '/tmp/lvm/etc',
          DEBVISOR_RPCD_IMAGES_DIR: '/srv/images',
        },
      },
      noFile,
    );
    expect(file).toBeUndefined();
    expect(config.rbd).toMatchObject({ ceph_conf: '/tmp/ceph/ceph.conf', pools: ['ci-pool', 'templates'], rbd_path: '/usr/bin/rbd' });
    expect(config.lvm).toMatchObject({ vgs: ['vg0', 'vg1'], system_dir: '/tmp/lvm/etc' });
    expect(config.images_dir).toBe('/srv/images');
  });

  it('leaves both backends off by default', () => {
    const { config } = loadConfig({ env: {} }, noFile);
    expect(config.rbd.ceph_conf).toBe('');
    expect(config.rbd.pools).toEqual([]);
    expect(config.lvm.vgs).toEqual([]);
  });

  it('refuses a relative rbd path, naming the variable', () => {
    expect(() => loadConfig({ env: { DEBVISOR_RPCD_RBD_RBD_PATH: 'rbd' } }, noFile)).toThrow(ConfigError);
    try {
      loadConfig({ env: { DEBVISOR_RPCD_RBD_RBD_PATH: 'rbd' } }, noFile);
    } catch (err) {
      expect((err as ConfigError).problems.join('\n')).toContain('environment DEBVISOR_RPCD_RBD_RBD_PATH: rbd.rbd_path');
    }
  });
});
