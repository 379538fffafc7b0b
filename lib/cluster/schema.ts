/**
 * The index's layout in Redis (docs/cluster.md explains the choices).
 *
 *   kvtier:nodes                  SET   every node id that joined (any format version)
 *   kvtier:{<id>}:node            HASH  the node's lease: format, instance, address, capacity,
 *                                       fill, renewedAt; expires unless renewed
 *   kvtier:{<id>}:v1:blocks       SET   raw block keys the node holds; expires with the lease
 *   kvtier:{<id>}:v1:blocks:sync  SET   a full resync being built, renamed over :blocks at once
 *
 * Everything of one node shares the hash tag {<id>}: one hash slot, so the scripts below touch
 * only keys of one slot and run unchanged on Redis Cluster, where different nodes land on
 * different shards. The registry and the node hash carry no format version in their names, so a
 * node of another kvtier format is still seen (and ignored, with a log line) rather than missed.
 */
import { KvtierError } from '../core/errors.js';
import { describe } from '../core/validate.js';

/** The layout version of block sets. A change to their members' meaning bumps it. */
export const INDEX_FORMAT = '1';

export const REGISTRY_KEY = 'kvtier:nodes';

const NODE_ID = /^[A-Za-z0-9._-]{1,64}$/;

export function checkNodeId(id: unknown): string {
  if (typeof id !== 'string' || !NODE_ID.test(id)) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `a node id is 1 to 64 characters of A-Z a-z 0-9 . _ -, got ${typeof id === 'string' ? JSON.stringify(id) : describe(id)}`,
    );
  }
  return id;
}

export interface NodeKeys {
  node: string;
  blocks: string;
  sync: string;
}

export function nodeKeys(id: string, format = INDEX_FORMAT): NodeKeys {
  const tag = `kvtier:{${id}}`;
  return {
    node: `${tag}:node`,
    blocks: `${tag}:v${format}:blocks`,
    sync: `${tag}:v${format}:blocks:sync`,
  };
}

/** Redis server time in ms, inside a script. */
const NOW = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)`;

/**
 * Claims node id KEYS[1] for one process (ARGV[1], a random instance id). A live lease held by
 * another instance at another address is a collision; at the same address it is this node
 * restarted, and its old entries go (the resync that follows a claim publishes the new ones).
 * ARGV: instance, address, leaseMs, format, then field/value pairs.
 */
export const CLAIM = `${NOW}
local cur = redis.call('HMGET', KEYS[1], 'instance', 'address')
if cur[1] and cur[1] ~= ARGV[1] and cur[2] ~= ARGV[2] then
  return {'conflict', cur[2] or ''}
end
if cur[1] ~= ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('HSET', KEYS[1], 'instance', ARGV[1], 'address', ARGV[2], 'leaseMs', ARGV[3],
  'format', ARGV[4], 'renewedAt', string.format('%d', now), unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return {'ok', string.format('%d', now)}`;

/**
 * Renews the lease of KEYS[1] and its blocks KEYS[2]: 'lost' when it expired, 'conflict' when
 * another instance holds it now. ARGV: instance, leaseMs, then field/value pairs.
 */
export const RENEW = `${NOW}
local cur = redis.call('HGET', KEYS[1], 'instance')
if not cur then return 'lost' end
if cur ~= ARGV[1] then return 'conflict' end
redis.call('HSET', KEYS[1], 'renewedAt', string.format('%d', now), unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 'ok'`;

/**
 * Adds and removes block keys, only while this instance holds the lease (a node that lost it
 * must not write into a successor's set): 1, or -1 when the lease is gone, 0 when another
 * instance holds it. ARGV: instance, leaseMs, count of adds, adds, removes.
 */
export const PUBLISH = `local cur = redis.call('HGET', KEYS[1], 'instance')
if not cur then return -1 end
if cur ~= ARGV[1] then return 0 end
local nAdd = tonumber(ARGV[3])
if nAdd > 0 then redis.call('SADD', KEYS[2], unpack(ARGV, 4, 3 + nAdd)) end
if #ARGV > 3 + nAdd then redis.call('SREM', KEYS[2], unpack(ARGV, 4 + nAdd)) end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1`;

/** Replaces the block set KEYS[2] with the one built in KEYS[3], at once. ARGV: instance, leaseMs. */
export const SWAP = `local cur = redis.call('HGET', KEYS[1], 'instance')
if cur ~= ARGV[1] then
  redis.call('DEL', KEYS[3])
  return 0
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('RENAME', KEYS[3], KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
else
  redis.call('DEL', KEYS[2])
end
return 1`;

/** Removes a node's lease and entries, if this instance still holds them. ARGV: instance. */
export const LEAVE = `if redis.call('HGET', KEYS[1], 'instance') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1`;

/**
 * For each node (KEYS in pairs: node hash, block set), how many leading keys of a chain it
 * holds: -1 when its lease is gone, -2 when it runs another format (ARGV[1] is ours). The chain
 * comes as one argument, each key preceded by its length in one byte: one bulk string instead
 * of hundreds halves the cost of a 256-key lookup. One round trip however long the chain.
 */
export const LOOKUP = `local blob = ARGV[2]
local chain = {}
local pos = 1
while pos <= #blob do
  local n = string.byte(blob, pos)
  chain[#chain + 1] = string.sub(blob, pos + 1, pos + n)
  pos = pos + 1 + n
end
local out = {}
for j = 1, #KEYS, 2 do
  local fmt = redis.call('HGET', KEYS[j], 'format')
  if not fmt then
    out[#out + 1] = -1
  elseif fmt ~= ARGV[1] then
    out[#out + 1] = -2
  else
    -- Probes in doubling runs (1, 2, 4, ... keys), each one SMISMEMBER: a node holding a
    -- prefix of p keys costs about 2p probes in log2(p) calls, however long the chain.
    local n = 0
    local run = 1
    local open = true
    while open and n < #chain do
      local last = math.min(n + run, #chain)
      local hit = redis.call('SMISMEMBER', KEYS[j + 1], unpack(chain, n + 1, last))
      for i = 1, #hit do
        if hit[i] == 1 then n = n + 1 else open = false break end
      end
      run = run * 2
    end
    out[#out + 1] = n
  end
end
return out`;

/** The chain argument of LOOKUP: each key's length in one byte, then its bytes. */
export function chainArgument(keys: readonly Buffer[]): Buffer {
  let size = 0;
  for (const k of keys) size += 1 + k.length;
  const out = Buffer.allocUnsafe(size);
  let at = 0;
  for (const k of keys) {
    out[at++] = k.length;
    at += k.copy(out, at);
  }
  return out;
}
