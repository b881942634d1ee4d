"""The room directory's data in Redis: the keys, and the Lua scripts that change them.

Keys (``prefix`` defaults to ``avatar``), all on one Redis (no Cluster: the scripts touch
keys they compute):

- ``{prefix}:process:{process_id}``: hash ``url, host, port, capacity, load, clients,
  rooms, tick_p99_ms, draining, started_at, updated_at``; TTL ``ttl``, refreshed by
  each heartbeat. A process is *alive* exactly while this key exists.
- ``{prefix}:processes``: sorted set, process id → load. Draining processes leave it;
  entries whose process key has expired are pruned by the claim script.
- ``{prefix}:room:{name}``: hash ``process_id, url, updated_at``; TTL ``ttl``,
  refreshed by the owner's heartbeat. A room key whose owner is not alive counts as
  unowned.
- ``{prefix}:rooms``: hash, room name → owner's process id: the index of the room keys
  that :meth:`RoomDirectory.rooms` reads with one ``HGETALL`` instead of a ``SCAN``. Set
  with the room key (claim, heartbeat), removed with it (release); an entry whose room
  key has gone or whose owner is not alive is dropped by the next :meth:`rooms`.

Every change that must be atomic (place a room, refresh a process and its rooms,
release, read the rooms index) is one Lua script here; `server.cluster.directory`
registers them on its connection and calls them. Strings and pure functions only: no I/O.
"""

from __future__ import annotations

from typing import Any


def redis_number(x: float) -> str:
    """A float as Redis stores it (``repr``: exact, and read back by ``tonumber``)."""
    return repr(float(x))


def heartbeat_args(
    prefix: str,
    ttl_ms: int,
    process_id: str,
    url: str,
    load: float,
    draining: bool,
    now: float,
    fields: dict[str, str],
    rooms: list[str],
) -> list[Any]:
    """The ARGV of `HEARTBEAT_LUA`: this process's `fields` (its hash) and its `rooms`."""
    args: list[Any] = [
        f"{prefix}:process:",
        f"{prefix}:room:",
        ttl_ms,
        process_id,
        url,
        redis_number(load),
        "1" if draining else "0",
        redis_number(now),
        len(fields),
    ]
    for k, v in fields.items():
        args += [k, v]
    return args + rooms


# KEYS[1] room key, KEYS[2] processes sorted set, KEYS[3] rooms index.
# ARGV[1] process key prefix, ARGV[2] TTL in ms, ARGV[3] now (unix s), ARGV[4] the caller's
# process id ("" for none), ARGV[5] "1" to place an unowned room on the caller if it can
# take rooms, ARGV[6] tick p99 limit in ms ("" for none), ARGV[7] the room's name.
# Returns {owner, url, placed (0/1)} or false when no process can take the room.
CLAIM_LUA = """
local room, zset, pp = KEYS[1], KEYS[2], ARGV[1]
local ttl, now, me, here = tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local limit = tonumber(ARGV[6])
local owner = redis.call('HGET', room, 'process_id')
if owner and redis.call('EXISTS', pp .. owner) == 1 then
  if owner == me then
    redis.call('HSET', room, 'updated_at', now)
    redis.call('PEXPIRE', room, ttl)
  end
  return {owner, redis.call('HGET', room, 'url'), 0}
end
local function url_if_usable(id)
  local p = redis.call('HMGET', pp .. id, 'url', 'draining', 'tick_p99_ms')
  if not p[1] or p[2] == '1' then return false end
  local p99 = p[3] and tonumber(p[3])
  if limit and p99 and p99 > limit then return false end
  return p[1]
end
local pick, url = false, false
if here == '1' and me ~= '' then
  url = url_if_usable(me)
  if url then pick = me end
end
if not pick then
  for _, id in ipairs(redis.call('ZRANGE', zset, 0, -1)) do
    if redis.call('EXISTS', pp .. id) == 0 then
      redis.call('ZREM', zset, id)
    else
      url = url_if_usable(id)
      if url then
        pick = id
        break
      end
    end
  end
end
if not pick then return false end
redis.call('DEL', room)
redis.call('HSET', room, 'process_id', pick, 'url', url, 'updated_at', now)
redis.call('PEXPIRE', room, ttl)
redis.call('HSET', KEYS[3], ARGV[7], pick)
local cap = tonumber(redis.call('HGET', pp .. pick, 'capacity'))
if cap and cap > 0 then
  redis.call('ZADD', zset, 'XX', 'INCR', tostring(1 / cap), pick)
end
return {pick, url, 1}
"""

