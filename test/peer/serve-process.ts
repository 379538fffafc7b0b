/**
 * Spawns `kvtier serve` from dist/ as a real second process, reads its JSON log lines, and kills
 * whatever it started when the test file ends.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const CLI = fileURLToPath(new URL('../../dist/apps/cli/main.js', import.meta.url));
export const TOKEN = 'kvtier-test-secret-0123456789abcdef';

export interface ServeOptions {
  dir?: string;
  blockBytes: number;
  hostBytes?: number;
  fileBytes?: number;
  /** Absent: the extra arguments name the secrets (serve --tenants). */
  tokenFile?: string;
  port?: number;
  extra?: string[];
  /** Added to the child's environment (a loader path, say). */
  env?: Record<string, string>;
}

export interface ServeProcess {
  port: number;
  child: ChildProcess;
  logs: Record<string, unknown>[];
  stderr(): string;
  /** Resolves with the exit code and signal. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Waits for a log line with this event. */
  waitFor(event: string, ms?: number): Promise<Record<string, unknown>>;
}

const started = new Set<ChildProcess>();

/** Kills every server a test started (afterAll/afterEach). */
export function killAll(): void {
  for (const c of started) {
    if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  }
  started.clear();
}

export function writeToken(dir: string, token = TOKEN): string {
  const path = join(dir, 'token');
  writeFileSync(path, `${token}\n`, { mode: 0o600 });
  return path;
}

export function serveArgs(o: ServeOptions): string[] {
  const args = [
    'serve',
    '--listen',
    `127.0.0.1:${o.port ?? 0}`,
    '--block-bytes',
    String(o.blockBytes),
    ...(o.tokenFile !== undefined ? ['--token-file', o.tokenFile] : []),
  ];
  if (o.hostBytes !== undefined) args.push('--host-bytes', String(o.hostBytes));
  if (o.dir !== undefined) args.push('--dir', o.dir, '--file-bytes', String(o.fileBytes));
  return [...args, ...(o.extra ?? [])];
}

export function startServe(o: ServeOptions): Promise<ServeProcess> {
  const child = spawn(process.execPath, [CLI, ...serveArgs(o)], {
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(o.env ? { env: { ...process.env, ...o.env } } : {}),
  });
  started.add(child);
  const logs: Record<string, unknown>[] = [];
  const waiters: { event: string; resolve(l: Record<string, unknown>): void }[] = [];
  let err = '';
  let buffered = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  child.stdout.on('data', (d: Buffer) => {
    buffered += d.toString();
    let nl: number;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      let parsed: Record<string, unknown>;
      try {
        parsed = JSON.parse(line) as Record<string, unknown>;
      } catch {
        parsed = { event: 'unparsed', line };
      }
      logs.push(parsed);
      for (const w of [...waiters]) {
        if (w.event === parsed.event) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(parsed);
        }
      }
    }
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    child.on('exit', (code, signal) => r({ code, signal })),
  );
  const waitFor = (event: string, ms = 20_000): Promise<Record<string, unknown>> => {
    const seen = logs.find((l) => l.event === event);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no '${event}' log line within ${ms} ms; stderr: ${err}`)),
        ms,
      );
      waiters.push({
        event,
        resolve: (l) => {
          clearTimeout(timer);
          resolve(l);
        },
      });
      void exited.then(({ code, signal }) => {
        clearTimeout(timer);
        reject(new Error(`serve exited (${code ?? signal}) before '${event}': ${err}`));
      });
    });
  };
  return waitFor('listening').then((l) => ({
    port: l.port as number,
    child,
    logs,
    stderr: () => err,
    exited,
    waitFor,
    stop: (signal: NodeJS.Signals = 'SIGTERM') => {
      child.kill(signal);
      return exited;
    },
  }));
}

/** Runs the CLI to completion (for commands that should fail fast). */
export function runCli(
  args: string[],
  env?: Record<string, string>,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      ...(env ? { env: { ...process.env, ...env } } : {}),
    });
    started.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}
