"""Which answers watch which documents: the subscriptions behind `answer.invalidated`.

The generator records a subscription when it publishes an Answer to a query with `subscribe`,
in the same MULTI/EXEC as the Answer (`watch`). Keys, beside the freshness stream like
`shared.doc_state` (`P` = `<indexed stream>:watch`, e.g. `rag.indexed:watch`):

- `P:a:<query_id>`: the subscription, JSON `Watch` (reply stream, the Answer's event id, the
  version of each doc it cited, when it ends, and the query itself with `regenerate`), expiring
  a grace period after it ends (`until_ms`). One per query: a newer Answer to the same query
  replaces it.
- `P:d:<doc_id>`: hash query_id → cited version, the index the watcher reads for each
  `DocIndexed`; it expires with its longest-lived subscription.
- `P:all`: sorted set query_id → end time, to count subscriptions (the total is bounded) and
  forget ended ones.
- `P:refused`: how many subscriptions were refused because a bound was reached.

A subscription ends doc by doc as its docs change (`unwatch_doc`, in the transaction that
publishes the `AnswerInvalidated`), at once when it is regenerated (`regenerating`: the record
stays, without docs, so the next Answer knows what it supersedes and when the subscription
ends), when the client unsubscribes (`unwatch`), or when it expires. Bounds: at most
`max_per_doc` subscriptions cite one doc and `max_total` exist; past either, a new subscription
is refused (counted in `P:refused`; the Answer is still delivered, unwatched).

The scripts name keys built from the prefix (`P:d:<doc>`): one Redis, not a Redis Cluster.
"""

from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer
from redis.asyncio import Redis

RECORD_GRACE_MS = 600_000
"""A subscription's record outlives its end by this much, so that an Answer to a query
regenerated just before the end still finds it (and does not start a new subscription)."""
Version = Annotated[int, PlainSerializer(str, return_type=str)]
"""Stored as a string: Lua's cjson would round integers above 10^14."""


def _dict_from_lua(value: Any) -> Any:
    return {} if value == [] else value  # cjson may encode an emptied table as []


class Watch(BaseModel):
    """One query's subscription."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    reply_to: str
    answer_id: str
    """The `event_id` of the Answer being watched (what a regenerated Answer `supersedes`)."""
    cited: Annotated[dict[str, Version], BeforeValidator(_dict_from_lua)]
    """doc_id → the version the Answer cited; a doc leaves once it changed."""
    until_ms: int
    """When the subscription ends (epoch ms); regenerated Answers inherit it."""
    query: str | None = None
    """The query's JSON, kept only with `regenerate`."""
    regenerating: bool = False
    """An invalidation re-published the query; the next Answer supersedes `answer_id`."""


class WatchKeys:
    """Key names of one pipeline's subscriptions (see the module doc)."""

    def __init__(self, indexed_stream: str) -> None:
        self.prefix = f"{indexed_stream}:watch"
        self.all = f"{self.prefix}:all"
        self.refused = f"{self.prefix}:refused"
        self.answers = f"{self.prefix}:a:"
        self.docs = f"{self.prefix}:d:"

    def answer(self, query_id: str) -> str:
        return self.answers + query_id

    def doc(self, doc_id: str) -> str:
        return self.docs + doc_id


_WATCH = """
local rec_key, all_key, refused_key = KEYS[1], KEYS[2], KEYS[3]
local dprefix, qid, record = ARGV[2], ARGV[3], ARGV[4]
local ends, expire_at, now = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local max_doc, max_total = tonumber(ARGV[8]), tonumber(ARGV[9])
redis.call('ZREMRANGEBYSCORE', all_key, '-inf', now)
local old = redis.call('GET', rec_key)
if not redis.call('ZSCORE', all_key, qid) and redis.call('ZCARD', all_key) >= max_total then
  redis.call('INCR', refused_key)
  return -1
end
for i = 10, #ARGV, 2 do
  local key = dprefix .. ARGV[i]
  if redis.call('HLEN', key) >= max_doc and redis.call('HEXISTS', key, qid) == 0 then
    for _, other in ipairs(redis.call('HKEYS', key)) do
      if not redis.call('ZSCORE', all_key, other) then redis.call('HDEL', key, other) end
    end
    if redis.call('HLEN', key) >= max_doc then
      redis.call('INCR', refused_key)
      return -2
    end
  end
end
if old then
  for doc, _ in pairs(cjson.decode(old)['cited']) do redis.call('HDEL', dprefix .. doc, qid) end
end
redis.call('SET', rec_key, record, 'PXAT', expire_at)
redis.call('ZADD', all_key, ends, qid)
local ttl = ends - now
for i = 10, #ARGV, 2 do
  local key = dprefix .. ARGV[i]
  redis.call('HSET', key, qid, ARGV[i + 1])
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
return 1
"""

