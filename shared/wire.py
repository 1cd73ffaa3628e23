"""How events sit in a stream entry: one field, `event`, holding the event's JSON.

Upstream systems need nothing but `XADD rag.docs * event '{"type":"upsert",...}'`.
Decoding turns every way a payload can be wrong into a `PermanentError` with a clear reason.
"""

import json
from collections.abc import Mapping
from typing import Any, TypeVar, cast

from pydantic import BaseModel, TypeAdapter, ValidationError
from redis.asyncio import Redis
from redis.typing import EncodableT, FieldT

from shared.errors import PermanentError

EVENT_FIELD = b"event"
T = TypeVar("T")
MAX_REASON_ERRORS = 5
Fields = dict[FieldT, EncodableT]
RawEntry = tuple[bytes, dict[bytes, bytes]]


def encode(event: BaseModel) -> Fields:
    return {EVENT_FIELD: event.model_dump_json().encode()}


def stream_entries(response: Any) -> list[RawEntry]:
    """XRANGE / XREVRANGE reply (bytes client), typed."""
    return cast(list[RawEntry], response)


def read_entries(response: Any) -> list[tuple[bytes, list[RawEntry]]]:
    """XREAD reply (bytes client), typed: [(stream, [(id, fields), ...]), ...]."""
    return cast(list[tuple[bytes, list[RawEntry]]], response)


def payload_of(fields: Mapping[bytes, bytes]) -> bytes:
    """The raw event bytes of an entry (empty if the field is missing)."""
    return fields.get(EVENT_FIELD, b"")


def decode(adapter: TypeAdapter[T], fields: Mapping[bytes, bytes], *, max_bytes: int) -> T:
    payload = fields.get(EVENT_FIELD)
    if payload is None:
        names = ", ".join(sorted(k.decode(errors="replace") for k in fields)) or "none"
        raise PermanentError(f"entry has no 'event' field (fields: {names})")
    if len(payload) > max_bytes:
        raise PermanentError(
            f"payload is {len(payload):,} bytes, over the {max_bytes:,}-byte limit"
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PermanentError(f"payload is not valid UTF-8 (byte {exc.start})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PermanentError(
            f"malformed JSON: {exc.msg} at line {exc.lineno} col {exc.colno}"
        ) from None
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        raise PermanentError(f"invalid event: {describe(exc)}") from None


def describe(exc: ValidationError) -> str:
    """A short, client-safe summary of a validation error (no input values echoed)."""
    parts = []
    for error in exc.errors()[:MAX_REASON_ERRORS]:
        where = ".".join(str(p) for p in error["loc"]) or "event"
        parts.append(f"{where}: {error['msg']}")
    more = exc.error_count() - MAX_REASON_ERRORS
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def subject_of(fields: Mapping[bytes, bytes]) -> dict[str, Any]:
    """Best-effort doc_id / version / query_id / reply_to of an unreadable entry."""
    try:
        raw = json.loads(payload_of(fields))
    except (ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(raw, dict):
        return {}
    subject: dict[str, Any] = {}
    for key, kind in (("doc_id", str), ("version", int), ("query_id", str), ("reply_to", str)):
        value = raw.get(key)
        if isinstance(value, kind) and not isinstance(value, bool):
            subject[key] = value
    return subject


def text_of(value: bytes | str) -> str:
    """A name or id from a Redis reply (bytes client), as text."""
    return value.decode() if isinstance(value, bytes) else value


def entry_ms(entry_id: bytes | str) -> int:
    """The millisecond timestamp of a stream entry id (`<ms>-<seq>`): when it was added."""
    return int(text_of(entry_id).split("-", 1)[0])


async def last_entry_id(redis: "Redis", stream: str) -> bytes:
    """Id of the newest entry (`0-0` for an empty stream): read from here to see only what
    comes next, without the race of `$`."""
    newest = stream_entries(await redis.xrevrange(stream, count=1))
    return newest[0][0] if newest else b"0-0"
