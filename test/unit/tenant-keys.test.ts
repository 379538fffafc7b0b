import { createHmac } from 'node:crypto';

import { describe, expect, it } from 'vitest';

import { isKvtierError } from '../../lib/core/errors.js';
import { TenantKeys, tagOf } from '../../lib/warehouse/tenant-keys.js';

const secret = Buffer.alloc(32, 9);
const hmac = (key: Buffer | string, data: Buffer | string): Buffer =>
  createHmac('sha256', key).update(data).digest();

describe('tenant internal keys', () => {
  it('follow the construction docs/tenants.md gives, at the length of the key given', () => {
    const keys = new TenantKeys(secret, 'acme');
    const salt = hmac(secret, 'kvtier-tenant-salt\0acme');
    const tag = hmac(secret, 'kvtier-tenant-tag\0acme').subarray(0, 4).toString('hex');
    expect(keys.tag).toBe(tag);
    for (const bytes of [16, 24, 32]) {
      const k = Buffer.alloc(bytes, 0xab);
      const expected = tag + hmac(salt, k).toString('hex', 0, bytes - 4);
      expect(keys.internal(k)).toBe(expected);
      // Hex in any case, or raw bytes: the same key, the same internal key (memo or not).
      expect(keys.internal(k.toString('hex').toUpperCase())).toBe(expected);
      expect(keys.internal(k)).toHaveLength(bytes * 2);
      expect(tagOf(keys.internal(k))).toBe(tag);
    }
  });

  it('differ between tenants and between secrets, and refuse malformed keys', () => {
    const k = 'ab'.repeat(32);
    const a = new TenantKeys(secret, 'a').internal(k);
    expect(new TenantKeys(secret, 'b').internal(k)).not.toBe(a);
    expect(new TenantKeys(Buffer.alloc(32, 1), 'a').internal(k)).not.toBe(a);
    expect(new TenantKeys(secret, 'a').internal(k)).toBe(a);
    expect(a).not.toBe(k);
    for (const bad of ['zz', 'ab'.repeat(8 - 1), Buffer.alloc(33)]) {
      let e: unknown;
      try {
        new TenantKeys(secret, 'a').internal(bad);
      } catch (err) {
        e = err;
      }
      expect(isKvtierError(e, 'KVTIER_BAD_ARGUMENT'), String(bad)).toBe(true);
    }
  });
});
