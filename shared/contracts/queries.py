"""The query path: client queries and the candidates each stage hands to the next."""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from shared.contracts.base import Event, non_blank
from shared.contracts.docs import DocId, DocVersion

QueryText = Annotated[str, Field(min_length=1, max_length=4000)]
MAX_AFTER_DOCS = 1000


class Query(Event):
    """A client's question, published on the queries stream (`rag.queries`)."""

    type: Literal["query"] = "query"
    query_id: Annotated[str, Field(min_length=1, max_length=200)]
    text: Annotated[QueryText, non_blank("query text")]
    top_k_retrieve: Annotated[int, Field(ge=1, le=200)] = 20
    top_n: Annotated[int, Field(ge=1, le=50)] = 5
    filters: dict[str, str] | None = None
    reply_to: str | None = None
    stream: bool = False
    deadline: datetime | None = None
    """The client's deadline: a stage answers a query already past it with an error Answer
    instead of working on it, and nothing retries it past it. None: no deadline."""
    after: Annotated[dict[DocId, DocVersion], Field(max_length=MAX_AFTER_DOCS)] | None = None
    """Read-your-writes: the retriever waits (bounded) until the index serves at least these
    doc versions; if it cannot, the Answer says `possibly_stale`."""
    subscribe: bool = False
    """Send `answer.invalidated` on the reply stream when a cited doc changes or is deleted."""
    regenerate: bool = False
    """With `subscribe`: also answer again after an invalidation (the new Answer `supersedes`)."""


class Candidate(BaseModel):
    """A retrieved chunk with the scores that ranked it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    chunk_id: str
    doc_id: str
    version: int
    title: str
    text: str
    section_path: tuple[str, ...] = ()
    char_start: int
    char_end: int
    dense_score: float | None = None
    bm25_score: float | None = None
    fused_score: float
    rerank_score: float | None = None


class StageTimings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    retrieve_ms: float | None = None
    rerank_ms: float | None = None
    generate_ms: float | None = None
    total_ms: float | None = None


class Retrieved(Event):
    """Retriever output on `rag.retrieved`: the query and its fused top-k candidates."""

    type: Literal["retrieved"] = "retrieved"
    query: Query
    candidates: tuple[Candidate, ...]
    timings: StageTimings
    possibly_stale: bool = False
    """The index did not reach the query's `after` versions in time."""


class Reranked(Event):
    """Reranker output on `rag.reranked`: the top-n candidates in their final order."""

    type: Literal["reranked"] = "reranked"
    query: Query
    candidates: tuple[Candidate, ...]
    reranker: str
    rerank_degraded: str | None = None
    """Why the fused order was kept instead of the reranker's (timeout, provider error)."""
    timings: StageTimings
    possibly_stale: bool = False


QUERY: TypeAdapter[Query] = TypeAdapter(Query)
RETRIEVED: TypeAdapter[Retrieved] = TypeAdapter(Retrieved)
RERANKED: TypeAdapter[Reranked] = TypeAdapter(Reranked)
