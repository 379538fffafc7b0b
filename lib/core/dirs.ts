import { mkdir, stat } from 'node:fs/promises';
import { dirname } from 'node:path';

/**
 * mkdir -p, by hand: Node 20's recursive mkdir loops forever on some paths (e.g. under /proc),
 * where one level at a time fails cleanly.
 */
export async function ensureDir(dir: string): Promise<void> {
  try {
    await mkdir(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') {
      if (!(await stat(dir)).isDirectory()) throw e;
      return;
    }
    if (code !== 'ENOENT' || dirname(dir) === dir) throw e;
    await ensureDir(dirname(dir));
    await mkdir(dir);
  }
}
