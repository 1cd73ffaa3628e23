"""What clients read back on the answers stream (`rag.answers` or the query's `reply_to`)."""

from typing import Annotated, Literal

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


Reply = Annotated[Answer | AnswerDelta, Field(discriminator="type")]
REPLY: TypeAdapter[Answer | AnswerDelta] = TypeAdapter(Reply)
