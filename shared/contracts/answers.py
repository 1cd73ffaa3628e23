"""What clients read back on the answers stream (`rag.answers` or the query's `reply_to`)."""

from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from shared.contracts.base import Event
from shared.contracts.queries import StageTimings


class Citation(BaseModel):
    """A numbered source the answer used: `[marker]` in the text points here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    marker: int
    chunk_id: str
    doc_id: str
    version: int
    title: str
    char_start: int
    char_end: int
    quote: str


class Usage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_tokens: int = 0
    completion_tokens: int = 0


class AnswerDelta(Event):
    """A piece of a streamed answer; deltas precede the final Answer."""

    type: Literal["answer_delta"] = "answer_delta"
    query_id: str
    seq: int
    text: str


class Answer(Event):
    """The final answer to a query."""

    type: Literal["answer"] = "answer"
    query_id: str
    text: str
    citations: tuple[Citation, ...] = ()
    abstained: bool = False
    error: str | None = None
    model: str = ""
    reranker: str = ""
    rerank_degraded: str | None = None
    timings: StageTimings = StageTimings()
    usage: Usage = Usage()
    possibly_stale: bool = False
    """The index had not applied the query's `after` versions when it was searched."""
    supersedes: UUID | None = None
    """With `regenerate`: the `event_id` of the earlier Answer this one replaces."""


class AnswerInvalidated(Event):
    """A doc an answer cited changed (`new_version`) or was deleted (`deleted`) since."""

    type: Literal["answer.invalidated"] = "answer.invalidated"
    query_id: str
    doc_id: str
    old_version: int
    new_version: int
    deleted: bool = False


Reply = Annotated[Answer | AnswerDelta | AnswerInvalidated, Field(discriminator="type")]
REPLY: TypeAdapter[Answer | AnswerDelta | AnswerInvalidated] = TypeAdapter(Reply)
