"""Answers that watch their sources: what the generator records when it answers a query with
`subscribe`, and what it commits beside each reply (see `shared.answer_watch`).

The subscription is written in the same MULTI/EXEC as the Answer it watches, by a projection on
the reply streams: `answering` wraps the answering handler and notes, per final Answer, what to
record (the query, its reply stream, when the subscription ends); the projection finds that
note when the Answer is committed. An Answer to a regenerated query gets `supersedes` here,
from the subscription it replaces, and inherits its end, so a client that is gone is not
answered again and again past `subscription_ttl_s`.

Beside the Answer, the same projection renews the reply stream's expiry and, for each
`AnswerInvalidated`, ends that doc's part of the subscription; one on the queries stream marks
a re-published query's subscription as regenerating.
"""

import json
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from redis.asyncio import Redis

from services.generator.invalidation import regenerated_query
from services.generator.settings import GeneratorSettings
from shared import answer_watch, doc_state
from shared.answer_watch import Watch, WatchKeys
from shared.contracts import Answer, AnswerInvalidated, Query, Reranked
from shared.doc_state import DocState
from shared.errors import PermanentError
from shared.replies import expire_reply_stream
from shared.settings import StreamSettings
from shared.stage import BatchHandler, Outcome, Publication

MAX_NOTES = 10_000
"""Notes of Answers handled but not (yet) committed; one whose commit failed is dropped."""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Note:
    query: Query
    until_ms: int


class Subscriptions:
    """The generator's side of answer subscriptions: recording them, ending them."""

    def __init__(self, redis: Redis, settings: GeneratorSettings, streams: StreamSettings) -> None:
        self.redis = redis
        self.settings = settings
        self.streams = streams
        self.keys = WatchKeys(streams.indexed)
        self._notes: OrderedDict[UUID, Note] = OrderedDict()

    def answering(self, handle: BatchHandler[Reranked]) -> BatchHandler[Reranked]:
        """`handle`, plus: the Answers of subscribing queries are noted for recording, and an
        Answer to a regenerated query says which Answer it `supersedes`."""

        async def handle_subscribing(events: Sequence[Reranked]) -> Sequence[Outcome]:
            regenerated = [e.query.query_id for e in events if _regenerates(e.query)]
            previous = await answer_watch.subscriptions(self.redis, self.keys, regenerated)
            outcomes = list(await handle(events))
            for index, (event, outcome) in enumerate(zip(events, outcomes, strict=True)):
                query = event.query
                if query.subscribe and not isinstance(outcome, PermanentError):
                    earlier = previous.get(query.query_id) if _regenerates(query) else None
                    outcomes[index] = [self._note(p, query, earlier) for p in outcome]
            return await self._told_if_changed_already(events, outcomes)

        return handle_subscribing

    async def _told_if_changed_already(
        self, events: Sequence[Reranked], outcomes: list[Outcome]
    ) -> list[Outcome]:
        """A noted Answer that cites a version the index has replaced since (acked while it was
        generated, before its subscription existed, so the watcher could not tell it) gets its
        invalidation (and regenerated query) in its own commit. A change acked between this
        look and the commit can still go unnoticed: a window of a Redis round trip."""
        noted = [
            (index, publication)
            for index, outcome in enumerate(outcomes)
            if not isinstance(outcome, PermanentError)
            for publication in outcome
            if isinstance(publication.event, Answer) and publication.event.event_id in self._notes
        ]
        docs = list({c.doc_id for _, p in noted for c in p.event.citations})  # type: ignore[attr-defined]
        if not docs:
            return outcomes
        raw = await self.redis.hmget(doc_state.state_key(self.streams.indexed), docs)
        served = {
            doc: DocState.model_validate({**json.loads(value), "doc_id": doc})
            for doc, value in zip(docs, raw, strict=True)
            if value is not None
        }
        for index, publication in noted:
            answer = publication.event
            assert isinstance(answer, Answer)
            changes = [
                AnswerInvalidated(
                    query_id=answer.query_id,
                    doc_id=doc,
                    old_version=version,
                    new_version=state.version,
                    deleted=state.deleted,
                )
                for doc, version in cited_versions(answer).items()
                if (state := served.get(doc)) is not None and state.version > version
            ]
            if not changes:
                continue
            query = events[index].query
            extra: list[Publication] = []
            if query.regenerate:
                changed = {c.doc_id: c.new_version for c in changes}
                extra.append(
                    Publication(
                        self.streams.queries, regenerated_query(query.model_dump_json(), changed)
                    )
                )
            extra.extend(Publication(publication.stream, change) for change in changes)
            outcome = outcomes[index]
            assert not isinstance(outcome, PermanentError)
            outcomes[index] = [*outcome, *extra]
        return outcomes

    def _note(self, publication: Publication, query: Query, earlier: Watch | None) -> Publication:
        answer = publication.event
        if not isinstance(answer, Answer) or answer.query_id != query.query_id:
            return publication
        if earlier is not None and earlier.regenerating:
            answer = answer.model_copy(update={"supersedes": UUID(earlier.answer_id)})
            until = earlier.until_ms
        else:
            until = now_ms() + self.settings.subscription_ttl_s * 1000
        if answer.citations and answer.error is None and until > now_ms():
            self._notes[answer.event_id] = Note(query, until)
            while len(self._notes) > MAX_NOTES:
                self._notes.popitem(last=False)
        return Publication(publication.stream, answer)

    def on_reply(self, pipe: Any, stream: str, event: Any) -> None:
        """Projection on the reply streams (committed with each reply)."""
        expire_reply_stream(pipe, stream, self.streams, self.settings.reply_ttl_s)
        if isinstance(event, Answer):
            note = self._notes.pop(event.event_id, None)
            if note is not None:
                self._record(pipe, stream, event, note)
        elif isinstance(event, AnswerInvalidated):
            answer_watch.unwatch_doc(
                pipe, self.keys, event.query_id, event.doc_id, event.old_version
            )

    def on_query(self, pipe: Any, events: Sequence[Any]) -> None:
        """Projection on the queries stream: the generator publishes there only queries it
        regenerates."""
        for event in events:
            if isinstance(event, Query):
                answer_watch.regenerating(pipe, self.keys, event.query_id)

    def _record(self, pipe: Any, stream: str, answer: Answer, note: Note) -> None:
        query = note.query
        watch = Watch(
            reply_to=stream,
            answer_id=str(answer.event_id),
            cited=cited_versions(answer),
            until_ms=note.until_ms,
            query=query.model_dump_json() if query.regenerate else None,
        )
        answer_watch.watch(
            pipe, self.keys, query.query_id, watch, now_ms=now_ms(),
            max_per_doc=self.settings.max_subscriptions_per_doc,
            max_total=self.settings.max_subscriptions,
        )  # fmt: skip


def cited_versions(answer: Answer) -> dict[str, int]:
    """doc_id → the (oldest) version of it the Answer cited."""
    cited: dict[str, int] = {}
    for citation in answer.citations:
        cited[citation.doc_id] = min(cited.get(citation.doc_id, citation.version), citation.version)
    return cited


def _regenerates(query: Query) -> bool:
    return query.subscribe and query.regenerate
