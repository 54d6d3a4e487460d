// The SSRF guard's address rules on their own: what is refused by default, what an allow-list
// reopens, and the IPv6 forms that embed an IPv4 address.
import { describe, expect, it } from 'vitest';
import { AddressPolicy, parseCidr } from '../../src/images/address-policy.js';

describe('AddressPolicy', () => {
  const strict = new AddressPolicy();

  it.each([
    '127.0.0.1', '127.255.255.254', '10.1.2.3', '172.16.0.1', '172.31.255.255', '192.168.0.1', '100.64.0.1', '100.127.255.255',
    '169.254.169.254', '169.254.0.1', '0.0.0.0', '0.1.2.3', '224.0.0.1', '239.255.255.255', '240.0.0.1', '255.255.255.255',
    '192.0.2.1', '198.51.100.7', '203.0.113.9', '198.18.0.1', '192.0.0.8',
    '::', '::1', 'fe80::1', 'febf::1', 'fc00::1', 'fd12:3456::1', 'ff02::1', 'fec0::1', '2001:db8::1', '100::1',
    '::ffff:127.0.0.1', '::ffff:7f00:1', '::ffff:169.254.169.254', '::ffff:10.0.0.1', '::127.0.0.1', '::a9fe:a9fe',
    '64:ff9b::127.0.0.1', '64:ff9b::a9fe:a9fe', '64:ff9b::a00:1', '64:ff9b:1::1', '2002:7f00:1::1', '2002:a9fe:a9fe::', '2001::1',
    'not an address', '', '1.2.3',
  ])('refuses %j by default', (address) => {
    expect(strict.permits(address)).toBe(false);
  });

  it.each(['8.8.8.8', '1.1.1.1', '93.184.215.14', '100.63.255.255', '100.128.0.1', '172.32.0.1', '2606:4700:4700::1111', '2a00:1450:4001::200e', '::ffff:8.8.8.8', '64:ff9b::808:808'])(
    'permits the public address %s',
    (address) => {
      expect(strict.permits(address)).toBe(true);
    },
  );

  it('an allow-listed network is permitted, IPv4-mapped and NAT64 forms of it too; nothing else is', () => {
    const policy = new AddressPolicy(['127.0.0.0/8', '10.20.0.0/16', 'fd00:1::/32']);
    for (const address of ['127.0.0.1', '::ffff:127.0.0.1', '10.20.3.4', '64:ff9b::a14:304', 'fd00:1::5']) expect(policy.permits(address), address).toBe(true);
    for (const address of ['10.21.0.1', '169.254.169.254', '::1', 'fd00:2::1']) expect(policy.permits(address), address).toBe(false);
  });

  it('check() names the host, never the resolved address, to the caller', () => {
    try {
      strict.check('10.0.0.7', 'images.internal');
      expect.unreachable();
    } catch (err) {
      expect(err).toMatchObject({ failure: 'address_refused', meaning: 'unsupported' });
      expect((err as { safeMessage: string }).safeMessage).toContain('images.internal');
      expect((err as { safeMessage: string }).safeMessage).not.toContain('10.0.0.7');
    }
  });

  it('refuses malformed allow-list entries', () => {
    for (const bad of ['10.0.0.0/33', 'fd00::/129', 'example.com', '10.0.0.0/8/1', '10.0.0.0/', '10.0.0.0/0x8']) {
      expect(parseCidr(bad), bad).toBeUndefined();
      expect(() => new AddressPolicy([bad])).toThrow(TypeError);
    }
    expect(parseCidr(' 10.0.0.0/8 ')).toEqual({ address: '10.0.0.0', prefix: 8, family: 'ipv4' });
    expect(parseCidr('::1')).toEqual({ address: '::1', prefix: 128, family: 'ipv6' });
  });
});