_UNWATCH_DOC = """
local rec_key, doc_key, all_key = KEYS[1], KEYS[2], KEYS[3]
local qid, doc, version = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', doc_key, qid) == version then redis.call('HDEL', doc_key, qid) end
local raw = redis.call('GET', rec_key)
if not raw then return 0 end
local rec = cjson.decode(raw)
if rec['cited'][doc] ~= version then return 0 end
rec['cited'][doc] = nil
if next(rec['cited']) == nil and not rec['regenerating'] then
  redis.call('DEL', rec_key)
  redis.call('ZREM', all_key, qid)
else
  redis.call('SET', rec_key, cjson.encode(rec), 'KEEPTTL')
end
return 1
"""

_REGENERATING = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local rec = cjson.decode(raw)
for doc, _ in pairs(rec['cited']) do redis.call('HDEL', ARGV[1] .. doc, ARGV[2]) end
rec['cited'] = {}
rec['regenerating'] = true
redis.call('SET', KEYS[1], cjson.encode(rec), 'KEEPTTL')
return 1
"""

_UNWATCH = """
local raw = redis.call('GET', KEYS[1])
if raw then
  for doc, _ in pairs(cjson.decode(raw)['cited']) do redis.call('HDEL', ARGV[1] .. doc, ARGV[2]) end
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""


def watch(
    pipe: Any,
    keys: WatchKeys,
    query_id: str,
    subscription: Watch,
    *,
    now_ms: int,
    max_per_doc: int,
    max_total: int,
) -> None:
    """Queue the recording of `subscription` on a pipeline (the Answer's commit). Replaces the
    query's earlier subscription; refused (and counted) past a bound."""
    pairs = [part for doc, version in subscription.cited.items() for part in (doc, str(version))]
    pipe.eval(
        _WATCH, 3, keys.answer(query_id), keys.all, keys.refused,
        keys.answers, keys.docs, query_id, subscription.model_dump_json(),
        subscription.until_ms, subscription.until_ms + RECORD_GRACE_MS, now_ms,
        max_per_doc, max_total, *pairs,
    )  # fmt: skip


def unwatch_doc(pipe: Any, keys: WatchKeys, query_id: str, doc_id: str, version: int) -> None:
    """Queue: the query no longer watches `doc_id` (cited at `version`): it was invalidated."""
    pipe.eval(
        _UNWATCH_DOC, 3, keys.answer(query_id), keys.doc(doc_id), keys.all,
        query_id, doc_id, str(version),
    )  # fmt: skip


def regenerating(pipe: Any, keys: WatchKeys, query_id: str) -> None:
    """Queue: the query was re-published; it watches no doc until its next Answer."""
    pipe.eval(_REGENERATING, 1, keys.answer(query_id), keys.docs, query_id)


async def unwatch(redis: Redis, keys: WatchKeys, query_id: str) -> None:
    """End the query's subscription now (a client that stops listening)."""
    await redis.eval(_UNWATCH, 2, keys.answer(query_id), keys.all, keys.docs, query_id)


async def watchers(
    redis: Redis, keys: WatchKeys, doc_ids: Iterable[str]
) -> dict[str, dict[str, int]]:
    """doc_id → {query_id: cited version} for the docs some subscription cites."""
    docs = list(dict.fromkeys(doc_ids))
    if not docs:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for doc in docs:
            pipe.hgetall(keys.doc(doc))
        replies: list[dict[bytes, bytes]] = await pipe.execute()
    return {
        doc: {qid.decode(): int(version) for qid, version in reply.items()}
        for doc, reply in zip(docs, replies, strict=True)
        if reply
    }


async def subscriptions(
    redis: Redis, keys: WatchKeys, query_ids: Iterable[str]
) -> dict[str, Watch]:
    """The live subscriptions of these queries (ended ones are absent)."""
    ids = list(dict.fromkeys(query_ids))
    if not ids:
        return {}
    raw: list[bytes | str | None] = await redis.mget([keys.answer(q) for q in ids])
    return {q: Watch.model_validate_json(r) for q, r in zip(ids, raw, strict=True) if r}


async def forget_fields(redis: Redis, keys: WatchKeys, stale: Mapping[str, Iterable[str]]) -> None:
    """Drop doc → query fields whose subscription ended (expired): garbage, never a decision."""
    async with redis.pipeline(transaction=False) as pipe:
        for doc, query_ids in stale.items():
            ids = list(query_ids)
            if ids:
                pipe.hdel(keys.doc(doc), *ids)
        await pipe.execute()
