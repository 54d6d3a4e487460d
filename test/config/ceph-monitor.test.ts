// libvirt.vm_defaults.rbd_monitors: the Ceph monitors written into RBD disk sources, validated strictly.
import { describe, expect, it } from 'vitest';
import { parseCephMonitor } from '../../src/config/ceph-monitor.js';
import { ConfigError, loadConfig } from '../../src/config/load.js';

const noFile = () => false;

describe('Ceph monitor addresses', () => {
  it('accepts IPv4, bracketed IPv6 and DNS names with a port', () => {
    expect(parseCephMonitor('10.0.0.1:6789')).toEqual({ host: '10.0.0.1', port: 6789 });
    expect(parseCephMonitor('[fd00::1]:3300')).toEqual({ host: 'fd00::1', port: 3300 });
    expect(parseCephMonitor('[::ffff:10.0.0.1]:3300')).toEqual({ host: '::ffff:10.0.0.1', port: 3300 });
    expect(parseCephMonitor('mon-1.ceph.example.net:3300')).toEqual({ host: 'mon-1.ceph.example.net', port: 3300 });
  });

  it('refuses everything else', () => {
    for (const bad of [
      '',
      '10.0.0.1',
      'mon1',
      '10.0.0.1:0',
      '10.0.0.1:65536',
      '10.0.0.256:6789',
      'fd00::1:3300',
      '[10.0.0.1]:6789',
      '[fd00::1]',
      '[fe80::1%eth0]:6789',
      '[fd00::1]:',
      '10.0.0.1:+80',
      'v2:10.0.0.1:3300',
      '-mon:6789',
      'mon-:6789',
      'mon..x:6789',
      'mon_1:6789',
      "mon' name='x:6789",
      'mon"/><host name="x:6789',
      ' 10.0.0.1:6789',
      '10.0.0.1:6789,10.0.0.2:6789',
      `${'a'.repeat(64)}:6789`,
    ]) {
      expect(parseCephMonitor(bad), bad).toBeUndefined();
    }
  });

  it('comes from the environment as a comma-separated list, and a bad entry stops the start naming the key', () => {
    const { config } = loadConfig({ env: { DEBVISOR_RPCD_LIBVIRT_VM_DEFAULTS_RBD_MONITORS: '10.0.0.1:6789, [fd00::2]:3300' } }, noFile);
    expect(config.libvirt.vm_defaults.rbd_monitors).toEqual(['10.0.0.1:6789', '[fd00::2]:3300']);
    expect(loadConfig({ env: {} }, noFile).config.libvirt.vm_defaults.rbd_monitors).toEqual([]);
    let problems = '';
    try {
      loadConfig({ env: { DEBVISOR_RPCD_LIBVIRT_VM_DEFAULTS_RBD_MONITORS: '10.0.0.1:6789,mon"1:6789' } }, noFile);
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      problems = (err as ConfigError).problems.join('\n');
    }
    expect(problems).toContain('libvirt.vm_defaults.rbd_monitors');
    expect(problems).toContain('expected host:port');
  });
});
