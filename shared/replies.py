"""Where answers go: the query's `reply_to` (only under the answers stream's name) or the
default answers stream; the error answer a rejected query gets, and the one a query past its
deadline gets."""

from collections.abc import Sequence
from typing import Any
from uuid import uuid4

from shared import wire
from shared.contracts import Answer, Query
from shared.deadlines import exceeded_reason
from shared.delivery import Outcome
from shared.errors import PermanentError
from shared.settings import StreamSettings
from shared.stage import Entry, Publication
from shared.subscription import settle_now


def allowed_reply_to(target: str, streams: StreamSettings) -> bool:
    """A client may only ask for replies on the answers stream or a stream under its name, so
    a query cannot make a stage write into `rag.docs` or another stage's input."""
    return target == streams.answers or target.startswith(f"{streams.answers}.")


def own_reply_stream(streams: StreamSettings) -> str:
    """A fresh reply stream for one client (`<answers>.c.<uuid>`): only its replies land
    there, so it reads them all and deletes the stream when done."""
    return f"{streams.answers}.c.{uuid4().hex}"


def expire_reply_stream(pipe: Any, stream: str, streams: StreamSettings, ttl_s: int) -> None:
    """Queue EXPIRE on a client's reply stream (renewed by each publication), so the stream of
    a client that is gone disappears; the shared answers stream is left alone."""
    if stream != streams.answers and allowed_reply_to(stream, streams):
        pipe.expire(stream, ttl_s)


def check_reply_to(query: Query, streams: StreamSettings) -> None:
    if query.reply_to is not None and not allowed_reply_to(query.reply_to, streams):
        raise PermanentError(
            f"reply_to must be {streams.answers!r} or start with {streams.answers + '.'!r}"
        )


def reply_stream(query: Query, streams: StreamSettings) -> str:
    check_reply_to(query, streams)
    return query.reply_to or streams.answers


def error_answer(entry: Entry, reason: str, streams: StreamSettings) -> Sequence[Publication]:
    """The rejected query's client is told why, if we can tell which query it was."""
    subject = wire.subject_of(entry.fields)
    query_id = subject.get("query_id")
    if not isinstance(query_id, str):
        return ()
    target = subject.get("reply_to")
    if not isinstance(target, str) or not allowed_reply_to(target, streams):
        target = streams.answers
    answer = Answer(query_id=query_id[:200], text="", error=reason, abstained=True)
    return (Publication(target, answer),)


def deadline_answer(query: Query, streams: StreamSettings, stage: str) -> Outcome:
    """What a stage publishes instead of working on a query past its `deadline`: an error
    Answer ("deadline exceeded at the <stage> ...") on its reply stream. A query whose
    `reply_to` is not allowed is dead-lettered instead, as it would be anyway."""
    try:
        target = reply_stream(query, streams)
    except PermanentError as exc:
        return exc
    if query.deadline is not None:
        reason = exceeded_reason(query.deadline, stage)
    else:
        reason = f"deadline exceeded at the {stage}"
    answer = Answer(query_id=query.query_id, text="", error=reason, abstained=True)
    return [Publication(target, answer)]


async def deadline_answer_now(
    event: object, query: Query, streams: StreamSettings, stage: str
) -> Outcome:
    """`deadline_answer` for `query` (carried by the handled `event`), committed at once
    (`settle_now`) when a stage finds it past its deadline midway through a batch: its client
    hears now, not when the rest of the batch is done. Returned as well, as the outcome."""
    outcome = deadline_answer(query, streams, stage)
    await settle_now(event, outcome)
    return outcome
