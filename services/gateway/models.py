"""The gateway's HTTP bodies. Events themselves (`Answer`, `DocUpsert`, …) are the shared
contracts; these are only what a client sends and the small replies the gateway makes up."""

from typing import Annotated
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue

from shared.contracts.base import non_blank
from shared.contracts.docs import DocId, DocVersion
from shared.contracts.queries import MAX_AFTER_DOCS, QueryText

_STRICT = ConfigDict(extra="forbid", strict=True)
"""Types as the schema says: no "5" for 5, no 1 for true."""
_NOT_BLANK = {"pattern": r"[^\s\x1c-\x1f\x85]"}
"""What `non_blank` checks, for the schema (Python counts \\x1c-\\x1f and \\x85 as space)."""


def _whole_number(value: object) -> object:
    """JSON Schema's integers include 5.0; strict validation still rejects strings and booleans."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Integer = BeforeValidator(_whole_number)


class QueryRequest(BaseModel):
    """A question. The answer comes back as JSON, or as Server-Sent Events with `stream`."""

    model_config = _STRICT

    text: Annotated[
        QueryText,
        non_blank("query text"),
        Field(description="The question.", json_schema_extra=_NOT_BLANK),
    ]
    top_k_retrieve: Annotated[int, Integer] = Field(
        default=20, ge=1, le=200, description="Candidates the retriever fuses and passes on."
    )
    top_n: Annotated[int, Integer] = Field(
        default=5, ge=1, le=50, description="Candidates the answer may cite."
    )
    filters: dict[str, str] | None = Field(
        default=None,
        description="Exact-match filters on `doc_id`, `source` or `metadata.<key>`.",
    )
    stream: bool = Field(
        default=False,
        description="Answer as Server-Sent Events: `delta` events as text is generated, then "
        "one `answer` event with the complete Answer.",
    )
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="Seconds to wait for the answer (504 past it); default and cap are the "
        "gateway's `query_timeout_s` and `max_query_timeout_s`.",
    )
    after: dict[DocId, Annotated[DocVersion, Integer]] | None = Field(
        default=None,
        max_length=MAX_AFTER_DOCS,
        description="Read your writes: {doc_id: version} (as `POST /v1/documents` answered); "
        "the answer is read from an index serving at least these versions, or says "
        "`possibly_stale` if the index did not get there in time.",
    )


class DocumentRequest(BaseModel):
    """Create or replace a document (published as a `DocUpsert` on the docs stream)."""

    model_config = _STRICT

    doc_id: Annotated[DocId, Field(description="Stable id of the document in its source.")]
    title: str = Field(default="", description="Title, prepended to every chunk.")
    text: Annotated[
        str,
        non_blank("document text"),
        Field(description="The document (Markdown or plain text).", json_schema_extra=_NOT_BLANK),
    ]
    metadata: dict[str, JsonValue] = Field(
        default_factory=dict, description="Scalar values are filterable as `metadata.<key>`."
    )
    source: str = Field(default="gateway", description="Where the document comes from.")
    version: Annotated[DocVersion, Integer] | None = Field(
        default=None,
        description="Upstream version; older versions than the index holds are dropped. "
        "Default: the gateway's clock in Unix milliseconds (strictly increasing per replica).",
    )


class Accepted(BaseModel):
    """A doc change was published; `GET /v1/documents/{doc_id}` tells when it is served."""

    event_id: UUID
    doc_id: str
    version: int


class Problem(BaseModel):
    """One invalid part of a request."""

    location: str = Field(description="Where: `body.text`, `query.version`, `path.doc_id`, …")
    message: str


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx the gateway sends has this body."""

    error: str = Field(
        description="Machine-readable kind: `validation_error`, `unauthorized`, `not_found`, "
        "`request_entity_too_large`, `service_unavailable`, `gateway_timeout`, …"
    )
    message: str = Field(description="What went wrong, for humans.")
    problems: list[Problem] = Field(default_factory=list, description="Invalid request parts.")


class Readiness(BaseModel):
    ready: bool
    problems: list[str] = Field(description="Why the gateway is not ready (empty when ready).")


class Liveness(BaseModel):
    status: str
