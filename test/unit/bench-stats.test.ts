import { describe, expect, it } from 'vitest';

import { isKvtierError } from '../../lib/core/errors.js';
import { median, permutation, sequence } from '../../lib/apps/bench/stats.js';
import { formatSize, parseSize, parseSizeList } from '../../lib/apps/sizes.js';

describe('parseSize', () => {
  it('reads plain byte counts and binary units, with or without the i', () => {
    expect(parseSize('1048576')).toBe(1048576);
    expect(parseSize('256KiB')).toBe(256 * 1024);
    expect(parseSize('4MiB')).toBe(4 * 2 ** 20);
    expect(parseSize('1GiB')).toBe(2 ** 30);
    expect(parseSize('1G')).toBe(2 ** 30);
    expect(parseSize('1g')).toBe(2 ** 30);
    expect(parseSize('2MB')).toBe(2 * 2 ** 20);
    expect(parseSize('512B')).toBe(512);
    expect(parseSize('1.5MiB')).toBe(1.5 * 2 ** 20);
    expect(parseSize(' 8 KiB ')).toBe(8192);
    expect(parseSize('1TiB')).toBe(2 ** 40);
    expect(parseSize(4096)).toBe(4096);
  });

  it.each(['', 'abc', '-1', '1QiB', '1.5', '0.1KiB', '1e3', '1 GiB x', 'NaN'])(
    'refuses %j with KVTIER_BAD_ARGUMENT',
    (text) => {
      let caught: unknown;
      try {
        parseSize(text, 'block size');
      } catch (e) {
        caught = e;
      }
      expect(isKvtierError(caught, 'KVTIER_BAD_ARGUMENT')).toBe(true);
      expect((caught as Error).message).toMatch(/block size/);
    },
  );

  it('refuses numbers that are not whole byte counts', () => {
    expect(() => parseSize(-1)).toThrow(/whole number/);
    expect(() => parseSize(1.5)).toThrow(/whole number/);
    expect(() => parseSize('99999999TiB')).toThrow(/whole number/);
  });

  it('reads comma-separated lists', () => {
    expect(parseSizeList('256KiB,1MiB, 4MiB')).toEqual([262144, 1048576, 4194304]);
    expect(() => parseSizeList('1MiB,,2MiB')).toThrow(/comma-separated/);
  });

  it('formats sizes with the largest unit that divides them', () => {
    expect(formatSize(2 ** 30)).toBe('1GiB');
    expect(formatSize(262144)).toBe('256KiB');
    expect(formatSize(1536 * 1024)).toBe('1536KiB');
    expect(formatSize(1000)).toBe('1000B');
    for (const s of ['256KiB', '1MiB', '4MiB', '1GiB']) expect(formatSize(parseSize(s))).toBe(s);
  });
});

describe('median', () => {
  it('takes the middle value, or the mean of the middle two', () => {
    expect(median([3])).toBe(3);
    expect(median([5, 1, 3])).toBe(3);
    expect(median([4, 1, 3, 2])).toBe(2.5);
    expect(() => median([])).toThrow(RangeError);
  });

  it('does not reorder its input', () => {
    const values = [3, 1, 2];
    median(values);
    expect(values).toEqual([3, 1, 2]);
  });
});

describe('block orders', () => {
  it('visits every block exactly once, in a seeded order', () => {
    const p = permutation(1000, 7);
    expect([...p].sort((a, b) => a - b)).toEqual([...sequence(1000)]);
    expect([...p]).not.toEqual([...sequence(1000)]);
    expect([...permutation(1000, 7)]).toEqual([...p]);
    expect([...permutation(1000, 8)]).not.toEqual([...p]);
    expect([...permutation(1, 1)]).toEqual([0]);
  });
});
