"""Who may act on a pending entry, and on an exclusive key: checked atomically, in Lua.

An entry belongs to the consumer whose pending list holds it; a sibling's reclaim
(`XAUTOCLAIM`) moves it. So that two consumers never both act on one entry:

- The heartbeat (`HEARTBEAT`) resets the idle time (`XCLAIM … JUSTID`) only of entries the
  consumer still owns; an entry a sibling took over is reported lost, never taken back.
- The commit (`COMMIT`) publishes an entry's outputs and acks it only if the consumer still
  owns it; an entry taken over, or acked already (a retried commit whose reply was lost), is
  left to whoever has it.

For a subscription with `Exclusive` work per key (the generator: one Answer per query) there
are three more keys per key, under `<input stream>:<group>:`:

- `lease:<key>` — the consumer (and entry) working on the key, with a TTL of the stage's
  `reclaim_idle_ms`, renewed by the heartbeat while it owns the entry, deleted by its commit.
  `ACQUIRE` takes it before handling; an entry whose key is leased to another is left pending.
- `done:<key>[:<request>]` — set by the commit that publishes the request's outputs (`SET NX`
  in the script that publishes them): a later commit for the same request publishes nothing,
  and `ACQUIRE` acks a later entry of it at once.
- `streamed:<key>[:<request>]` — the entry whose handler first published a streamed output
  (`STREAMED`): only its streamed outputs go out, and none once the request is done, so a
  client sees one sequence of deltas even when a reclaimer answers after a consumer froze.

The scripts address only the keys they are given, like the `MULTI/EXEC` they run in; the
runtime targets one Redis or Valkey (7.0 or later), not a Cluster.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.typing import EncodableT

HEARTBEAT = """
-- KEYS[1]: the input stream. ARGV: group, consumer, lease ms, then per entry: its id, the
-- lease key of its exclusive key and the entry's token ('' and '' if none).
-- Returns {ids another consumer took over, ids acked already}: both are left alone (and
-- their leases released).
local group, consumer, lease_ms = ARGV[1], ARGV[2], ARGV[3]
local owned, taken, gone = {}, {}, {}
for i = 4, #ARGV, 3 do
  local id, lease, token = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local pending = redis.call('XPENDING', KEYS[1], group, id, id, 1)
  local mine = #pending == 1 and pending[1][2] == consumer
  if mine then
    owned[#owned + 1] = id
  elseif #pending == 1 then
    taken[#taken + 1] = id
  else
    gone[#gone + 1] = id
  end
  if lease ~= '' then
    local holder = redis.call('GET', lease)
    if mine and holder == token then
      redis.call('PEXPIRE', lease, lease_ms)
    elseif mine and not holder then
      redis.call('SET', lease, token, 'PX', lease_ms)
    elseif not mine and holder == token then
      redis.call('DEL', lease)
    end
  end
end
for s = 1, #owned, 500 do
  local claim = {'XCLAIM', KEYS[1], group, consumer, 0}
  for j = s, math.min(s + 499, #owned) do claim[#claim + 1] = owned[j] end
  claim[#claim + 1] = 'JUSTID'
  redis.call(unpack(claim))
end
return {taken, gone}
"""

COMMIT = """
-- KEYS[1]: the input stream. ARGV: group, consumer, marker ms, then per entry: its id, its
-- request's done key, its token, its lease key ('' each if not exclusive), the number of
-- commands always run (a dead letter) and of output commands, then the commands, each as
-- its argument count and arguments.
-- Returns per entry: 0 not pending (acked already), 1 committed, 2 committed without its
-- outputs (its request was answered), 3 another consumer's (nothing done).
local group, consumer, marker_ms = ARGV[1], ARGV[2], ARGV[3]
local states, acked = {}, {}
local i = 4
while i <= #ARGV do
  local id, done, token, lease = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local always, outputs = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
  i = i + 6
  local pending = redis.call('XPENDING', KEYS[1], group, id, id, 1)
  local state = 0
  if #pending == 1 then
    if pending[1][2] == consumer then state = 1 else state = 3 end
  end
  if state == 1 and done ~= '' then
    if not redis.call('SET', done, token, 'NX', 'PX', marker_ms)
        and redis.call('GET', done) ~= token then
      state = 2
    end
  end
  for c = 1, always + outputs do
    local n = tonumber(ARGV[i])
    if state == 1 or (state == 2 and c <= always) then
      redis.call(unpack(ARGV, i + 1, i + n))
    end
    i = i + 1 + n
  end
  if state == 1 or state == 2 then acked[#acked + 1] = id end
  if lease ~= '' and redis.call('GET', lease) == token then redis.call('DEL', lease) end
  states[#states + 1] = state
end
for s = 1, #acked, 500 do
  redis.call('XACK', KEYS[1], group, unpack(acked, s, math.min(s + 499, #acked)))
end
return states
"""

ACQUIRE = """
-- ARGV: lease ms, then per entry: its lease key, its request's done key, its token.
-- Returns per entry: 0 leased to it, 1 its request was answered, 2 leased to another.
local out = {}
for i = 2, #ARGV, 3 do
  local lease, done, token = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('EXISTS', done) == 1 then
    out[#out + 1] = 1
  elseif redis.call('SET', lease, token, 'NX', 'PX', ARGV[1]) then
    out[#out + 1] = 0
  elseif redis.call('GET', lease) == token then
    redis.call('PEXPIRE', lease, ARGV[1])
    out[#out + 1] = 0
  else
    out[#out + 1] = 2
  end
end
return out
"""

RELEASE = """
-- ARGV: per lease: its key, the token holding it. Deletes those still held by that token.
for i = 1, #ARGV, 2 do
  if redis.call('GET', ARGV[i]) == ARGV[i + 1] then redis.call('DEL', ARGV[i]) end
end
return 0
"""

STREAMED = """
-- ARGV: per publication: its request's done key, streamed key, token and marker ms ('' each
-- if not fenced), its argument count and arguments (an XADD).
-- Returns per publication 1 published, 0 withheld.
local out = {}
local i = 1
while i <= #ARGV do
  local done, streamed, token = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local n = tonumber(ARGV[i + 4])
  local go = true
  if done ~= '' then
    go = redis.call('EXISTS', done) == 0
      and (redis.call('SET', streamed, token, 'NX', 'PX', ARGV[i + 3]) ~= false
           or redis.call('GET', streamed) == token)
  end
  if go then
    redis.call(unpack(ARGV, i + 5, i + 4 + n))
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
  i = i + 5 + n
end
return out
"""

NOT_PENDING, COMMITTED, ANSWERED, TAKEN_OVER = 0, 1, 2, 3
"""`COMMIT`'s verdict on an entry."""
LEASED, DONE, BUSY = 0, 1, 2
"""`ACQUIRE`'s verdict on an entry."""

Command = list[EncodableT]


@dataclass(frozen=True, slots=True)
class Lease:
    """One entry's claim on an exclusive key, and the Redis keys that go with it."""

    key: str
    token: str
    """Who holds it: the consumer and the entry."""
    lease: str
    done: str
    streamed: str
    marker_ms: int
    """How long `done` and `streamed` are kept."""


def lease_for(
    stream: str,
    group: str,
    consumer: str,
    entry_id: bytes,
    *,
    key: str,
    request: str | None,
    marker_ms: int,
) -> Lease:
    prefix = f"{stream}:{group}"
    req = key if request is None else f"{key}:{request}"
    return Lease(
        key=key,
        token=f"{consumer}/{entry_id.decode()}",
        lease=f"{prefix}:lease:{key}",
        done=f"{prefix}:done:{req}",
        streamed=f"{prefix}:streamed:{req}",
        marker_ms=marker_ms,
    )


class Leases:
    """The exclusive keys this consumer works on, by entry and by key (one entry per key)."""

    def __init__(self) -> None:
        self._by_entry: dict[tuple[str, bytes], Lease] = {}
        self._by_key: dict[tuple[str, str], Lease] = {}

    def add(self, stream: str, entry_id: bytes, lease: Lease) -> None:
        self._by_entry[(stream, entry_id)] = lease
        self._by_key[(stream, lease.key)] = lease

    def working_on(self, stream: str, key: str) -> bool:
        return (stream, key) in self._by_key

    def of_entry(self, stream: str, entry_id: bytes) -> Lease | None:
        return self._by_entry.get((stream, entry_id))

    def of_key(self, stream: str, key: str) -> Lease | None:
        return self._by_key.get((stream, key))

    def drop(self, stream: str, entry_ids: Iterable[bytes]) -> list[Lease]:
        """Forget these entries' leases; returns those there were."""
        dropped: list[Lease] = []
        for entry_id in entry_ids:
            lease = self._by_entry.pop((stream, entry_id), None)
            if lease is not None:
                dropped.append(lease)
                if self._by_key.get((stream, lease.key)) is lease:
                    del self._by_key[(stream, lease.key)]
        return dropped


def heartbeat_args(
    group: str, consumer: str, lease_ms: int, ids: Sequence[bytes], leases: Sequence[Lease | None]
) -> list[EncodableT]:
    args: list[EncodableT] = [group, consumer, lease_ms]
    for entry_id, lease in zip(ids, leases, strict=True):
        args += [entry_id, lease.lease if lease else "", lease.token if lease else ""]
    return args


def acquire_args(lease_ms: int, leases: Sequence[Lease]) -> list[EncodableT]:
    args: list[EncodableT] = [lease_ms]
    for lease in leases:
        args += [lease.lease, lease.done, lease.token]
    return args


def release_args(leases: Sequence[Lease]) -> list[EncodableT]:
    args: list[EncodableT] = []
    for lease in leases:
        args += [lease.lease, lease.token]
    return args


def commit_entry_args(
    entry_id: bytes, lease: Lease | None, always: Sequence[Command], outputs: Sequence[Command]
) -> list[EncodableT]:
    """One entry's part of `COMMIT`'s arguments (after group, consumer and marker ms)."""
    args: list[EncodableT] = [
        entry_id,
        lease.done if lease else "",
        lease.token if lease else "",
        lease.lease if lease else "",
        len(always),
        len(outputs),
    ]
    for command in (*always, *outputs):
        args.append(len(command))
        args += command
    return args


def streamed_args(fenced: Sequence[tuple[Lease | None, Command]]) -> list[Any]:
    args: list[Any] = []
    for lease, command in fenced:
        if lease is None:
            args += ["", "", "", ""]
        else:
            args += [lease.done, lease.streamed, lease.token, lease.marker_ms]
        args.append(len(command))
        args += command
    return args
