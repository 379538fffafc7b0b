/**
 * Real redis-server processes for the cluster tests: each on a free loopback port, with no
 * persistence, in its own temporary directory, stopped (and the directory removed) by stop().
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createServer, Socket } from 'node:net';

import { prerequisite, tempDir } from './helpers.js';

export function redisServerPath(): string | undefined {
  const r = spawnSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' });
  const path = r.stdout.trim();
  return r.status === 0 && path !== '' ? path : undefined;
}

export function redisCliPath(): string | undefined {
  const r = spawnSync('sh', ['-c', 'command -v redis-cli'], { encoding: 'utf8' });
  const path = r.stdout.trim();
  return r.status === 0 && path !== '' ? path : undefined;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (a && typeof a === 'object' ? resolve(a.port) : reject(new Error('no port'))));
    });
  });
}

/** Sends one inline command and resolves with the first reply line (or rejects). */
function ask(port: number, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = new Socket();
    let buf = '';
    sock.setTimeout(1000);
    sock.once('error', reject);
    sock.once('timeout', () => {
      sock.destroy();
      reject(new Error('timeout'));
    });
    sock.on('data', (d) => {
      buf += d.toString('utf8');
      if (buf.includes('\r\n')) {
        sock.destroy();
        resolve(buf);
      }
    });
    sock.connect(port, '127.0.0.1', () => sock.write(`${command}\r\n`));
  });
}

async function waitFor(what: string, check: () => Promise<boolean>, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      // not yet
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface RedisServerOptions {
  password?: string;
  cluster?: boolean;
  port?: number;
}

export interface RedisServer {
  readonly port: number;
  readonly url: string;
  /** Stops the server (SIGTERM) and waits for it to exit. The directory stays for start(). */
  halt(): Promise<void>;
  /** Starts it again on the same port (empty: there is no persistence). */
  start(): Promise<void>;
  /** Stops it and removes its directory. */
  stop(): Promise<void>;
}

export async function startRedis(options: RedisServerOptions = {}): Promise<RedisServer> {
  const bin = redisServerPath();
  if (!bin) throw new Error('redis-server is not installed');
  const port = options.port ?? (await freePort());
  const dir = tempDir('kvtier-redis-');
  let child: ChildProcess | undefined;
  const args = [
    '--port',
    String(port),
    '--bind',
    '127.0.0.1',
    '--save',
    '',
    '--appendonly',
    'no',
    '--dir',
    dir.path,
    '--daemonize',
    'no',
    '--loglevel',
    'warning',
  ];
  if (options.password !== undefined) args.push('--requirepass', options.password);
  if (options.cluster) {
    args.push('--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${port}.conf`);
  }
  const server: RedisServer = {
    port,
    url: `redis://${options.password !== undefined ? `:${encodeURIComponent(options.password)}@` : ''}127.0.0.1:${port}`,
    async start() {
      const c = spawn(bin, args, { stdio: ['ignore', 'ignore', 'inherit'] });
      child = c;
      let exited = false;
      c.once('exit', () => (exited = true));
      await waitFor(`redis-server on port ${port}`, async () => {
        if (exited) throw new Error('exited');
        const reply = await ask(port, 'PING');
        return reply.startsWith('+PONG') || reply.startsWith('-NOAUTH');
      });
      if (exited) throw new Error(`redis-server on port ${port} exited at start`);
    },
    async halt() {
      const c = child;
      child = undefined;
      if (!c || c.exitCode !== null || c.signalCode !== null) return;
      await new Promise<void>((resolve) => {
        c.once('exit', () => resolve());
        c.kill('SIGTERM');
      });
    },
    async stop() {
      await server.halt();
      dir.remove();
    },
  };
  await server.start();
  return server;
}

export interface RedisClusterServers {
  readonly servers: RedisServer[];
  /** A URL of one of the masters: clients discover the rest. */
  readonly url: string;
  stop(): Promise<void>;
}

/** Three masters, 16384 slots split between them, no replicas. */
export async function startRedisCluster(masters = 3): Promise<RedisClusterServers> {
  const cli = redisCliPath();
  if (!cli) throw new Error('redis-cli is not installed');
  const servers: RedisServer[] = [];
  const stop = async (): Promise<void> => {
    await Promise.all(servers.map((s) => s.stop()));
  };
  try {
    for (let i = 0; i < masters; i++) servers.push(await startRedis({ cluster: true }));
    const r = spawnSync(
      cli,
      [
        '--cluster',
        'create',
        ...servers.map((s) => `127.0.0.1:${s.port}`),
        '--cluster-replicas',
        '0',
        '--cluster-yes',
      ],
      { encoding: 'utf8', timeout: 30_000 },
    );
    if (r.status !== 0)
      throw new Error(`redis-cli --cluster create failed: ${r.stdout}${r.stderr}`);
    for (const s of servers) {
      await waitFor(`cluster state ok on ${s.port}`, async () =>
        (await ask(s.port, 'CLUSTER INFO')).includes('cluster_state:ok'),
      );
    }
  } catch (e) {
    await stop();
    throw e;
  }
  return { servers, url: servers[0]!.url, stop };
}

/** Whether the Redis tests can run: fails in CI (which installs redis-server), skips elsewhere. */
export function haveRedisServer(): boolean {
  return prerequisite(
    redisServerPath() !== undefined,
    'redis-server is not installed (apt-get install redis-server)',
  );
}
