"""`ragstream dlq list|replay|purge`: inspect dead letters, send them back, or drop them.

A dead letter on `rag.dlq` holds a `DeadLetter` event (stage, source stream, reason, delivery
count, doc id) and, beside it, the original payload byte for byte. Replaying re-publishes that
payload to the source stream and deletes the letter in one MULTI/EXEC transaction, so a letter
is never both replayed and kept, nor dropped without being replayed.
"""

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias, cast

from pydantic import ValidationError
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from shared import wire
from shared.contracts import DeadLetter
from shared.settings import StreamSettings

PAGE = 500
PAYLOAD_FIELD = b"payload"
RawEntry = tuple[bytes, dict[bytes, bytes]]


@dataclass(frozen=True)
class Letter:
    id: str
    """The letter's own entry id on the DLQ stream."""
    letter: DeadLetter
    payload: bytes


@dataclass(frozen=True)
class Selection:
    stage: str | None = None
    ids: frozenset[str] = frozenset()
    """DLQ entry ids, or ids of the original entries on their source stream."""
    limit: int | None = None

    def matches(self, letter: Letter) -> bool:
        if self.stage is not None and letter.letter.stage != self.stage:
            return False
        return not self.ids or letter.id in self.ids or letter.letter.entry_id in self.ids


async def read_letters(redis: Redis, dlq: str, selection: Selection = Selection()) -> list[Letter]:
    """Dead letters on `dlq` matching `selection`, oldest first (unreadable entries skipped)."""
    letters: list[Letter] = []
    start = "-"
    while selection.limit is None or len(letters) < selection.limit:
        page = cast(list[RawEntry], await redis.xrange(dlq, min=start, count=PAGE))
        for entry_id, fields in page:
            try:
                letter = DeadLetter.model_validate_json(wire.payload_of(fields))
            except ValidationError:
                continue
            found = Letter(entry_id.decode(), letter, fields.get(PAYLOAD_FIELD, b""))
            if selection.matches(found):
                letters.append(found)
        if len(page) < PAGE:
            break
        start = f"({page[-1][0].decode()}"
    return letters[: selection.limit]


async def replay(redis: Redis, dlq: str, letters: Sequence[Letter]) -> int:
    """Re-publish each letter's payload to its source stream and delete it; returns how many.

    Letters without a payload (the entry had no `event` field) cannot be replayed: kept.
    """
    replayable = [letter for letter in letters if letter.payload]
    for start in range(0, len(replayable), PAGE):
        async with redis.pipeline(transaction=True) as pipe:
            for letter in replayable[start : start + PAGE]:
                pipe.xadd(letter.letter.source_stream, {wire.EVENT_FIELD: letter.payload})
                pipe.xdel(dlq, letter.id)
            await pipe.execute()
    return len(replayable)


async def purge(redis: Redis, dlq: str, letters: Sequence[Letter]) -> int:
    ids = [letter.id for letter in letters]
    removed = 0
    for start in range(0, len(ids), PAGE):
        removed += int(await redis.xdel(dlq, *ids[start : start + PAGE]))
    return removed


def summary(letter: Letter) -> dict[str, object]:
    d = letter.letter
    return {
        "id": letter.id,
        "stage": d.stage,
        "source_stream": d.source_stream,
        "entry_id": d.entry_id,
        "deliveries": d.deliveries,
        "doc_id": d.doc_id,
        "version": d.version,
        "query_id": d.query_id,
        "reason": d.reason,
        "payload_bytes": len(letter.payload),
    }


def show(letters: Sequence[Letter], out: Console, *, as_json: bool) -> None:
    if as_json:
        for letter in letters:
            out.print_json(json.dumps(summary(letter)), indent=None)
        return
    title = f"{len(letters)} dead letters"
    table = Table("id", "stage", "deliveries", "doc_id", "reason", title=title)
    for letter in letters:
        d = letter.letter
        table.add_row(letter.id, d.stage, str(d.deliveries), d.doc_id or d.query_id or "", d.reason)
    out.print(table)


async def run(
    args: argparse.Namespace, redis: Redis, out: Console, streams: StreamSettings | None = None
) -> int:
    """The `dlq` subcommand: `args.action` is list, replay or purge."""
    dlq = (streams or StreamSettings()).dlq
    selection = Selection(stage=args.stage, ids=frozenset(args.ids), limit=args.limit)
    if args.action == "purge" and not (args.stage or args.ids or args.all):
        out.print("[red]purge needs entry ids, --stage or --all[/]")
        return 2
    letters = await read_letters(redis, dlq, selection)
    if args.action == "list":
        show(letters, out, as_json=args.json)
    elif args.action == "replay":
        out.print(f"replayed {await replay(redis, dlq, letters)} of {len(letters)} dead letters")
    else:
        out.print(f"purged {await purge(redis, dlq, letters)} dead letters")
    return 0


SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_parser(sub: SubParsers) -> argparse.ArgumentParser:
    dlq = sub.add_parser("dlq", help="list, replay or purge dead letters")
    dlq.add_argument("action", choices=("list", "replay", "purge"))
    dlq.add_argument(
        "--id", dest="ids", metavar="ID", action="append", default=[],
        help="only this DLQ (or original) entry id; repeatable",
    )  # fmt: skip
    dlq.add_argument("--stage", help="only letters from this stage")
    dlq.add_argument("--limit", type=int, default=None, help="at most this many letters")
    dlq.add_argument("--all", action="store_true", help="purge: every selected letter")
    dlq.add_argument("--json", action="store_true", help="list: one JSON object per letter")
    return dlq