# KEYS[1] this process's key, KEYS[2] processes sorted set, KEYS[3] rooms index.
# ARGV[1] process key prefix, ARGV[2] room key prefix, ARGV[3] TTL in ms, ARGV[4] process
# id, ARGV[5] url, ARGV[6] load, ARGV[7] "1" if draining, ARGV[8] now, ARGV[9] n, then n
# field/value pairs for the process hash, then the names of the rooms this process serves.
# Returns {existed (0/1), lost rooms, reclaimed rooms}.
HEARTBEAT_LUA = """
local pkey, zset = KEYS[1], KEYS[2]
local pp, rp, ttl, me, url = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local load, draining, now, n = ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
local existed = redis.call('EXISTS', pkey)
local was_draining = redis.call('HGET', pkey, 'draining') == '1'
local fields = {}
for i = 10, 9 + 2 * n do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', pkey, unpack(fields))
redis.call('PEXPIRE', pkey, ttl)
if draining == '1' or was_draining then
  -- sticky: a heartbeat built before drain() but run after it must not undo it
  redis.call('HSET', pkey, 'draining', '1')
  redis.call('ZREM', zset, me)
else
  redis.call('ZADD', zset, load, me)
end
local lost, reclaimed = {}, {}
for i = 10 + 2 * n, #ARGV do
  local name = ARGV[i]
  local room = rp .. name
  local owner = redis.call('HGET', room, 'process_id')
  if owner == me then
    redis.call('HSET', room, 'updated_at', now)
    redis.call('PEXPIRE', room, ttl)
    redis.call('HSET', KEYS[3], name, me)
  elseif owner and redis.call('EXISTS', pp .. owner) == 1 then
    lost[#lost + 1] = name
  else
    redis.call('DEL', room)
    redis.call('HSET', room, 'process_id', me, 'url', url, 'updated_at', now)
    redis.call('PEXPIRE', room, ttl)
    redis.call('HSET', KEYS[3], name, me)
    reclaimed[#reclaimed + 1] = name
  end
end
return {existed, lost, reclaimed}
"""

# KEYS[1] rooms index, then room keys; ARGV[1] process id, ARGV[2] room key prefix.
# Deletes the rooms this process owns (compare and delete) and their index entries;
# returns how many it deleted.
RELEASE_LUA = """
local n = 0
for i = 2, #KEYS do
  local room = KEYS[i]
  if redis.call('HGET', room, 'process_id') == ARGV[1] then
    redis.call('DEL', room)
    redis.call('HDEL', KEYS[1], string.sub(room, #ARGV[2] + 1))
    n = n + 1
  end
end
return n
"""

# KEYS[1] room key; ARGV[1] process key prefix. Returns {owner, url} if the owner is alive.
LOOKUP_LUA = """
local owner = redis.call('HGET', KEYS[1], 'process_id')
if owner and redis.call('EXISTS', ARGV[1] .. owner) == 1 then
  return {owner, redis.call('HGET', KEYS[1], 'url')}
end
return false
"""

# KEYS[1] rooms index; ARGV[1] process key prefix, ARGV[2] room key prefix.
# Returns {name, owner, url, ...} for every indexed room whose owner is alive; drops the
# entries whose room key has gone or whose owner is dead (and follows a room key that
# names another owner than its entry).
ROOMS_LUA = """
local index, pp, rp = KEYS[1], ARGV[1], ARGV[2]
local alive, out = {}, {}
local entries = redis.call('HGETALL', index)
for i = 1, #entries, 2 do
  local name, id = entries[i], entries[i + 1]
  local r = redis.call('HMGET', rp .. name, 'process_id', 'url')
  local owner = r[1]
  if owner and alive[owner] == nil then
    alive[owner] = redis.call('EXISTS', pp .. owner) == 1
  end
  if owner and r[2] and alive[owner] then
    if owner ~= id then redis.call('HSET', index, name, owner) end
    out[#out + 1] = name
    out[#out + 1] = owner
    out[#out + 1] = r[2]
  else
    redis.call('HDEL', index, name)
  end
end
return out
"""
