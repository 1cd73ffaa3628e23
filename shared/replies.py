"""Where answers go: the query's `reply_to` (only under the answers stream's name) or the
default answers stream; and the error answer a rejected query gets."""

from collections.abc import Sequence

from shared import wire
from shared.contracts import Answer, Query
from shared.errors import PermanentError
from shared.settings import StreamSettings
from shared.stage import Entry, Publication


def allowed_reply_to(target: str, streams: StreamSettings) -> bool:
    """A client may only ask for replies on the answers stream or a stream under its name, so
    a query cannot make a stage write into `rag.docs` or another stage's input."""
    return target == streams.answers or target.startswith(f"{streams.answers}.")


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
